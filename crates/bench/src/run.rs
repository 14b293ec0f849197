//! What every workload shares: the run's counters, joining many clients at once (and
//! handing each to the generator as soon as it has joined), waiting for conditions, the
//! end-of-run accounting of loss and order, and the measured window (wall time and CPU
//! time from `/proc`).
//!
//! Every client lives in this process, so one clock (the run's [`Instant`] base) stamps
//! both the send and the receipt of a message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;

use crate::client;
use crate::engine::{Engine, Outcome};
use crate::procfs;
use crate::session::Endpoint;
use crate::stats::{self, PaddedCounter};
use crate::window::Window;

/// Events that end a run early, counted as they happen.
#[derive(Debug, Default)]
pub struct Errors {
    /// Clients whose connection ended (or was told to close) during the run.
    pub disconnects: AtomicU64,
    /// `Left` events during the run: the target dropped somebody.
    pub left_events: AtomicU64,
}

/// The shared state of one measurement.
pub struct RunState {
    base: Instant,
    /// Clients in the run.
    pub clients: usize,
    /// Clients `0..senders` send.
    pub senders: usize,
    /// The fan-out window, for closed-loop runs.
    pub window: Option<Window>,
    /// Per sender: messages sent so far.
    pub sent: Vec<PaddedCounter>,
    /// Per generator thread: messages received.
    pub deliveries: Vec<PaddedCounter>,
    /// Per generator thread: `Joined` events received.
    pub joined_events: Vec<PaddedCounter>,
    /// What went wrong so far.
    pub errors: Errors,
    /// Set when the measurement is over: departures from now on are not errors.
    pub stopping: AtomicBool,
}

