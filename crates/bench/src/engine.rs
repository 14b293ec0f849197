//! The generator's threads: each owns a share of the joined clients and runs one poll
//! loop over their sockets, reading, checking and sending, so that the generator costs
//! less than what it measures.
//!
//! Per round of the loop a thread: adopts newly joined clients; waits for readiness; reads
//! each ready socket in chunks of up to [`READ_CHUNK`] into one buffer it shares among
//! its clients, handing the chunk through the session's channel and reading every frame
//! where it lies (nothing is allocated per message: [`crate::wire`] borrows, and
//! [`crate::probe`] reads fixed-width digits); applies the round's receipts to the window
//! at once; publishes its counters; then sends what the window (closed loop) or the
//! pacer (open loop) allows. Client `i` belongs to thread `i % threads`.
//!
//! A thread that waits with senders blocked on the window says so (`parked`); whoever
//! completes one of its messages wakes it. The order (flag, then re-check; count, then
//! look at the flag, both sequentially consistent) means no wake-up is lost, and a wait
//! never exceeds [`MAX_WAIT`] anyway.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::client::Handover;
use crate::frames::Frames;
use crate::probe::{self, Probe};
use crate::run::RunState;
use crate::session::Channel;
use crate::stats::{self, LatencyCounts};
use crate::window::Receipts;
use crate::wire::{self, Layout, ServerFrame, WireError};

/// Bytes asked for per read.
pub const READ_CHUNK: usize = 256 * 1024;

/// Reads of one socket in a round before the others get their turn.
const READS_PER_ROUND: usize = 4;

/// A send buffer larger than this is released once written.
const KEEP_OUT: usize = 64 * 1024;

/// Longest a thread waits without looking at its flags.
const MAX_WAIT: Duration = Duration::from_millis(50);

const WAKER: Token = Token(0);

/// What the senders do.
#[derive(Debug, Clone, Copy)]
pub enum SendPlan {
    /// Closed loop: each sender keeps its window full until `deadline`.
    Closed {
        /// When sending stops.
        deadline: Instant,
        /// Texts are padded to this many bytes.
        text_len: usize,
    },
    /// Open loop: send what the pacer hands over ([`Engine::due`]).
    Open {
        /// Texts are padded to this many bytes.
        text_len: usize,
    },
}

/// What a thread is handed from outside.
#[derive(Default)]
struct Inbox {
    clients: Vec<Handover>,
    /// Open loop: (sender index, scheduled time in ns).
    due: Vec<(u32, u64)>,
}

/// The outside's handle on one thread.
struct Door {
    waker: Waker,
    parked: AtomicBool,
    inbox: Mutex<Inbox>,
}

