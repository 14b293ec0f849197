//! Everything that shapes a running server, with the defaults the binary's flags use.

use std::time::Duration;

use protocol::{Cookie, NodeName, limits};

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
    /// Frames a connection may have queued for sending before it counts as a slow
    /// consumer and is dropped.
    pub send_queue_frames: usize,
    /// Bytes a connection may have queued for sending before it counts as a slow consumer
    /// (IRC's SendQ); with the batch being written, at most twice this is held per
    /// connection.
    pub send_queue_bytes: usize,
    /// Flood limit: messages per second allowed on average per connection.
    pub rate_per_sec: f64,
    /// Flood limit: messages allowed in a burst; this many refused in a row disconnects.
    pub burst: u32,
    /// Time allowed for clients to be told about a shutdown before the server exits.
    pub shutdown_grace: Duration,
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
            rate_per_sec: 10.0,
            burst: 20,
            shutdown_grace: Duration::from_secs(3),
        }
    }
}
