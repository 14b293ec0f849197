//! What every workload shares: the run's counters, the receipt window, each client's
//! reader task (latency, per-sender order, pings), joining many clients at once, and the
//! measured window (wall time and CPU time from `/proc`).
//!
//! Message texts carry `"<sender> <seq> <nanoseconds>"`: the sender's client index, its
//! own sequence number from 0, and the send (or scheduled send) time in nanoseconds since
//! the run's one [`Instant`] base. Every client lives in this process, so one clock
//! measures both ends.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use protocol::codec;
use protocol::{ClientMessage, Event, EventKind, ServerMessage};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::conn::{self, Endpoint, FrameReader, SharedWriter};
use crate::procfs;
use crate::stats::{self, PaddedCounter, ShardedHistogram};

/// A receipt counter alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Slot(AtomicU32);

/// The fan-out window: per sender, at most `w` messages in flight, a message being in
/// flight until every receiver has counted it.
///
/// Sender `s` takes a permit from its semaphore before sending sequence number `q` and
/// arms slot `q % w` with the number of receivers; each receipt counts the slot down, and
/// the receipt that reaches zero completes the message and gives the permit back.
pub struct Window {
    width: u64,
    receivers: u32,
    slots: Vec<Slot>,
    permits: Vec<Semaphore>,
    completed: Vec<PaddedCounter>,
    conflicts: AtomicU64,
}

impl Window {
    /// A window of `width` messages for each of `senders`, each message going to
    /// `receivers` clients.
    pub fn new(senders: usize, width: usize, receivers: usize) -> Self {
        let width = width.max(1);
        Self {
            width: width as u64,
            receivers: u32::try_from(receivers).unwrap_or(u32::MAX),
            slots: (0..senders * width).map(|_| Slot::default()).collect(),
            permits: (0..senders).map(|_| Semaphore::new(width)).collect(),
            completed: stats::counters(senders),
            conflicts: AtomicU64::new(0),
        }
    }

    /// The window's width.
    pub fn width(&self) -> usize {
        self.width as usize
    }

    /// Sender `sender`'s permits: one per message it may still put in flight.
    pub fn permits(&self, sender: usize) -> &Semaphore {
        &self.permits[sender]
    }

    fn slot(&self, sender: usize, seq: u64) -> &AtomicU32 {
        &self.slots[sender * self.width as usize + (seq % self.width) as usize].0
    }

