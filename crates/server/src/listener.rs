//! The accept loop and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::connection::{self, Shared};
use crate::history::History;
use crate::registry::{self, RoomRules};

/// Commands the registry's mailbox holds before readers wait.
const REGISTRY_MAILBOX: usize = 4096;

/// Serves the room on `listener` until `shutdown` resolves; then stops accepting, tells
/// every client the server is shutting down, and waits (at most the configured grace) for
/// their queues to be written.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let history = Arc::new(History::new(
        config.history_events,
        config.history_bytes,
        fanout_groups(),
    ));
    history.start_fanout();
    let rules = RoomRules {
        silence_limit: config.tick * config.silent_ticks,
        max_lag_bytes: config.send_queue_bytes as u64,
        flood: config.flood_limits(),
        max_departed: config.max_clients,
        resume_window: config.resume_window,
    };
    let private_limit = registry::PrivateLimit {
        rate: config.pm_rate_per_sec,
        burst: config.pm_burst,
    };
    let registry = registry::spawn(REGISTRY_MAILBOX, history.clone(), rules, private_limit);
    let stopping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let grace = config.shutdown_grace;
    let config_tick = config.tick;
    let shared = Arc::new(Shared::new(
        config,
        registry.clone(),
        history,
        stopping.clone(),
        tracker.clone(),
    ));
    tokio::spawn(tick(
        registry.clone(),
        config_tick,
        || registry::Command::Tick,
        stopping.clone(),
    ));
    tokio::spawn(tick(
        registry.clone(),
        SWEEP_PERIOD,
        || registry::Command::Sweep,
        stopping.clone(),
    ));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tracker.spawn(connection::handle(
            stream,
            addr,
            shared.next_conn_id(),
            Arc::clone(&shared),
        ));
    }
    // The registry logs `server shutting down`, then every member's `left`.
    tracing::debug!("shutting down");
    drop(listener);
    stopping.cancel();
    registry.shutdown().await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
}

/// How often the registry looks for members too far behind the history.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);

/// Wake-up groups of the history's fan-out: one per worker thread, so that waking the
/// writers after an append is spread over every core.
fn fanout_groups() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Sends the registry `command` (a liveness tick, a sweep) every `period` until the
/// server stops.
async fn tick(
    registry: registry::RegistryHandle,
    period: Duration,
    command: fn() -> registry::Command,
    stopping: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            _ = ticks.tick() => {
                if !registry.send(command()).await {
                    return;
                }
            }
        }
    }
}
