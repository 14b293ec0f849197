//! Everything that shapes a running server, with the defaults the binary's flags use.

use std::time::Duration;

use protocol::{Cookie, FloodLimits, NodeName, limits};

/// The server's settings. Built by the binary from its flags; tests build it directly.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's name; clients must ask for exactly this name.
    pub name: NodeName,
    /// The shared secret.
    pub cookie: Cookie,
    /// Liveness tick: every connection is pinged each tick, and one silent for
    /// [`ServerConfig::silent_ticks`] ticks is dropped.
    pub tick: Duration,
    /// Ticks of silence before a connection is dropped (Erlang's four).
    pub silent_ticks: u32,
    /// Time allowed from accept to a finished handshake.
    pub handshake_timeout: Duration,
    /// Most authenticated connections at once (joined or not).
    pub max_clients: usize,
    /// Most connections still in their handshake, in all.
    pub max_handshakes: usize,
    /// Most connections still in their handshake from one address (IPv6: one /64).
    pub max_handshakes_per_address: usize,
    /// Failed handshakes an address may make before it must wait [`Self::auth_retry`]
    /// per further attempt.
    pub auth_failures: u32,
    /// Time for one failed handshake of an address to be forgotten.
    pub auth_retry: Duration,
    /// Private messages one member may receive per second, on average.
    pub pm_rate_per_sec: f64,
    /// Private messages one member may receive in a burst.
    pub pm_burst: u32,
    /// Longest message text, in bytes.
    pub max_text_len: usize,
    /// Items (replies, pings, private frames) a connection's own queue may hold before it
    /// counts as a slow consumer and is dropped.
    pub send_queue_frames: usize,
    /// Bytes a connection may be behind the room's newest event (or hold in its own
    /// queue) before it counts as a slow consumer (IRC's SendQ).
    pub send_queue_bytes: usize,
    /// Room events kept in the history (for resuming, the backlog, and as the fan-out
    /// queue); a member further behind than the history has lost events and is dropped.
    pub history_events: usize,
    /// Bytes of encoded events kept in the history.
    pub history_bytes: usize,
    /// How long a member whose connection dropped can come back as the same session
    /// (its nick, and what it missed, as far as the history reaches).
    pub resume_window: Duration,
    /// Flood limit: messages per second allowed on average per connection.
    pub rate_per_sec: f64,
    /// Flood limit: messages allowed in a burst; this many refused in a row disconnects.
    pub burst: u32,
    /// Time allowed for clients to be told about a shutdown before the server exits.
    pub shutdown_grace: Duration,
    /// Accept Erlang distribution connections (BEAM nodes); `--no-erlang` clears it.
    pub erlang: bool,
    /// This node's incarnation, as the port mapper assigned it; Erlang peers see it in
    /// the handshake and in our pids.
    pub creation: u32,
    /// Serve the room of a cluster kept in this Redis (`redis://HOST:PORT`) instead of
    /// a room of this process alone.
    pub cluster: Option<String>,
    /// In a cluster: a node that has not renewed its lease for this long is dead to the
    /// others, who release its members. Renewed every tick.
    pub cluster_lease: Duration,
}

impl ServerConfig {
    /// A configuration with every default, for `name` and `cookie`.
    pub fn new(name: NodeName, cookie: Cookie) -> Self {
        Self {
            name,
            cookie,
            tick: Duration::from_secs(15),
            silent_ticks: 4,
            handshake_timeout: Duration::from_secs(5),
            max_clients: 10_000,
            max_handshakes: 1024,
            max_handshakes_per_address: 128,
            auth_failures: 5,
            auth_retry: Duration::from_secs(10),
            pm_rate_per_sec: 20.0,
            pm_burst: 40,
            max_text_len: limits::DEFAULT_MAX_TEXT_LEN,
            send_queue_frames: 1024,
            send_queue_bytes: 4 * 1024 * 1024,
            history_events: 10_000,
            history_bytes: 16 * 1024 * 1024,
            resume_window: Duration::from_secs(120),
            rate_per_sec: 10.0,
            burst: 20,
            shutdown_grace: Duration::from_secs(3),
            erlang: true,
            creation: 1,
            cluster: None,
            cluster_lease: Duration::from_secs(45),
        }
    }

    /// The flood limit as told to clients.
    pub fn flood_limits(&self) -> FloodLimits {
        let interval = Duration::try_from_secs_f64(1.0 / self.rate_per_sec).unwrap_or_default();
        FloodLimits {
            interval_us: u64::try_from(interval.as_micros()).unwrap_or(u64::MAX),
            burst: self.burst,
        }
    }
}