impl Door {
    /// Wakes the thread if it waits (or is about to).
    fn nudge(&self) {
        if self.parked.load(Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// What the threads share.
struct Shared {
    run: Arc<RunState>,
    doors: Vec<Door>,
    plan: OnceLock<SendPlan>,
    stop: AtomicBool,
}

/// Everything a run's threads found, merged.
pub struct Outcome {
    /// Per client index: the next sequence number it expected from each sender.
    pub expected: Vec<Vec<u64>>,
    /// Send (or scheduled send) to receive, ns.
    pub latency: Histogram<u64>,
    /// Open loop: scheduled send to write, ns.
    pub send_lag: Histogram<u64>,
    /// Messages skipped over (a later one of the same sender came first).
    pub gaps: u64,
    /// Messages at or below a sequence number already seen.
    pub reorders: u64,
    /// Frames or texts that are not what the bench sent.
    pub malformed: u64,
    /// Replies nobody asked for.
    pub unexpected: u64,
}

/// The running generator threads of one measurement.
pub struct Engine {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Outcome>>,
}

impl Engine {
    /// Starts `threads` threads for `run`.
    pub fn start(run: Arc<RunState>, threads: usize) -> Result<Self> {
        let threads = threads.max(1);
        let mut polls = Vec::with_capacity(threads);
        let mut doors = Vec::with_capacity(threads);
        for _ in 0..threads {
            let poll = Poll::new().context("cannot create a poll instance")?;
            let waker = Waker::new(poll.registry(), WAKER).context("cannot create a waker")?;
            doors.push(Door {
                waker,
                parked: AtomicBool::new(false),
                inbox: Mutex::new(Inbox::default()),
            });
            polls.push(poll);
        }
        let shared = Arc::new(Shared {
            run,
            doors,
            plan: OnceLock::new(),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(threads);
        for (id, poll) in polls.into_iter().enumerate() {
            let worker = Worker::new(id, poll, Arc::clone(&shared));
            let handle = std::thread::Builder::new()
                .name(format!("chat-bench-gen{id}"))
                .spawn(move || worker.run())
                .context("cannot start a generator thread")?;
            handles.push(handle);
        }
        Ok(Self {
            shared,
            threads: handles,
        })
    }

    fn door(&self, index: usize) -> &Door {
        &self.shared.doors[index % self.shared.doors.len()]
    }

    /// Hands a joined client to its thread.
    pub fn adopt(&self, client: Handover) {
        let door = self.door(client.index);
        lock(&door.inbox).clients.push(client);
        let _ = door.waker.wake();
    }

    /// Starts the senders.
    pub fn send(&self, plan: SendPlan) {
        let _ = self.shared.plan.set(plan);
        for door in &self.shared.doors {
            let _ = door.waker.wake();
        }
    }

    /// Open loop: message `sender` must send now, stamped `due_ns`.
    pub fn due(&self, sender: u32, due_ns: u64) {
        let door = self.door(sender as usize);
        lock(&door.inbox).due.push((sender, due_ns));
        door.nudge();
    }

    /// Stops the threads and merges what they found. Clients are disconnected as their
    /// threads end; the run's `stopping` flag must be set first so that departures are
    /// not counted as errors.
    pub fn stop(mut self) -> Outcome {
        self.signal_stop();
        let mut total = Outcome {
            expected: vec![Vec::new(); self.shared.run.clients],
            latency: stats::new_histogram(),
            send_lag: stats::new_histogram(),
            gaps: 0,
            reorders: 0,
            malformed: 0,
            unexpected: 0,
        };
        for handle in std::mem::take(&mut self.threads) {
            let Ok(part) = handle.join() else {
                tracing::error!("a generator thread panicked");
                total.malformed += 1;
                continue;
            };
            for (index, expected) in part.expected.into_iter().enumerate() {
                if !expected.is_empty() {
                    total.expected[index] = expected;
                }
            }
            let _ = total.latency.add(&part.latency);
            let _ = total.send_lag.add(&part.send_lag);
            total.gaps += part.gaps;
            total.reorders += part.reorders;
            total.malformed += part.malformed;
            total.unexpected += part.unexpected;
        }
        total
    }
}

impl Engine {
    fn signal_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for door in &self.shared.doors {
            let _ = door.waker.wake();
        }
    }
}

impl Drop for Engine {
    /// A run that failed part-way: its threads end on their own, quietly.
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shared.run.stopping.store(true, Ordering::SeqCst);
            self.signal_stop();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One client as its thread keeps it.
struct Conn {
    stream: TcpStream,
    channel: Channel,
    layout: Layout,
    wire_pending: Vec<u8>,
    frames: Frames,
    check: Check,
    out: Vec<u8>,
    written: usize,
    /// Next sequence number this client sends.
    send_seq: u64,
}

/// A receiver's view of the run.
struct Check {
    index: u32,
    /// Per sender: the next sequence number expected (empty until the first message).
    expected: Vec<u64>,
    pongs_due: u32,
    closing: Option<u64>,
}

/// A thread's counters, published or merged at the end.
struct Tally {
    latency: LatencyCounts,
    send_lag: LatencyCounts,
    deliveries: u64,
    joined_events: u64,
    gaps: u64,
    reorders: u64,
    malformed: u64,
    unexpected: u64,
}

struct Worker {
    id: usize,
    shared: Arc<Shared>,
    poll: Poll,
    /// Clients by token - 1; `None` once closed.
    conns: Vec<Option<Conn>>,
    /// Tokens of this thread's senders, and by sender index (open loop).
    senders: Vec<usize>,
    sender_token: Vec<Option<usize>>,
    /// Final expectations of clients already closed, by client index.
    closed: Vec<(u32, Vec<u64>)>,
    buf: Vec<u8>,
    again: Vec<usize>,
    text: Vec<u8>,
    receipts: Receipts,
    tally: Tally,
}

impl Worker {
    fn new(id: usize, poll: Poll, shared: Arc<Shared>) -> Self {
        let slots = shared.run.window.as_ref().map_or(0, |w| w.slots());
        Self {
            id,
            poll,
            conns: Vec::new(),
            senders: Vec::new(),
            sender_token: vec![None; shared.run.senders],
            closed: Vec::new(),
            buf: vec![0; READ_CHUNK],
            again: Vec::new(),
            text: Vec::new(),
            receipts: Receipts::new(slots),
            tally: Tally {
                latency: LatencyCounts::default(),
                send_lag: LatencyCounts::default(),
                deliveries: 0,
                joined_events: 0,
                gaps: 0,
                reorders: 0,
                malformed: 0,
                unexpected: 0,
            },
            shared,
        }
    }

    fn run(mut self) -> Outcome {
        let mut events = Events::with_capacity(1024);
        let mut ready = Vec::with_capacity(1024);
        loop {
            self.adopt();
            self.send();
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let timeout = self.timeout();
            let door = &self.shared.doors[self.id];
            if timeout != Some(Duration::ZERO) {
                door.parked.store(true, Ordering::SeqCst);
                // The flag must be visible before the re-check reads the window.
                std::sync::atomic::fence(Ordering::SeqCst);
            }
            // Re-check after announcing: work that arrived before the flag was seen
            // would not wake us.
            let timeout = if timeout != Some(Duration::ZERO) && self.has_work() {
                Some(Duration::ZERO)
            } else {
                timeout
            };
            let polled = self.poll.poll(&mut events, timeout);
            door.parked.store(false, Ordering::SeqCst);
            if let Err(e) = polled
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "poll failed");
                break;
            }
            ready.clear();
            ready.append(&mut self.again);
            for event in &events {
                let token = event.token();
                if token == WAKER {
                    continue;
                }
                let key = token.0 - 1;
                if event.is_writable() {
                    self.flush(key);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    ready.push(key);
                }
            }
            for &key in &ready {
                if self.read(key) {
                    self.again.push(key);
                }
            }
            self.apply_receipts();
            let run = &self.shared.run;
            run.deliveries[self.id].set(self.tally.deliveries);
            run.joined_events[self.id].set(self.tally.joined_events);
        }
        self.finish()
    }

    /// How long to wait for readiness.
    fn timeout(&self) -> Option<Duration> {
        if !self.again.is_empty() {
            return Some(Duration::ZERO);
        }
        if let Some(SendPlan::Closed { deadline, .. }) = self.shared.plan.get()
            && !self.senders.is_empty()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Some(left.min(MAX_WAIT));
            }
        }
        Some(MAX_WAIT)
    }

    /// True when something is waiting that a wait would not announce.
    fn has_work(&self) -> bool {
        let inbox = lock(&self.shared.doors[self.id].inbox);
        if !inbox.clients.is_empty() || !inbox.due.is_empty() {
            return true;
        }
        drop(inbox);
        let (Some(SendPlan::Closed { deadline, .. }), Some(window)) =
            (self.shared.plan.get(), &self.shared.run.window)
        else {
            return false;
        };
        Instant::now() < *deadline
            && self.senders.iter().any(|&key| {
                self.conns[key].as_ref().is_some_and(|conn| {
                    conn.written == conn.out.len()
                        && window.free(conn.check.index, conn.send_seq) > 0
                })
            })
    }

    /// Registers the clients handed over since the last round.
    fn adopt(&mut self) {
        let (clients, due) = {
            let mut inbox = lock(&self.shared.doors[self.id].inbox);
            (
                std::mem::take(&mut inbox.clients),
                std::mem::take(&mut inbox.due),
            )
        };
        for client in clients {
            if let Err(e) = self.register(client) {
                tracing::warn!(error = %e, "cannot take over a client");
                self.shared
                    .run
                    .errors
                    .disconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if !due.is_empty() {
            self.send_due(&due);
        }
    }

    fn register(&mut self, client: Handover) -> io::Result<()> {
        client.stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(client.stream);
        let key = self.conns.len();
        self.poll.registry().register(
            &mut stream,
            Token(key + 1),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let index = client.index as u32;
        let mut conn = Conn {
            stream,
            channel: client.channel,
            layout: client.layout,
            wire_pending: client.wire_pending,
            frames: Frames::default(),
            check: Check {
                index,
                expected: Vec::new(),
                pongs_due: 0,
                closing: None,
            },
            out: Vec::new(),
            written: 0,
            send_seq: 0,
        };
        if (index as usize) < self.shared.run.senders {
            self.senders.push(key);
            self.sender_token[index as usize] = Some(key);
        }
        // Frames that arrived with the join's answer, as if just read.
        let now = self.shared.run.now_ns();
        let layout = conn.layout;
        let fed = conn.frames.feed(&client.plain_pending, |payload| {
            handle(
                payload,
                layout,
                &mut conn.check,
                &mut self.tally,
                &mut self.receipts,
                &self.shared,
                now,
            )
        });
        self.conns.push(Some(conn));
        if let Err(e) = fed {
            self.close(key, Some(&e.to_string()));
        } else {
            // Bytes may have arrived before registration; the edge is not lost (mio
            // reports readiness on registration) but read now to be sure.
            self.again.push(key);
        }
        Ok(())
    }

    /// Reads a ready socket; true when it may have more (come back next round).
    fn read(&mut self, key: usize) -> bool {
        for _ in 0..READS_PER_ROUND {
            let Some(conn) = self.conns[key].as_mut() else {
                return false;
            };
            let start = conn.wire_pending.len();
            self.buf[..start].copy_from_slice(&conn.wire_pending);
            conn.wire_pending.clear();
            let read = conn.stream.read(&mut self.buf[start..]);
            let n = match read {
                Ok(0) => {
                    let why = (start > 0).then_some("connection closed mid-record");
                    self.close(key, why.or(Some("connection closed by the server")));
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.wire_pending.extend_from_slice(&self.buf[..start]);
                    return false;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    conn.wire_pending.extend_from_slice(&self.buf[..start]);
                    continue;
                }
                Err(e) => {
                    self.close(key, Some(&e.to_string()));
                    return false;
                }
            };
            let len = start + n;
            let received_ns = self.shared.run.now_ns();
            let Conn {
                channel,
                layout,
                frames,
                check,
                wire_pending,
                ..
            } = &mut *conn;
            let layout = *layout;
            let (tally, receipts, shared) = (&mut self.tally, &mut self.receipts, &self.shared);
            let opened = channel.open(&mut self.buf[..len], |plain| {
                frames.feed(plain, |payload| {
                    handle(payload, layout, check, tally, receipts, shared, received_ns)
                })
            });
            match opened {
                Ok(used) => wire_pending.extend_from_slice(&self.buf[used..len]),
                Err(e) => {
                    self.close(key, Some(&e.to_string()));
                    return false;
                }
            }
            if conn.check.pongs_due > 0 {
                let pongs = std::mem::take(&mut conn.check.pongs_due);
                let mark = conn.channel.begin(&mut conn.out);
                for _ in 0..pongs {
                    wire::pong(&mut conn.out);
                }
                if let Err(e) = conn.channel.seal(&mut conn.out, mark) {
                    self.close(key, Some(&e.to_string()));
                    return false;
                }
                self.flush(key);
            }
            let Some(conn) = self.conns[key].as_ref() else {
                return false;
            };
            if let Some(reason) = conn.check.closing {
                self.close(key, Some(wire::leave_reason(reason)));
                return false;
            }
            if len < self.buf.len() {
                // A short read took everything the socket had.
                return false;
            }
        }
        true
    }

    /// Writes what is queued for `key`, as far as the socket takes it.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns[key].as_mut() else {
            return;
        };
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(key, Some(&e.to_string()));
                    return;
                }
            }
        }
        conn.out.clear();
        conn.written = 0;
        if conn.out.capacity() > KEEP_OUT {
            conn.out = Vec::new();
        }
    }

    /// Closes a client; `why` is logged and counted unless the run is stopping.
    fn close(&mut self, key: usize, why: Option<&str>) {
        let Some(mut conn) = self.conns[key].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let run = &self.shared.run;
        if !run.stopping.load(Ordering::SeqCst) {
            run.errors.disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client = conn.check.index,
                reason = why.unwrap_or("unknown"),
                "a client's connection ended during the run"
            );
        }
        self.closed
            .push((conn.check.index, std::mem::take(&mut conn.check.expected)));
    }

    /// Applies the round's receipts, waking the threads of senders whose messages
    /// completed.
    fn apply_receipts(&mut self) {
        let Some(window) = &self.shared.run.window else {
            return;
        };
        let threads = self.shared.doors.len();
        let mut wake = 0u64;
        self.receipts.flush(window, |sender| {
            let owner = sender as usize % threads;
            wake |= 1 << (owner % 64);
        });
        wake &= !(1 << (self.id % 64));
        for (id, door) in self.shared.doors.iter().enumerate() {
            if wake & (1 << (id % 64)) != 0 {
                door.nudge();
            }
        }
    }

    /// Closed loop: fills every free window of this thread's senders.
    fn send(&mut self) {
        let Some(SendPlan::Closed { deadline, text_len }) = self.shared.plan.get().copied() else {
            return;
        };
        let run = Arc::clone(&self.shared.run);
        let Some(window) = run.window.as_ref() else {
            return;
        };
        if self.senders.is_empty() || Instant::now() >= deadline {
            return;
        }
        for i in 0..self.senders.len() {
            let key = self.senders[i];
            let Some(conn) = self.conns[key].as_mut() else {
                continue;
            };
            if conn.written < conn.out.len() {
                continue;
            }
            let sender = conn.check.index;
            let free = window.free(sender, conn.send_seq);
            if free == 0 {
                continue;
            }
            let now = run.now_ns();
            let mark = conn.channel.begin(&mut conn.out);
            for _ in 0..free {
                window.arm(sender, conn.send_seq);
                let probe = Probe {
                    sender,
                    seq: conn.send_seq,
                    sent_ns: now,
                };
                probe::write(&mut self.text, probe, text_len);
                wire::say(&mut conn.out, conn.layout, &self.text);
                conn.send_seq += 1;
            }
            let sealed = conn.channel.seal(&mut conn.out, mark);
            run.sent[sender as usize].set(conn.send_seq);
            if let Err(e) = sealed {
                self.close(key, Some(&e.to_string()));
                continue;
            }
            self.flush(key);
        }
    }

    /// Open loop: sends each handed-over message, stamped with its scheduled time.
    fn send_due(&mut self, due: &[(u32, u64)]) {
        let text_len = match self.shared.plan.get() {
            Some(SendPlan::Open { text_len }) => *text_len,
            _ => 0,
        };
        let run = Arc::clone(&self.shared.run);
        let now = run.now_ns();
        let mut touched = Vec::new();
        for &(sender, due_ns) in due {
            let Some(key) = self.sender_token.get(sender as usize).copied().flatten() else {
                continue;
            };
            let Some(conn) = self.conns[key].as_mut() else {
                continue;
            };
            let probe = Probe {
                sender,
                seq: conn.send_seq,
                sent_ns: due_ns,
            };
            probe::write(&mut self.text, probe, text_len);
            let mark = conn.channel.begin(&mut conn.out);
            wire::say(&mut conn.out, conn.layout, &self.text);
            let sealed = conn.channel.seal(&mut conn.out, mark);
            conn.send_seq += 1;
            run.sent[sender as usize].set(conn.send_seq);
            if let Err(e) = sealed {
                self.close(key, Some(&e.to_string()));
                continue;
            }
            self.tally.send_lag.record(now.saturating_sub(due_ns));
            touched.push(key);
        }
        touched.dedup();
        for key in touched {
            self.flush(key);
        }
    }

    fn finish(mut self) -> Outcome {
        let mut expected = vec![Vec::new(); self.shared.run.clients];
        for conn in self.conns.iter_mut().flatten() {
            expected[conn.check.index as usize] = std::mem::take(&mut conn.check.expected);
        }
        for (index, exp) in self.closed.drain(..) {
            expected[index as usize] = exp;
        }
        let run = &self.shared.run;
        run.deliveries[self.id].set(self.tally.deliveries);
        run.joined_events[self.id].set(self.tally.joined_events);
        Outcome {
            expected,
            latency: self.tally.latency.into_histogram(),
            send_lag: self.tally.send_lag.into_histogram(),
            gaps: self.tally.gaps,
            reorders: self.tally.reorders,
            malformed: self.tally.malformed,
            unexpected: self.tally.unexpected,
        }
    }
}

