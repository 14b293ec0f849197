//! The four workloads, each measured against one running target:
//!
//! - [`Workload::Fanout`]: closed loop. N clients join, S of them send, each keeping at
//!   most W messages in flight (in flight until every other client got it). Throughput,
//!   the target's CPU per million deliveries, latency from send to receive, zero loss and
//!   per-sender order. Optionally pinned: target on one CPU, generator on the others.
//! - [`Workload::OpenLoop`]: a fixed offered rate of deliveries; a pacer thread schedules
//!   sends on a timetable spread across the senders, and latency is measured from the
//!   scheduled time, so a stalled target cannot hide its stall (no coordinated omission).
//!
//! Against a cluster (`--cluster`), fan-out and join spread the clients over the nodes;
//! the open loop puts the senders on the first node and the receivers on the others, so
//! its latency is that of a message crossing from one node to another.
//! - [`Workload::Idle`]: the target's RSS per idle joined connection.
//! - [`Workload::Join`]: joins per second and the target's CPU per join, each join
//!   counted when it is answered and its broadcast has reached everyone already there.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::affinity::{self, Pinning};
use crate::engine::{Engine, SendPlan};
use crate::launch::Running;
use crate::probe;
use crate::procfs;
use crate::report::Row;
use crate::run::{self, CpuSample, CpuWindow, Placement, RunState, Totals};
use crate::stats::Percentiles;
use crate::window::Window;

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
    /// Target on one CPU, generator on the others.
    pub pinned: bool,
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
        /// Clients joining at once.
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
    /// A mass resume: every link cut at once, then every client resuming.
    Resume {
        /// Clients cut and resuming.
        clients: usize,
        /// Messages said while they are away.
        said: usize,
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
            Self::Resume { .. } => "resume",
        }
    }

    /// Connections the workload opens at once.
    pub fn clients(&self) -> usize {
        match self {
            Self::Fanout(p) => p.clients,
            Self::OpenLoop(p) => p.clients,
            Self::Idle { clients, .. } | Self::Join { clients, .. } => *clients,
            // The cut connections and the resuming ones overlap.
            Self::Resume { clients, .. } => clients + (*clients).min(1024),
        }
    }

    /// The CPUs of a pinned run; `None` for an unpinned one.
    pub fn pinning(&self) -> Result<Option<Pinning>> {
        match self {
            Self::Fanout(p) if p.pinned => Pinning::plan().map(Some),
            _ => Ok(None),
        }
    }

    /// Runs the workload against `target` with `threads` generator threads (default: one
    /// per CPU the generator may use), filling `row`.
    pub async fn run(
        &self,
        target: &Running,
        pinning: Option<&Pinning>,
        threads: Option<usize>,
        row: &mut Row,
    ) -> Result<()> {
        let _pinned = pinning.map(Pinning::pin_bench).transpose()?;
        let threads = match threads {
            Some(n) => n,
            None => affinity::allowed_cpus()
                .context("cannot read this process's CPU affinity")?
                .len(),
        }
        .clamp(1, 64);
        row.extra("generator_threads", threads);
        match self {
            Self::Fanout(p) => fanout(p, target, threads, row).await,
            Self::OpenLoop(p) => openloop(p, target, threads, row).await,
            Self::Idle {
                clients,
                in_flight,
                settle,
            } => idle(*clients, *in_flight, *settle, target, threads, row).await,
            Self::Join { clients, in_flight } => {
                join(*clients, *in_flight, target, threads, row).await
            }
            Self::Resume { clients, said } => {
                crate::resume::run(*clients, *said, target, row).await
            }
        }
    }

    /// The unit of the headline figure.
    pub fn unit(&self) -> &'static str {
        match self {
            Self::Fanout(_) | Self::OpenLoop(_) => "deliveries/s",
            Self::Idle { .. } => "B/conn",
            Self::Join { .. } => "joins/s",
            Self::Resume { .. } => "resumes/s",
        }
    }

    /// Records the parameters in `row` (equal parameters pair the targets' rows).
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
                if p.pinned {
                    row.param("pinned", true);
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
            }
            | Self::Join { clients, in_flight } => {
                row.param("K", *clients);
                row.param("in_flight", *in_flight);
            }
            Self::Resume { clients, said } => {
                row.param("K", *clients);
                row.param("said", *said);
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

/// A run's shared state and its generator, with the room filled.
struct Room {
    state: Arc<RunState>,
    engine: Arc<Engine>,
    joined: run::Joined,
}

/// Starts the generator and joins `clients` clients, `in_flight` at a time, over the
/// target's nodes by `placement`; with `settle`, also waits for every join broadcast.
async fn fill_room(
    state: RunState,
    target: &Running,
    threads: usize,
    in_flight: usize,
    placement: Placement,
    settle: bool,
) -> Result<Room> {
    let clients = state.clients;
    let state = Arc::new(state);
    let engine = Arc::new(Engine::start(Arc::clone(&state), threads)?);
    let joined = run::join_clients(
        &state,
        &engine,
        &target.nodes(),
        placement,
        target.fresh_room,
        clients,
        in_flight,
    )
    .await?;
    if settle {
        run::settle_joins(&state, &joined, SETTLE_TIMEOUT).await?;
    }
    Ok(Room {
        state,
        engine,
        joined,
    })
}

/// How a measured run ended, read in [`end_run`].
struct Ended {
    /// The CPU window's figures.
    sample: CpuSample,
    /// Deliveries when the window closed.
    deliveries: u64,
    /// Messages sent when the window closed.
    sent: u64,
    /// The generator's findings.
    totals: Totals,
}

/// The end of a measured run: closes the CPU window, counts what was sent and delivered,
/// reads the target's RSS while every connection is still open, then stops the
/// generator.
fn end_run(
    cpu: &CpuWindow,
    target: &Running,
    state: &RunState,
    engine: Arc<Engine>,
    row: &mut Row,
) -> Result<Ended> {
    let sample = cpu.finish();
    let deliveries = state.total_deliveries();
    let sent = state.total_sent();
    row.rss_kib = rss_kib(target);
    let totals = run::finish(state, engine)?;
    Ok(Ended {
        sample,
        deliveries,
        sent,
        totals,
    })
}

/// The columns a fan-out run shares, closed or open loop: deliveries per second over
/// `secs`, the messages and the deliveries, and a failed row when the messages in flight
/// did not all arrive (`drained` false).
fn delivery_columns(row: &mut Row, messages: u64, deliveries: u64, secs: f64, drained: bool) {
    row.rate = Some(deliveries as f64 / secs);
    row.extra("messages", messages);
    row.extra("deliveries", deliveries);
    if !drained {
        row.extra("drain_timed_out", true);
        row.ok = false;
    }
}

/// The latency columns from `p`.
fn latency_columns(row: &mut Row, p: &Percentiles) {
    row.p50_us = Some(p.p50_us);
    row.p99_us = Some(p.p99_us);
    row.p999_us = Some(p.p999_us);
}

/// The epilogue every workload shares: CPU columns from the window in which `units`
/// deliveries or joins happened, latency percentiles, and the error columns from the
/// run's counters and end-of-run accounting (which decide `row.ok`).
fn conclude(row: &mut Row, state: &RunState, totals: &Totals, sample: &CpuSample, units: u64) {
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
    let outcome = &totals.outcome;
    if let Some(p) = Percentiles::of(&outcome.latency) {
        latency_columns(row, &p);
        row.extra("max_us", p.max_us);
    }
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    row.loss = outcome.gaps + totals.missing_at_end;
    row.reorders = outcome.reorders;
    let conflicts = state.window.as_ref().map_or(0, Window::conflicts);
    let disconnects = get(&state.errors.disconnects);
    let dropped = get(&state.errors.left_events);
    row.other_errors = disconnects + dropped + outcome.malformed + outcome.unexpected + conflicts;
    row.ok = row.ok && row.loss == 0 && row.reorders == 0 && row.other_errors == 0;
    for (key, value) in [
        ("disconnects", disconnects),
        ("dropped_by_server", dropped),
        ("malformed", outcome.malformed),
        ("unexpected_replies", outcome.unexpected),
        ("window_conflicts", conflicts),
    ] {
        if value > 0 {
            row.extra(key, value);
        }
    }
}

async fn fanout(p: &FanoutParams, target: &Running, threads: usize, row: &mut Row) -> Result<()> {
    let clients = p.clients;
    if clients < 2 {
        bail!("fanout needs at least 2 clients");
    }
    let senders = p.senders.clamp(1, clients);
    if senders > probe::MAX_SENDER {
        bail!("at most {} senders", probe::MAX_SENDER);
    }
    let width = p.window.unwrap_or_else(|| default_window(senders));
    let window = Window::new(senders, width, clients - 1);
    let state = RunState::new(clients, senders, Some(window), threads);
    let Room { state, engine, .. } = fill_room(
        state,
        target,
        threads,
        p.connect_in_flight,
        Placement::Spread,
        true,
    )
    .await?;

    let cpu = CpuWindow::start(&target.pids());
    let deadline = Instant::now() + p.duration;
    engine.send(SendPlan::Closed {
        deadline,
        text_len: p.text_len,
    });
    let window = state.window.as_ref().context("fan-out without a window")?;
    run::wait_until(&state, p.duration + DRAIN_TIMEOUT, || {
        Instant::now() >= deadline
    })
    .await;
    let drained = run::wait_until(&state, DRAIN_TIMEOUT, || {
        window.completed() >= state.total_sent()
    })
    .await;
    let end = end_run(&cpu, target, &state, engine, row)?;

    let secs = end.sample.elapsed.as_secs_f64();
    delivery_columns(row, end.sent, end.deliveries, secs, drained);
    conclude(row, &state, &end.totals, &end.sample, end.deliveries);
    Ok(())
}

async fn openloop(
    p: &OpenLoopParams,
    target: &Running,
    threads: usize,
    row: &mut Row,
) -> Result<()> {
    let clients = p.clients;
    if clients < 2 {
        bail!("openloop needs at least 2 clients");
    }
    if !(p.rate.is_finite() && p.rate > 0.0) {
        bail!("--rate must be a positive number of deliveries per second");
    }
    let senders = p.senders.unwrap_or(clients).clamp(1, clients);
    if senders > probe::MAX_SENDER {
        bail!("at most {} senders", probe::MAX_SENDER);
    }
    let message_rate = p.rate / (clients - 1) as f64;
    let state = RunState::new(clients, senders, None, threads);
    let Room { state, engine, .. } = fill_room(
        state,
        target,
        threads,
        p.connect_in_flight,
        Placement::SendersApart { senders },
        true,
    )
    .await?;

    let cpu = CpuWindow::start(&target.pids());
    engine.send(SendPlan::Open {
        text_len: p.text_len,
    });
    // Start a little later, so the pacer is up before the first message is due.
    let start_ns = state.now_ns() + 20_000_000;
    let timetable = Timetable {
        start_ns,
        interval_ns: 1e9 / message_rate,
        end_ns: start_ns + u64::try_from(p.duration.as_nanos()).unwrap_or(u64::MAX),
        senders: senders as u64,
    };
    let pacer = {
        let (state, engine) = (Arc::clone(&state), Arc::clone(&engine));
        std::thread::Builder::new()
            .name("chat-bench-pacer".into())
            .spawn(move || pace(&state, &engine, timetable))
            .context("cannot start the pacer thread")?
    };
    let scheduled = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .context("the pacer thread failed")?
        .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    let expected = scheduled * (clients as u64 - 1);
    let drained = run::wait_until(&state, DRAIN_TIMEOUT, || {
        state.total_deliveries() >= expected
    })
    .await;
    let end = end_run(&cpu, target, &state, engine, row)?;

    let secs = p.duration.as_secs_f64();
    delivery_columns(row, scheduled, end.deliveries, secs, drained);
    if let Some(lag) = Percentiles::of(&end.totals.outcome.send_lag) {
        row.extra("send_lag_p50_us", lag.p50_us);
        row.extra("send_lag_p99_us", lag.p99_us);
    }
    conclude(row, &state, &end.totals, &end.sample, end.deliveries);
    Ok(())
}

/// When messages are due: message `k` at `start + k * interval`, from sender
/// `k % senders`, until `end`.
#[derive(Debug, Clone, Copy)]
struct Timetable {
    start_ns: u64,
    interval_ns: f64,
    end_ns: u64,
    senders: u64,
}

/// The open loop's pacer, on a thread of its own: hands each message to its sender's
/// generator thread when it is due, sleeping in between (with 1 ns of timer slack, so a
/// sleep ends when asked). When it falls behind it hands out every overdue message at
/// once; they keep their scheduled times, so the delay counts as latency. Returns the
/// number of messages scheduled.
fn pace(state: &RunState, engine: &Engine, timetable: Timetable) -> u64 {
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let mut k = 0u64;
    loop {
        let due = timetable.start_ns + (k as f64 * timetable.interval_ns) as u64;
        if due >= timetable.end_ns || state.broken() {
            return k;
        }
        let now = state.now_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
            continue;
        }
        engine.due((k % timetable.senders) as u32, due);
        k += 1;
    }
}

