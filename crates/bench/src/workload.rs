//! The four workloads, each measured against one running target:
//!
//! - [`Workload::Fanout`]: closed loop. N clients join, S of them send, each keeping at
//!   most W messages in flight (in flight until every other client got it). Throughput,
//!   latency from send to receive, zero loss and per-sender order.
//! - [`Workload::OpenLoop`]: a fixed offered rate of deliveries; a pacer thread schedules
//!   sends on a timetable spread across the senders, and latency is measured from the
//!   scheduled time, so a stalled target cannot hide its stall (no coordinated omission).
//! - [`Workload::Idle`]: the target's RSS per idle joined connection.
//! - [`Workload::Join`]: joins per second, each join counted when it is acknowledged and
//!   its broadcast has reached everyone already in the room.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use tokio::sync::mpsc;

use crate::conn::SharedWriter;
use crate::launch::Running;
use crate::procfs;
use crate::report::Row;
use crate::run::{self, CpuSample, CpuWindow, RunState, Window};
use crate::stats::Percentiles;

/// Time allowed for every join broadcast to arrive before a measurement starts.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Time allowed, after the senders stop, for the messages in flight to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages in flight across all senders when `--window` is not given: enough to keep
/// the target busy, and far below any send queue (each receiver has at most this many
/// frames queued).
pub const DEFAULT_IN_FLIGHT: usize = 256;

/// Fan-out parameters.
#[derive(Debug, Clone)]
pub struct FanoutParams {
    /// Clients in the room.
    pub clients: usize,
    /// Clients that send.
    pub senders: usize,
    /// Messages each sender keeps in flight; default [`DEFAULT_IN_FLIGHT`] / senders.
    pub window: Option<usize>,
    /// Sending time.
    pub duration: Duration,
    /// Message texts are padded to at least this many bytes.
    pub text_len: usize,
    /// Clients connecting at once while the room fills.
    pub connect_in_flight: usize,
}

/// Open-loop parameters.
#[derive(Debug, Clone)]
pub struct OpenLoopParams {
    /// Clients in the room.
    pub clients: usize,
    /// Clients that send (default: all).
    pub senders: Option<usize>,
    /// Offered deliveries per second (messages per second times receivers).
    pub rate: f64,
    /// Sending time.
    pub duration: Duration,
    /// Message texts are padded to at least this many bytes.
    pub text_len: usize,
    /// Clients connecting at once while the room fills.
    pub connect_in_flight: usize,
}

/// What to measure.
#[derive(Debug, Clone)]
pub enum Workload {
    /// Closed-loop fan-out throughput.
    Fanout(FanoutParams),
    /// Fixed-rate fan-out latency.
    OpenLoop(OpenLoopParams),
    /// Memory per idle joined connection.
    Idle {
        /// Connections.
        clients: usize,
        /// Clients connecting at once.
        in_flight: usize,
        /// Pause after the last join broadcast before reading RSS.
        settle: Duration,
    },
    /// Join rate.
    Join {
        /// Clients joining.
        clients: usize,
        /// Joins in progress at once.
        in_flight: usize,
    },
}

