//! Keeps this node registered with the host's port mapper for as long as it runs.
//!
//! A registration lives as long as its connection to the mapper. When the mapper goes
//! away (killed, restarted), the keeper notices at once, starts a mapper if none answers
//! (as `erl` does), and registers again, retrying quickly (from 50 ms, at most every
//! second), so clients can find the node again within a second or two. Each step is
//! logged. If another process took the name meanwhile, the keeper says so and keeps
//! trying: a squatter can hold the name, but without the cookie it can neither read nor
//! forge anything, and clients refuse it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use portmap::{PortmapError, Registration};

/// First wait before registering again; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// What the keeper needs to register again.
#[derive(Debug, Clone)]
pub struct Keeper {
    /// The mapper's port on 127.0.0.1.
    pub mapper_port: u16,
    /// The `alive` part of this node's name.
    pub alive: String,
    /// The port clients connect to.
    pub port: u16,
    /// How to start a mapper: this program and its arguments.
    pub program: PathBuf,
    /// Arguments for `program` (e.g. `port-mapper --port 4369`).
    pub args: Vec<String>,
}

impl Keeper {
    fn mapper(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.mapper_port))
    }

    /// Starts a mapper if none answers (logged once, by `portmap`), then registers once.
    pub async fn register(&self) -> Result<Registration, PortmapError> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        portmap::ensure_running(self.mapper_port, &self.program, &args).await?;
        // As an Erlang node registers (type 77), with a marker in Extra so that
        // chat-client tells our servers from BEAM nodes serving ExMessenger.
        let mut node = protocol::epmd::NodeRegistration::normal(&self.alive, self.port);
        node.extra = protocol::erlang::EPMD_EXTRA_MARKER.to_vec();
        portmap::register_node(self.mapper(), &node).await
    }

    /// Holds `registration`, and every one after it, until the future is dropped.
    pub async fn keep(self, mut registration: Registration) {
        loop {
            registration.closed().await;
            drop(registration);
            tracing::warn!(
                port = self.mapper_port,
                "the port mapper went away; registering again"
            );
            registration = self.register_again().await;
            tracing::info!(
                port = self.mapper_port,
                name = %self.alive,
                "registered again with the port mapper"
            );
        }
    }

    /// Registers until it works, waiting a little longer after each failure.
    async fn register_again(&self) -> Registration {
        let mut wait = FIRST_RETRY;
        let mut reported_squatter = false;
        loop {
            match self.register().await {
                Ok(registration) => return registration,
                Err(PortmapError::NameTaken(_)) => {
                    if !reported_squatter {
                        tracing::error!(
                            name = %self.alive,
                            port = self.mapper_port,
                            "another process registered this node's name while the port mapper restarted; clients cannot find this node by name until it goes (it cannot read or forge anything without the cookie); retrying"
                        );
                        reported_squatter = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot register with the port mapper yet"),
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(MAX_RETRY);
        }
    }
}