async fn idle(
    clients: usize,
    in_flight: usize,
    settle: Duration,
    target: &Running,
    threads: usize,
    row: &mut Row,
) -> Result<()> {
    let pid = target
        .pid
        .context("idle needs the target's process id (let the bench start it, or --server-pid)")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = procfs::rss_bytes(pid)?;
    let cpu = CpuWindow::start(&[pid]);
    let state = RunState::new(clients, 0, None, threads);
    let Room { state, engine, .. } =
        fill_room(state, target, threads, in_flight, Placement::Spread, true).await?;
    let sample = cpu.finish();
    tokio::time::sleep(settle).await;
    let after = procfs::rss_bytes(pid)?;
    let totals = run::finish(&state, engine)?;

    let per_connection = after.saturating_sub(before) as f64 / clients.max(1) as f64;
    row.rate = Some(per_connection);
    row.rss_kib = Some(after / 1024);
    row.extra("rss_before_kib", before / 1024);
    row.extra("rss_after_kib", after / 1024);
    row.extra("kib_per_conn", per_connection / 1024.0);
    conclude(row, &state, &totals, &sample, 0);
    row.p50_us = None;
    row.p99_us = None;
    row.p999_us = None;
    Ok(())
}

async fn join(
    clients: usize,
    in_flight: usize,
    target: &Running,
    threads: usize,
    row: &mut Row,
) -> Result<()> {
    let started = Instant::now();
    let cpu = CpuWindow::start(&target.pids());
    let state = RunState::new(clients, 0, None, threads);
    let Room {
        state,
        engine,
        joined,
    } = fill_room(state, target, threads, in_flight, Placement::Spread, true).await?;
    let took = started.elapsed();
    let end = end_run(&cpu, target, &state, engine, row)?;

    row.rate = Some(clients as f64 / took.as_secs_f64());
    row.extra("join_broadcasts", joined.expected_joined_events);
    conclude(row, &state, &end.totals, &end.sample, clients as u64);
    // The latency columns of a join row are connect-to-answer times.
    if let Some(p) = Percentiles::of(&joined.join_latency) {
        latency_columns(row, &p);
    }
    row.extra(
        "server_cpu_us_per_join",
        row.cpu_s_per_1m.unwrap_or_default(),
    );
    Ok(())
}