    /// Marks `seq` of `sender` as in flight; called before it is sent.
    pub fn arm(&self, sender: usize, seq: u64) {
        if self
            .slot(sender, seq)
            .swap(self.receivers, Ordering::AcqRel)
            != 0
        {
            // The message that used this slot before never completed.
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one receipt of `seq` from `sender`.
    fn receipt(&self, sender: usize, seq: u64) {
        let counted =
            self.slot(sender, seq)
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        match counted {
            Ok(1) => {
                self.completed[sender].add(1);
                self.permits[sender].add_permits(1);
            }
            Ok(_) => {}
            Err(_) => {
                self.conflicts.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Messages completed, all senders together.
    pub fn completed(&self) -> u64 {
        stats::sum(&self.completed)
    }

    /// Receipts that did not fit the window (a duplicate, or a slot reused before its
    /// message completed); non-zero only when something was lost or reordered.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

/// Counts of everything that makes a run fail.
#[derive(Debug, Default)]
pub struct Errors {
    /// Messages skipped over (a receiver got a later sequence number first).
    pub gaps: AtomicU64,
    /// Messages that arrived at or below a sequence number already seen.
    pub reorders: AtomicU64,
    /// Message texts that are not ours.
    pub malformed: AtomicU64,
    /// Clients whose connection ended (or was told to close) during the run.
    pub disconnects: AtomicU64,
    /// `Left` events during the run: the server dropped somebody.
    pub left_events: AtomicU64,
    /// Replies nobody asked for (such as `SlowDown`).
    pub unexpected: AtomicU64,
    /// `Joined` replies that arrived but could not be decoded.
    pub undecodable_replies: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// The shared state of one measurement.
pub struct RunState {
    base: Instant,
    /// Clients `0..senders` send.
    pub senders: usize,
    /// The fan-out window, for closed-loop runs.
    pub window: Option<Window>,
    /// Per sender: messages sent so far (its next sequence number).
    pub sent: Vec<PaddedCounter>,
    /// Per client: messages received.
    pub deliveries: Vec<PaddedCounter>,
    /// `Joined` events received, all clients together.
    pub joined_events: PaddedCounter,
    /// What went wrong.
    pub errors: Errors,
    /// Send (or scheduled send) to receive, nanoseconds.
    pub latency: ShardedHistogram,
    /// Open loop: scheduled send to actual write, nanoseconds.
    pub send_lag: ShardedHistogram,
    /// Ends every reader; set once the measurement is over.
    pub stop: CancellationToken,
}

impl RunState {
    /// State for `clients` clients of which the first `senders` send.
    pub fn new(clients: usize, senders: usize, window: Option<Window>) -> Self {
        Self {
            base: Instant::now(),
            senders,
            window,
            sent: stats::counters(senders),
            deliveries: stats::counters(clients),
            joined_events: PaddedCounter::default(),
            errors: Errors::default(),
            latency: ShardedHistogram::default(),
            send_lag: ShardedHistogram::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Nanoseconds since the run's clock base.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Nanoseconds from the run's clock base to `instant`.
    pub fn ns_at(&self, instant: Instant) -> u64 {
        u64::try_from(instant.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Messages received, all clients together.
    pub fn total_deliveries(&self) -> u64 {
        stats::sum(&self.deliveries)
    }

    /// Messages sent, all senders together.
    pub fn total_sent(&self) -> u64 {
        stats::sum(&self.sent)
    }

    /// True once anything has gone wrong that ends the run early.
    pub fn broken(&self) -> bool {
        self.errors.disconnects.load(Ordering::Relaxed) > 0
            || self.errors.left_events.load(Ordering::Relaxed) > 0
    }
}

/// Appends the frame of a `Say` carrying `(sender, seq, ns)`, padded with `x` to at least
/// `text_len` bytes, to `out`.
pub fn encode_say(
    out: &mut bytes::BytesMut,
    sender: usize,
    seq: u64,
    ns: u64,
    text_len: usize,
) -> Result<()> {
    let mut text = format!("{sender} {seq} {ns}");
    if text.len() < text_len {
        text.push(' ');
        while text.len() < text_len {
            text.push('x');
        }
    }
    codec::encode_into(&ClientMessage::Say { id: 0, text }, out).context("cannot encode a message")
}

/// Reads `(sender, seq, ns)` back from a message text.
pub fn parse_payload(text: &str) -> Option<(usize, u64, u64)> {
    let mut words = text.split_ascii_whitespace();
    let sender = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    let ns = words.next()?.parse().ok()?;
    Some((sender, seq, ns))
}

/// The pre-encoded answer to a server's ping.
fn pong_frame() -> bytes::Bytes {
    codec::encode_frame(&ClientMessage::Pong).unwrap_or_default()
}

/// A client's reader: counts and checks every message until `stop` fires (or its sender
/// is dropped) or the connection ends. Returns, per sender, the next sequence number it
/// expected.
///
/// Each reader has its own `stop` rather than waiting on the run's shared
/// [`CancellationToken`]: polling that locks a mutex shared by every reader, once per
/// message, which costs more than everything else a reader does.
pub async fn read_loop(
    state: Arc<RunState>,
    index: usize,
    mut reader: FrameReader<ServerMessage>,
    writer: SharedWriter,
    mut stop: oneshot::Receiver<()>,
) -> Vec<u64> {
    let mut next: Vec<u64> = Vec::new();
    let mut latency = state.latency.buffer(index);
    let mut received = 0u64;
    let errors = &state.errors;
    loop {
        let message = tokio::select! {
            biased;
            _ = &mut stop => break,
            message = reader.next() => message,
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) | Err(_) => {
                if !state.stop.is_cancelled() {
                    bump(&errors.disconnects, 1);
                    match message {
                        Err(e) => tracing::warn!(client = index, error = %e, "connection failed"),
                        _ => tracing::warn!(client = index, "connection closed by the server"),
                    }
                }
                break;
            }
        };
        match message {
            ServerMessage::Event(Event {
                kind: EventKind::Message { text, .. },
                ..
            }) => {
                let now = state.ns_at(reader.last_read());
                let Some((sender, seq, sent_ns)) =
                    parse_payload(&text).filter(|&(s, ..)| s < state.senders && s != index)
                else {
                    bump(&errors.malformed, 1);
                    continue;
                };
                latency.record(now.saturating_sub(sent_ns));
                received += 1;
                state.deliveries[index].set(received);
                if next.is_empty() {
                    next = vec![0; state.senders];
                }
                let expected = next[sender];
                if seq < expected {
                    bump(&errors.reorders, 1);
                    continue;
                }
                if seq > expected {
                    bump(&errors.gaps, seq - expected);
                }
                next[sender] = seq + 1;
                if let Some(window) = &state.window {
                    window.receipt(sender, seq);
                }
            }
            ServerMessage::Event(Event {
                kind: EventKind::Joined { .. },
                ..
            }) => state.joined_events.add(1),
            ServerMessage::Event(Event {
                kind: EventKind::Left { nick, reason },
                ..
            }) => {
                if !state.stop.is_cancelled() {
                    bump(&errors.left_events, 1);
                    tracing::warn!(client = index, %nick, reason = reason.describe(), "a client left the room during the run");
                }
            }
            ServerMessage::Event(_) | ServerMessage::Pong => {}
            ServerMessage::Ping => {
                let pong = pong_frame();
                if writer.lock().await.write_all(&pong).await.is_err() {
                    tracing::debug!(client = index, "cannot answer a ping");
                }
            }
            ServerMessage::Reply(reply) => {
                bump(&errors.unexpected, 1);
                tracing::warn!(client = index, ?reply, "unexpected reply");
            }
            ServerMessage::Closing { reason } => {
                if !state.stop.is_cancelled() {
                    bump(&errors.disconnects, 1);
                    tracing::warn!(
                        client = index,
                        reason = reason.describe(),
                        "the server closed the session"
                    );
                }
                break;
            }
        }
    }
    next
}

/// A joined client whose reader runs in the background; dropping it stops the reader.
pub struct Client {
    /// The writing side, shared with the reader (pings).
    pub writer: SharedWriter,
    /// The reader task; yields the per-sender next expected sequence numbers.
    pub reader: JoinHandle<Vec<u64>>,
    /// Stops the reader when sent to or dropped.
    stop: oneshot::Sender<()>,
}

/// The result of [`join_clients`].
pub struct Joined {
    /// Client `i` at index `i`.
    pub clients: Vec<Client>,
    /// Connect to `Joined` reply, nanoseconds, per client.
    pub join_latency: Histogram<u64>,
    /// `Joined` events the room owes to the clients: one per member already in the room
    /// at each join.
    pub expected_joined_events: u64,
}

/// One joined client, as the joining tasks leave it.
struct JoinedSlot {
    client: Client,
    /// Members listed in its `Joined` reply.
    members: Option<usize>,
    /// Connect to reply, nanoseconds.
    took: u64,
}

/// Connects and joins clients `0..count`, at most `in_flight` at a time, starting each
/// one's reader as soon as it has joined.
///
/// `fresh_room` says the room started empty (the bench started the target): then the
/// join broadcasts owed are `count * (count - 1) / 2`, whatever the replies list (the
/// relay's lists the joiner alone). Otherwise they are counted from the member lists.
pub async fn join_clients(
    state: &Arc<RunState>,
    endpoint: &Endpoint,
    fresh_room: bool,
    count: usize,
    in_flight: usize,
) -> Result<Joined> {
    let next = Arc::new(AtomicUsize::new(0));
    let slots: Arc<Mutex<Vec<Option<JoinedSlot>>>> =
        Arc::new(Mutex::new((0..count).map(|_| None).collect()));
    let mut workers = Vec::new();
    for _ in 0..in_flight.clamp(1, count.max(1)) {
        let (state, endpoint, next, slots) = (
            Arc::clone(state),
            endpoint.clone(),
            Arc::clone(&next),
            Arc::clone(&slots),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count || state.stop.is_cancelled() {
                    return Ok::<_, anyhow::Error>(());
                }
                let started = Instant::now();
                let joined = conn::connect_and_join(&endpoint, index)
                    .await
                    .with_context(|| format!("client {index} could not join"))?;
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let (stop, stopped) = oneshot::channel();
                let reader = tokio::spawn(read_loop(
                    Arc::clone(&state),
                    index,
                    joined.reader,
                    Arc::clone(&joined.writer),
                    stopped,
                ));
                let client = Client {
                    writer: joined.writer,
                    reader,
                    stop,
                };
                let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
                slots[index] = Some(JoinedSlot {
                    client,
                    members: joined.members,
                    took,
                });
            }
        }));
    }
    let mut failure = None;
    for worker in workers {
        let outcome = match worker.await {
            Ok(outcome) => outcome,
            Err(e) => Err(anyhow::anyhow!("a joining task failed: {e}")),
        };
        if let Err(e) = outcome {
            state.stop.cancel();
            failure.get_or_insert(e);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let slots = std::mem::take(&mut *slots.lock().unwrap_or_else(|p| p.into_inner()));
    let mut join_latency =
        Histogram::new_with_bounds(1, 600_000_000_000, 3).context("cannot create a histogram")?;
    let mut clients = Vec::with_capacity(count);
    let mut listed = 0u64;
    for (index, slot) in slots.into_iter().enumerate() {
        let JoinedSlot {
            client,
            members,
            took,
        } = slot.with_context(|| format!("client {index} never joined"))?;
        join_latency.saturating_record(took.max(1));
        match members {
            Some(members) => listed += members.saturating_sub(1) as u64,
            None => bump(&state.errors.undecodable_replies, 1),
        }
        clients.push(client);
    }
    let undecodable = state.errors.undecodable_replies.load(Ordering::Relaxed);
    if undecodable > 0 {
        tracing::warn!(
            undecodable,
            "Joined replies arrived that the protocol's decoder refuses (the member list \
             exceeds the decode limit); the joins happened, the run is marked failed"
        );
    }
    let expected_joined_events = if fresh_room {
        (count as u64) * (count as u64).saturating_sub(1) / 2
    } else {
        listed
    };
    Ok(Joined {
        clients,
        join_latency,
        expected_joined_events,
    })
}

/// Polls `done` every few milliseconds until it holds (true) or `timeout` passes (false);
/// gives up early (false) when the run is broken.
pub async fn wait_until(state: &RunState, timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline || state.broken() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until every `Joined` event owed has arrived.
pub async fn settle_joins(state: &RunState, joined: &Joined, timeout: Duration) -> Result<()> {
    let expected = joined.expected_joined_events;
    if !wait_until(state, timeout, || state.joined_events.get() >= expected).await {
        bail!(
            "join broadcasts did not all arrive within {timeout:?}: {} of {expected} \
             ({} disconnects, {} clients dropped)",
            state.joined_events.get(),
            state.errors.disconnects.load(Ordering::Relaxed),
            state.errors.left_events.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

/// Stops every reader and collects, per client, the next sequence number it expected
/// from each sender; then counts the messages each receiver never got at the end of a
/// sender's stream (gaps inside the stream were counted as they happened).
pub async fn finish(state: &RunState, clients: Vec<Client>) -> u64 {
    // First the run-wide flag, so that departures caused by stopping are not errors.
    state.stop.cancel();
    let sent: Vec<u64> = state.sent.iter().map(PaddedCounter::get).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let _ = client.stop.send(());
            (client.reader, client.writer)
        })
        .collect();
    let mut missing = 0;
    for (index, (reader, _writer)) in readers.into_iter().enumerate() {
        let next = reader.await.unwrap_or_default();
        for (sender, &count) in sent.iter().enumerate() {
            if sender == index {
                continue;
            }
            let got = next.get(sender).copied().unwrap_or(0);
            missing += count.saturating_sub(got);
        }
    }
    missing
}

/// Wall time and CPU time over a measured window.
pub struct CpuWindow {
    pid: Option<u32>,
    started: Instant,
    server_cpu: Option<f64>,
    own_cpu: Option<f64>,
    machine_busy: Option<f64>,
}

/// What a [`CpuWindow`] measured.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// Wall time.
    pub elapsed: Duration,
    /// The target process's CPU seconds in the window, when its pid is known.
    pub server_cpu_s: Option<f64>,
    /// The bench's own CPU seconds in the window.
    pub bench_cpu_s: Option<f64>,
    /// CPU seconds used by everything else on the machine in the window (other users'
    /// processes, the kernel's own threads): a measure of how noisy the run was.
    pub other_cpu_s: Option<f64>,
}

impl CpuWindow {
    /// Starts a window, reading the CPU time of `pid` (the target) and of the bench.
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            server_cpu: pid.and_then(|pid| procfs::cpu_seconds(pid).ok()),
            own_cpu: procfs::own_cpu_seconds().ok(),
            machine_busy: procfs::machine_busy_seconds().ok(),
            started: Instant::now(),
        }
    }

    /// Ends the window.
    pub fn finish(&self) -> CpuSample {
        let elapsed = self.started.elapsed();
        let server_cpu_s = match (self.pid, self.server_cpu) {
            (Some(pid), Some(before)) => procfs::cpu_seconds(pid).ok().map(|now| now - before),
            _ => None,
        };
        let bench_cpu_s = self
            .own_cpu
            .and_then(|before| procfs::own_cpu_seconds().ok().map(|now| now - before));
        let machine_busy_s = self
            .machine_busy
            .and_then(|before| procfs::machine_busy_seconds().ok().map(|now| now - before));
        let other_cpu_s = machine_busy_s
            .map(|busy| (busy - server_cpu_s.unwrap_or(0.0) - bench_cpu_s.unwrap_or(0.0)).max(0.0));
        CpuSample {
            elapsed,
            server_cpu_s,
            bench_cpu_s,
            other_cpu_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut out = bytes::BytesMut::new();
        encode_say(&mut out, 7, 42, 123_456_789, 64).unwrap();
        let message: ClientMessage = codec::decode(&out[4..]).unwrap();
        let ClientMessage::Say { text, .. } = message else {
            panic!("not a say");
        };
        assert!(text.len() >= 64);
        assert_eq!(parse_payload(&text), Some((7, 42, 123_456_789)));
        assert_eq!(parse_payload("hello there"), None);
        assert_eq!(parse_payload("1 2"), None);
    }

    #[test]
    fn window_completes_after_every_receipt() {
        let window = Window::new(2, 4, 3);
        window.arm(1, 0);
        window.receipt(1, 0);
        window.receipt(1, 0);
        assert_eq!(window.completed(), 0);
        window.receipt(1, 0);
        assert_eq!(window.completed(), 1);
        assert_eq!(window.permits(1).available_permits(), 5);
        // A fourth receipt of the same message is a conflict.
        window.receipt(1, 0);
        assert_eq!(window.conflicts(), 1);
        // Reusing a slot whose message never completed is one too.
        window.arm(0, 1);
        window.arm(0, 5);
        assert_eq!(window.conflicts(), 2);
    }
}