impl Workload {
    /// The workload's name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fanout(_) => "fanout",
            Self::OpenLoop(_) => "openloop",
            Self::Idle { .. } => "idle",
            Self::Join { .. } => "join",
        }
    }

    /// Connections the workload opens at once.
    pub fn clients(&self) -> usize {
        match self {
            Self::Fanout(p) => p.clients,
            Self::OpenLoop(p) => p.clients,
            Self::Idle { clients, .. } | Self::Join { clients, .. } => *clients,
        }
    }

    /// Runs the workload against `target`, filling `row`.
    pub async fn run(&self, target: &Running, row: &mut Row) -> Result<()> {
        match self {
            Self::Fanout(p) => fanout(p, target, row).await,
            Self::OpenLoop(p) => openloop(p, target, row).await,
            Self::Idle {
                clients,
                in_flight,
                settle,
            } => idle(*clients, *in_flight, *settle, target, row).await,
            Self::Join { clients, in_flight } => join(*clients, *in_flight, target, row).await,
        }
    }

    /// The unit of the headline figure.
    pub fn unit(&self) -> &'static str {
        match self {
            Self::Fanout(_) | Self::OpenLoop(_) => "deliveries/s",
            Self::Idle { .. } => "B/conn",
            Self::Join { .. } => "joins/s",
        }
    }

    /// Records the parameters in `row` (equal parameters pair server and relay rows).
    pub fn describe(&self, row: &mut Row) {
        match self {
            Self::Fanout(p) => {
                let senders = p.senders.min(p.clients);
                row.param("N", p.clients);
                row.param("S", senders);
                row.param("W", p.window.unwrap_or_else(|| default_window(senders)));
                row.param("secs", p.duration.as_secs_f64());
                if p.text_len > 0 {
                    row.param("text", p.text_len);
                }
            }
            Self::OpenLoop(p) => {
                row.param("N", p.clients);
                row.param("S", p.senders.unwrap_or(p.clients).min(p.clients));
                row.param("offered", p.rate);
                row.param("secs", p.duration.as_secs_f64());
                if p.text_len > 0 {
                    row.param("text", p.text_len);
                }
            }
            Self::Idle {
                clients, in_flight, ..
            } => {
                row.param("K", *clients);
                row.param("in_flight", *in_flight);
            }
            Self::Join { clients, in_flight } => {
                row.param("K", *clients);
                row.param("in_flight", *in_flight);
            }
        }
    }
}

/// The default fan-out window for `senders` senders.
pub fn default_window(senders: usize) -> usize {
    (DEFAULT_IN_FLIGHT / senders.max(1)).max(1)
}

fn rss_kib(target: &Running) -> Option<u64> {
    target
        .pid
        .and_then(|pid| procfs::rss_bytes(pid).ok())
        .map(|b| b / 1024)
}

/// Fills the CPU columns of `row` from a window in which `units` deliveries or joins
/// happened.
fn record_cpu(row: &mut Row, sample: &CpuSample, units: u64) {
    let secs = sample.elapsed.as_secs_f64();
    row.elapsed_s = Some(secs);
    row.server_cpu_s = sample.server_cpu_s;
    if units > 0 {
        row.cpu_s_per_1m = sample.server_cpu_s.map(|cpu| cpu / units as f64 * 1e6);
    }
    if secs > 0.0 {
        row.bench_cpu_pct = sample.bench_cpu_s.map(|cpu| cpu / secs * 100.0);
        row.other_cpu_pct = sample.other_cpu_s.map(|cpu| cpu / secs * 100.0);
    }
}

fn record_latency(row: &mut Row, state: &RunState) {
    if let Some(p) = Percentiles::of(&state.latency.merged()) {
        row.p50_us = Some(p.p50_us);
        row.p99_us = Some(p.p99_us);
        row.p999_us = Some(p.p999_us);
        row.extra("max_us", p.max_us);
    }
}

/// Fills the error columns from the run's counters and the messages found missing at
/// the end.
fn record_errors(row: &mut Row, state: &RunState, missing_at_end: u64) {
    let errors = &state.errors;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    row.loss = get(&errors.gaps) + missing_at_end;
    row.reorders = get(&errors.reorders);
    let conflicts = state.window.as_ref().map_or(0, Window::conflicts);
    row.other_errors = get(&errors.disconnects)
        + get(&errors.left_events)
        + get(&errors.malformed)
        + get(&errors.unexpected)
        + get(&errors.undecodable_replies)
        + conflicts;
    row.ok = row.loss == 0 && row.reorders == 0 && row.other_errors == 0;
    for (key, value) in [
        ("disconnects", get(&errors.disconnects)),
        ("dropped_by_server", get(&errors.left_events)),
        ("malformed", get(&errors.malformed)),
        ("unexpected_replies", get(&errors.unexpected)),
        ("undecodable_join_replies", get(&errors.undecodable_replies)),
        ("window_conflicts", conflicts),
    ] {
        if value > 0 {
            row.extra(key, value);
        }
    }
}