impl RunState {
    /// State for `clients` clients of which the first `senders` send, read by `threads`
    /// generator threads.
    pub fn new(clients: usize, senders: usize, window: Option<Window>, threads: usize) -> Self {
        Self {
            base: Instant::now(),
            clients,
            senders,
            window,
            sent: stats::counters(senders),
            deliveries: stats::counters(threads),
            joined_events: stats::counters(threads),
            errors: Errors::default(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Nanoseconds since the run's clock base.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Messages received, all clients together.
    pub fn total_deliveries(&self) -> u64 {
        stats::sum(&self.deliveries)
    }

    /// `Joined` events received, all clients together.
    pub fn total_joined_events(&self) -> u64 {
        stats::sum(&self.joined_events)
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

/// The result of [`join_clients`].
pub struct Joined {
    /// Connect to `Joined` reply, nanoseconds, per client.
    pub join_latency: Histogram<u64>,
    /// `Joined` events the room owes to the clients: one per member already in the room
    /// at each join.
    pub expected_joined_events: u64,
}

/// Which node of a cluster each client joins through (one server: all of them the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Client `i` on node `i % nodes`: the load spread evenly.
    Spread,
    /// Clients `0..senders` on the first node, the others spread over the other nodes,
    /// so every delivery crosses from one node to another (through Redis).
    SendersApart {
        /// Clients that send.
        senders: usize,
    },
}

impl Placement {
    /// The node (an index below `nodes`) client `index` joins through.
    pub fn node(self, index: usize, nodes: usize) -> usize {
        match self {
            _ if nodes <= 1 => 0,
            Self::Spread => index % nodes,
            Self::SendersApart { senders } if index < senders => 0,
            Self::SendersApart { senders } => 1 + (index - senders) % (nodes - 1),
        }
    }
}

/// Connects and joins clients `0..count`, at most `in_flight` at a time, each through
/// the node of `nodes` that `placement` gives it, handing each to `engine` as soon as it
/// has joined.
///
/// `fresh_room` says the room started empty (the bench started the target): then the
/// join broadcasts owed are `count * (count - 1) / 2`, whatever the replies list (the
/// relay's lists the joiner alone). Otherwise they are counted from the replies.
pub async fn join_clients(
    state: &Arc<RunState>,
    engine: &Arc<Engine>,
    nodes: &[Endpoint],
    placement: Placement,
    fresh_room: bool,
    count: usize,
    in_flight: usize,
) -> Result<Joined> {
    if nodes.is_empty() {
        bail!("no node to join through");
    }
    let nodes: Arc<[Endpoint]> = nodes.into();
    let next = Arc::new(AtomicUsize::new(0));
    let listed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..in_flight.clamp(1, count.max(1)) {
        let (state, engine, nodes, next, listed) = (
            Arc::clone(state),
            Arc::clone(engine),
            Arc::clone(&nodes),
            Arc::clone(&next),
            Arc::clone(&listed),
        );
        workers.push(tokio::spawn(async move {
            let mut latency = stats::new_histogram();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count || state.broken() {
                    return Ok::<_, anyhow::Error>(latency);
                }
                let started = Instant::now();
                let endpoint = &nodes[placement.node(index, nodes.len())];
                let joined = match client::connect_and_join(endpoint, index).await {
                    Ok(joined) => joined,
                    Err(e) => {
                        // No new joins once one has failed: the run is lost anyway.
                        next.store(count, Ordering::Relaxed);
                        return Err(e).with_context(|| format!("client {index} could not join"));
                    }
                };
                let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                latency.saturating_record(took.max(1));
                listed.fetch_add(joined.members.saturating_sub(1), Ordering::Relaxed);
                engine.adopt(joined);
            }
        }));
    }
    let mut join_latency = stats::new_histogram();
    let mut failure = None;
    for worker in workers {
        match worker.await {
            Ok(Ok(latency)) => {
                let _ = join_latency.add(&latency);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(anyhow::anyhow!("a joining task failed: {e}"));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if state.broken() {
        bail!("clients were dropped while the room filled up");
    }
    let expected_joined_events = if fresh_room {
        (count as u64) * (count as u64).saturating_sub(1) / 2
    } else {
        listed.load(Ordering::Relaxed)
    };
    Ok(Joined {
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
    if !wait_until(state, timeout, || state.total_joined_events() >= expected).await {
        bail!(
            "join broadcasts did not all arrive within {timeout:?}: {} of {expected} \
             ({} disconnects, {} clients dropped)",
            state.total_joined_events(),
            state.errors.disconnects.load(Ordering::Relaxed),
            state.errors.left_events.load(Ordering::Relaxed),
        );
    }
    Ok(())
}

/// What a run found once its clients are gone.
pub struct Totals {
    /// The generator threads' findings.
    pub outcome: Outcome,
    /// Messages some receiver never got at the end of a sender's stream (gaps inside a
    /// stream are in `outcome.gaps`).
    pub missing_at_end: u64,
}

/// Ends the run: marks it stopping, stops the generator threads (disconnecting every
/// client) and counts, per receiver and sender, the messages never received.
pub fn finish(state: &RunState, engine: Arc<Engine>) -> Result<Totals> {
    state.stopping.store(true, Ordering::SeqCst);
    let engine = Arc::into_inner(engine).context("the generator is still shared")?;
    let outcome = engine.stop();
    let sent: Vec<u64> = state.sent.iter().map(PaddedCounter::get).collect();
    let mut missing_at_end = 0;
    for (index, expected) in outcome.expected.iter().enumerate() {
        for (sender, &count) in sent.iter().enumerate() {
            if sender != index {
                let got = expected.get(sender).copied().unwrap_or(0);
                missing_at_end += count.saturating_sub(got);
            }
        }
    }
    Ok(Totals {
        outcome,
        missing_at_end,
    })
}

/// Wall time and CPU time over a measured window.
pub struct CpuWindow {
    pids: Vec<u32>,
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
    /// Starts a window, reading the CPU time of `pids` (the target's processes, summed)
    /// and of the bench.
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            server_cpu: target_cpu_seconds(pids),
            own_cpu: procfs::own_cpu_seconds().ok(),
            machine_busy: procfs::machine_busy_seconds().ok(),
            started: Instant::now(),
        }
    }

    /// Ends the window.
    pub fn finish(&self) -> CpuSample {
        let elapsed = self.started.elapsed();
        let server_cpu_s = self
            .server_cpu
            .and_then(|before| target_cpu_seconds(&self.pids).map(|now| now - before));
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

/// The CPU seconds of every process of `pids`, summed; `None` when there are none or one
/// cannot be read.
fn target_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| procfs::cpu_seconds(pid).ok()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_takes_everyone() {
        for index in 0..10 {
            assert_eq!(Placement::Spread.node(index, 1), 0);
            assert_eq!(Placement::SendersApart { senders: 1 }.node(index, 1), 0);
        }
    }

    #[test]
    fn senders_apart_keeps_every_receiver_off_the_senders_node() {
        let placement = Placement::SendersApart { senders: 2 };
        let nodes: Vec<usize> = (0..8).map(|i| placement.node(i, 3)).collect();
        assert_eq!(nodes, [0, 0, 1, 2, 1, 2, 1, 2]);
        let spread: Vec<usize> = (0..5).map(|i| Placement::Spread.node(i, 3)).collect();
        assert_eq!(spread, [0, 1, 2, 0, 1]);
    }
}
