//! The accept loop and graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::connection::{self, Shared};
use crate::registry;

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
    let private_limit = registry::PrivateLimit {
        rate: config.pm_rate_per_sec,
        burst: config.pm_burst,
    };
    let registry = registry::spawn(
        REGISTRY_MAILBOX,
        config.tick * config.silent_ticks,
        private_limit,
    );
    let stopping = CancellationToken::new();
    let tracker = TaskTracker::new();
    let grace = config.shutdown_grace;
    let config_tick = config.tick;
    let shared = Arc::new(Shared::new(
        config,
        registry.clone(),
        stopping.clone(),
        tracker.clone(),
    ));
    tokio::spawn(tick(registry.clone(), config_tick, stopping.clone()));
    let mut next_id = 0;
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
        next_id += 1;
        tracker.spawn(connection::handle(
            stream,
            addr,
            next_id,
            Arc::clone(&shared),
        ));
    }
    tracing::info!("shutting down");
    drop(listener);
    stopping.cancel();
    registry.shutdown().await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not close in time");
    }
}

/// Sends the registry a liveness tick every `period` until the server stops.
async fn tick(registry: registry::RegistryHandle, period: Duration, stopping: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            _ = ticks.tick() => {
                if !registry.send(registry::Command::Tick).await {
                    return;
                }
            }
        }
    }
}