async fn fanout(p: &FanoutParams, target: &Running, row: &mut Row) -> Result<()> {
    let clients = p.clients;
    if clients < 2 {
        bail!("fanout needs at least 2 clients");
    }
    let senders = p.senders.clamp(1, clients);
    let width = p.window.unwrap_or_else(|| default_window(senders));
    let window = Window::new(senders, width, clients - 1);
    let state = Arc::new(RunState::new(clients, senders, Some(window)));
    let _stop_readers = state.stop.clone().drop_guard();
    let joined = run::join_clients(
        &state,
        &target.endpoint,
        target.fresh_room,
        clients,
        p.connect_in_flight,
    )
    .await?;
    run::settle_joins(&state, &joined, SETTLE_TIMEOUT).await?;

    let cpu = CpuWindow::start(target.pid);
    let deadline = tokio::time::Instant::now() + p.duration;
    let tasks: Vec<_> = (0..senders)
        .map(|sender| {
            let state = Arc::clone(&state);
            let writer = Arc::clone(&joined.clients[sender].writer);
            tokio::spawn(closed_loop_sender(
                state, sender, writer, deadline, p.text_len,
            ))
        })
        .collect();
    for task in tasks {
        task.await.context("a sender task failed")??;
    }
    let sent = state.total_sent();
    let window = state.window.as_ref().context("fan-out without a window")?;
    let drained = run::wait_until(&state, DRAIN_TIMEOUT, || window.completed() >= sent).await;
    let sample = cpu.finish();
    let deliveries = state.total_deliveries();
    row.rss_kib = rss_kib(target);
    let missing = run::finish(&state, joined.clients).await;

    let secs = sample.elapsed.as_secs_f64();
    row.rate = Some(deliveries as f64 / secs);
    record_cpu(row, &sample, deliveries);
    record_latency(row, &state);
    record_errors(row, &state, missing);
    row.extra("messages", sent);
    row.extra("deliveries", deliveries);
    if !drained {
        row.extra("drain_timed_out", true);
        row.ok = false;
    }
    Ok(())
}

/// A closed-loop sender: takes every free permit of its window, sends that many
/// messages in one write, repeats until `deadline`.
async fn closed_loop_sender(
    state: Arc<RunState>,
    sender: usize,
    writer: SharedWriter,
    deadline: tokio::time::Instant,
    text_len: usize,
) -> Result<()> {
    let window = state.window.as_ref().context("fan-out without a window")?;
    let permits = window.permits(sender);
    let stop = tokio::time::sleep_until(deadline);
    tokio::pin!(stop);
    let mut out = BytesMut::new();
    let mut seq = 0u64;
    loop {
        let first = tokio::select! {
            biased;
            () = &mut stop => break,
            permit = permits.acquire() => permit,
        };
        let Ok(first) = first else { break };
        first.forget();
        let mut batch = 1;
        while batch < window.width() {
            match permits.try_acquire() {
                Ok(permit) => {
                    permit.forget();
                    batch += 1;
                }
                Err(_) => break,
            }
        }
        for _ in 0..batch {
            window.arm(sender, seq);
            run::encode_say(&mut out, sender, seq, state.now_ns(), text_len)?;
            seq += 1;
        }
        state.sent[sender].set(seq);
        let written = writer.lock().await.write_all(&out).await;
        out.clear();
        if let Err(e) = written {
            if !state.stop.is_cancelled() {
                state.errors.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = sender, error = %e, "send failed");
            }
            break;
        }
        if state.broken() {
            break;
        }
    }
    Ok(())
}