/// Checks one server frame received by `check`'s client at `received_ns`.
fn handle(
    payload: &[u8],
    layout: Layout,
    check: &mut Check,
    tally: &mut Tally,
    receipts: &mut Receipts,
    shared: &Shared,
    received_ns: u64,
) -> Result<(), WireError> {
    let run = &shared.run;
    match wire::parse_server(payload, layout) {
        Ok(ServerFrame::Message { text, .. }) => {
            let Some(probe) = probe::read(text)
                .filter(|p| (p.sender as usize) < run.senders && p.sender != check.index)
            else {
                tally.malformed += 1;
                return Ok(());
            };
            tally
                .latency
                .record(received_ns.saturating_sub(probe.sent_ns));
            tally.deliveries += 1;
            if check.expected.is_empty() {
                check.expected = vec![0; run.senders];
            }
            let expected = &mut check.expected[probe.sender as usize];
            if probe.seq < *expected {
                tally.reorders += 1;
                return Ok(());
            }
            if probe.seq > *expected {
                tally.gaps += probe.seq - *expected;
            }
            *expected = probe.seq + 1;
            if let Some(window) = &run.window {
                receipts.add(window.slot_of(probe.sender, probe.seq));
            }
        }
        Ok(ServerFrame::Joined { .. }) => tally.joined_events += 1,
        Ok(ServerFrame::Left { nick, reason }) => {
            if !run.stopping.load(Ordering::Relaxed) {
                run.errors.left_events.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    client = check.index,
                    nick = %String::from_utf8_lossy(nick),
                    reason = wire::leave_reason(reason),
                    "a client left the room during the run"
                );
            }
        }
        Ok(ServerFrame::Ping) => check.pongs_due += 1,
        Ok(ServerFrame::Pong | ServerFrame::OtherEvent) => {}
        Ok(ServerFrame::JoinedReply { .. } | ServerFrame::OtherReply(_)) => {
            tally.unexpected += 1;
        }
        Ok(ServerFrame::Closing(reason)) => check.closing = Some(reason),
        Err(_) => tally.malformed += 1,
    }
    Ok(())
}
