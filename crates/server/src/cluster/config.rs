//! How a node uses the cluster's Redis: where it is, which room, and the timings.

use std::time::Duration;

use super::link::LinkTimings;

/// Settings of a node's connection to the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The Redis URL (`redis://HOST:PORT/`).
    pub url: String,
    /// The room's name: the keys' prefix is `exm:{ROOM}:`.
    pub room: String,
    /// How many entries the stream keeps (trimmed with `MAXLEN ~`, so a little more).
    pub history: usize,
    /// A node's lease: a node that has not renewed it for this long is dead to the
    /// others, who release its members. Renew it a few times per lease.
    pub lease: Duration,
    /// How long a departed session can be resumed, on any node.
    pub resume_window: Duration,
    /// Longest wait to connect to Redis.
    pub connect_timeout: Duration,
    /// Longest wait for Redis to answer a request.
    pub response_timeout: Duration,
    /// First wait after a failed connection attempt; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait between connection attempts.
    pub backoff_max: Duration,
    /// Most entries a reader takes from the stream at once.
    pub read_batch: usize,
    /// How long a reader's `XREAD` waits for new entries before it looks again.
    pub read_block: Duration,
}

impl ClusterConfig {
    /// The defaults for the Redis at `url`, room `room`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            room: "room".to_string(),
            history: 10_000,
            lease: Duration::from_secs(45),
            resume_window: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            read_batch: 512,
            read_block: Duration::from_secs(2),
        }
    }

    pub(crate) fn link_timings(&self) -> LinkTimings {
        LinkTimings {
            connect: self.connect_timeout,
            response: self.response_timeout,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
        }
    }
}