async fn openloop(p: &OpenLoopParams, target: &Running, row: &mut Row) -> Result<()> {
    let clients = p.clients;
    if clients < 2 {
        bail!("openloop needs at least 2 clients");
    }
    if !(p.rate.is_finite() && p.rate > 0.0) {
        bail!("--rate must be a positive number of deliveries per second");
    }
    let senders = p.senders.unwrap_or(clients).clamp(1, clients);
    let message_rate = p.rate / (clients - 1) as f64;
    let state = Arc::new(RunState::new(clients, senders, None));
    let _stop_readers = state.stop.clone().drop_guard();
    let joined = run::join_clients(
        &state,
        &target.endpoint,
        target.fresh_room,
        clients,
        p.connect_in_flight,
    )
    .await?;
    run::settle_joins(&state, &joined, SETTLE_TIMEOUT).await?;

    let writers: Vec<SharedWriter> = joined.clients[..senders]
        .iter()
        .map(|client| Arc::clone(&client.writer))
        .collect();
    let cpu = CpuWindow::start(target.pid);
    // Start a little later, so the sending thread is up before the first message is due.
    let start_ns = state.now_ns() + 20_000_000;
    let end_ns = start_ns + u64::try_from(p.duration.as_nanos()).unwrap_or(u64::MAX);
    let timetable = Timetable {
        start_ns,
        interval_ns: 1e9 / message_rate,
        end_ns,
    };
    let sending_state = Arc::clone(&state);
    let text_len = p.text_len;
    let sending = std::thread::Builder::new()
        .name("chat-bench-pacer".into())
        .spawn(move || send_on_schedule(sending_state, writers, timetable, text_len))
        .context("cannot start the pacer thread")?;
    let scheduled = tokio::task::spawn_blocking(move || sending.join())
        .await
        .context("the pacer thread failed")?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))??;
    let expected = state.total_sent() * (clients as u64 - 1);
    let drained = run::wait_until(&state, DRAIN_TIMEOUT, || {
        state.total_deliveries() >= expected
    })
    .await;
    let sample = cpu.finish();
    let deliveries = state.total_deliveries();
    row.rss_kib = rss_kib(target);
    let missing = run::finish(&state, joined.clients).await;

    let send_secs = p.duration.as_secs_f64();
    row.rate = Some(deliveries as f64 / send_secs);
    record_cpu(row, &sample, deliveries);
    record_latency(row, &state);
    record_errors(row, &state, missing);
    row.extra("messages", scheduled);
    row.extra("deliveries", deliveries);
    if let Some(lag) = Percentiles::of(&state.send_lag.merged()) {
        row.extra("send_lag_p50_us", lag.p50_us);
        row.extra("send_lag_p99_us", lag.p99_us);
    }
    if !drained {
        row.extra("drain_timed_out", true);
        row.ok = false;
    }
    Ok(())
}

/// When messages are due: message `k` at `start + k * interval`, until `end`.
#[derive(Debug, Clone, Copy)]
struct Timetable {
    start_ns: u64,
    interval_ns: f64,
    end_ns: u64,
}

/// The open loop's sending side, on a thread of its own: a pacer and one task per sender
/// on a single-threaded runtime, so that sends leave on time whatever the readers on the
/// main runtime are doing (tasks woken from outside a busy multi-threaded runtime can
/// wait behind its local queues for milliseconds). The sockets stay registered with the
/// main runtime, which wakes these tasks when a socket is writable again. Returns the
/// number of messages scheduled.
fn send_on_schedule(
    state: Arc<RunState>,
    writers: Vec<SharedWriter>,
    timetable: Timetable,
    text_len: usize,
) -> Result<u64> {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack (1 ns here), so
    // its sleeps end when asked rather than up to 50 us later.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .context("cannot start the pacer's runtime")?;
    runtime.block_on(async move {
        let mut queues = Vec::with_capacity(writers.len());
        let mut tasks = Vec::with_capacity(writers.len());
        for (sender, writer) in writers.into_iter().enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push(tx);
            let state = Arc::clone(&state);
            tasks.push(tokio::spawn(paced_sender(
                state, sender, writer, rx, text_len,
            )));
        }
        let scheduled = pace(&state, &queues, timetable).await;
        drop(queues);
        for task in tasks {
            task.await.context("a sender task failed")??;
        }
        Ok(scheduled)
    })
}

/// Hands each message to its sender (`k % senders`) when it is due. Between due times it
/// first lets the sender tasks write, then sleeps the thread until the next one; when it
/// falls behind it hands out every overdue message at once (they keep their scheduled
/// times, so the delay counts as latency).
async fn pace(
    state: &RunState,
    queues: &[mpsc::UnboundedSender<u64>],
    timetable: Timetable,
) -> u64 {
    let mut k = 0u64;
    loop {
        let due = timetable.start_ns + (k as f64 * timetable.interval_ns) as u64;
        if due >= timetable.end_ns || state.broken() {
            return k;
        }
        if due > state.now_ns() {
            tokio::task::yield_now().await;
            let now = state.now_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
            continue;
        }
        let sender = (k % queues.len() as u64) as usize;
        if queues[sender].send(due).is_err() {
            return k;
        }
        k += 1;
    }
}

