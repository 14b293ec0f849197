//! The accept loop and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::redis::RedisBackend;
use crate::cluster::ClusterConfig;
use crate::config::ServerConfig;
use crate::connection::{self, Shared};
use crate::history::History;
use crate::registry::{self, RoomRules};

/// The accept queue asked for; the kernel caps it at `net.core.somaxconn` (4096 on
/// current Linux). A mass reconnect brings thousands of connections within milliseconds;
/// with tokio's default of 1024, the overflow is dropped by the kernel, and a client whose
/// handshake completed on its side but never reached the queue can get a reset.
pub const LISTEN_BACKLOG: u32 = 65_535;

/// Listens on `addr` (address reuse on, as tokio's `TcpListener::bind` does) with an
/// accept queue of [`LISTEN_BACKLOG`].
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

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
    serve_with(config, listener, shutdown, || {}).await;
}

/// [`serve`], calling `ready` once the room can be joined: at once for a room of this
/// process, once the store is reached for a node of a cluster (connections are
/// accepted before, and told to try again later).
pub async fn serve_with(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(),
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
    let cluster = config.cluster.clone().map(|url| {
        let mut cluster = ClusterConfig::new(url);
        cluster.history = config.history_events;
        cluster.lease = config.cluster_lease;
        cluster.resume_window = config.resume_window;
        cluster
    });
    let (name, recent) = (config.name.to_string(), config.history_events);
    let local_rules = rules.clone();
    let (room_ready, mut on_room_ready) = tokio::sync::oneshot::channel();
    let registry = registry::spawn(
        REGISTRY_MAILBOX,
        history.clone(),
        rules,
        private_limit,
        move |mail| match cluster {
            Some(cluster) => Box::new(RedisBackend::start(cluster, name, recent, mail, room_ready)),
            None => {
                let _ = room_ready.send(());
                registry::local_backend(&local_rules)
            }
        },
    );
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
    let mut ready = Some(ready);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Ok(()) = &mut on_room_ready, if ready.is_some() => {
                if let Some(ready) = ready.take() {
                    ready();
                }
                continue;
            }
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