/// An open-loop sender: writes each scheduled message as soon as it is handed over (all
/// that are ready in one write), stamped with its scheduled time.
async fn paced_sender(
    state: Arc<RunState>,
    sender: usize,
    writer: SharedWriter,
    mut queue: mpsc::UnboundedReceiver<u64>,
    text_len: usize,
) -> Result<()> {
    let mut lag = state.send_lag.buffer(sender);
    let mut out = BytesMut::new();
    let mut due_times = Vec::new();
    let mut seq = 0u64;
    while let Some(due) = queue.recv().await {
        due_times.push(due);
        while let Ok(due) = queue.try_recv() {
            due_times.push(due);
        }
        for &due in &due_times {
            run::encode_say(&mut out, sender, seq, due, text_len)?;
            seq += 1;
        }
        state.sent[sender].set(seq);
        let now = state.now_ns();
        for &due in &due_times {
            lag.record(now.saturating_sub(due));
        }
        due_times.clear();
        let written = writer.lock().await.write_all(&out).await;
        out.clear();
        if let Err(e) = written {
            if !state.stop.is_cancelled() {
                state.errors.disconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = sender, error = %e, "send failed");
            }
            break;
        }
    }
    Ok(())
}

async fn idle(
    clients: usize,
    in_flight: usize,
    settle: Duration,
    target: &Running,
    row: &mut Row,
) -> Result<()> {
    let pid = target
        .pid
        .context("idle needs the target's process id (let the bench start it, or --server-pid)")?;
    let state = Arc::new(RunState::new(clients, 0, None));
    let _stop_readers = state.stop.clone().drop_guard();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = procfs::rss_bytes(pid)?;
    let cpu = CpuWindow::start(Some(pid));
    let joined = run::join_clients(
        &state,
        &target.endpoint,
        target.fresh_room,
        clients,
        in_flight,
    )
    .await?;
    run::settle_joins(&state, &joined, SETTLE_TIMEOUT).await?;
    let sample = cpu.finish();
    tokio::time::sleep(settle).await;
    let after = procfs::rss_bytes(pid)?;
    let missing = run::finish(&state, joined.clients).await;

    let per_connection = after.saturating_sub(before) as f64 / clients.max(1) as f64;
    row.rate = Some(per_connection);
    row.rss_kib = Some(after / 1024);
    row.elapsed_s = Some(sample.elapsed.as_secs_f64());
    row.server_cpu_s = sample.server_cpu_s;
    row.extra("rss_before_kib", before / 1024);
    row.extra("rss_after_kib", after / 1024);
    row.extra("kib_per_conn", per_connection / 1024.0);
    record_errors(row, &state, missing);
    Ok(())
}

async fn join(clients: usize, in_flight: usize, target: &Running, row: &mut Row) -> Result<()> {
    let state = Arc::new(RunState::new(clients, 0, None));
    let _stop_readers = state.stop.clone().drop_guard();
    let started = Instant::now();
    let cpu = CpuWindow::start(target.pid);
    let joined = run::join_clients(
        &state,
        &target.endpoint,
        target.fresh_room,
        clients,
        in_flight,
    )
    .await?;
    run::settle_joins(&state, &joined, SETTLE_TIMEOUT).await?;
    let sample = cpu.finish();
    let took = started.elapsed();
    row.rss_kib = rss_kib(target);
    let latency = Percentiles::of(&joined.join_latency);
    let broadcasts = joined.expected_joined_events;
    let missing = run::finish(&state, joined.clients).await;

    row.rate = Some(clients as f64 / took.as_secs_f64());
    record_cpu(row, &sample, clients as u64);
    if let Some(p) = latency {
        row.p50_us = Some(p.p50_us);
        row.p99_us = Some(p.p99_us);
        row.p999_us = Some(p.p999_us);
    }
    row.extra("join_broadcasts", broadcasts);
    record_errors(row, &state, missing);
    Ok(())
}
