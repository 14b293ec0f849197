//! What the cluster's calls return when Redis does not do what was asked.
//!
//! Every call says whether it was carried out, was not, or may have been: the registry
//! refuses a new message with a notice when Redis is unreachable, keeps its connections,
//! and retries what may have been carried out with the same ids (which Redis
//! deduplicates). Nothing here panics on what Redis sends, and text from Redis is
//! escaped before it can reach a log.

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Why a call to the cluster failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No connection to Redis could be had (or one is being retried after a backoff):
    /// nothing was done.
    #[error("Redis is unreachable ({0}); nothing was done")]
    Unavailable(String),
    /// The connection failed or timed out after the request was sent: it may or may not
    /// have been carried out. Retrying with the same ids is safe where ids are given.
    #[error(
        "the connection to Redis failed during the request ({0}); it may or may not have been carried out"
    )]
    Indeterminate(String),
    /// Redis no longer holds this room's epoch: it restarted empty (or was flushed), and
    /// the stream, the counters and the sessions of that epoch are gone.
    #[error("Redis no longer holds room epoch {expected} (it now holds {})", found.map_or_else(|| "none".to_string(), |e| e.to_string()))]
    EpochChanged {
        /// The epoch this node was working in.
        expected: u64,
        /// The epoch Redis holds now, if any.
        found: Option<u64>,
    },
    /// This node's lease in Redis expired: the other nodes release (or have released)
    /// its members. The node must start again under a new id.
    #[error("this node's lease in Redis expired; its members are being released")]
    LeaseLost,
    /// Redis answered with an error (out of memory, read-only replica, ...): nothing was
    /// done.
    #[error("Redis refused the request: {0}")]
    Refused(String),
    /// Redis answered something this node does not understand.
    #[error("Redis answered something unexpected: {0}")]
    Malformed(String),
}

impl ClusterError {
    /// Whether waiting and trying again may help (Redis unreachable or the connection
    /// broke); the other errors need a decision.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ClusterError::Unavailable(_) | ClusterError::Indeterminate(_)
        )
    }

    /// An error for a failed request. `sent`: the request may have reached Redis.
    pub(crate) fn from_redis(error: &RedisError, sent: bool) -> Self {
        let text = escape(&error.to_string());
        match error.kind() {
            // Redis is starting (loading its data) or busy with a script: not done.
            ErrorKind::Server(ServerErrorKind::BusyLoading)
            | ErrorKind::Server(ServerErrorKind::TryAgain)
            | ErrorKind::Server(ServerErrorKind::MasterDown) => ClusterError::Unavailable(text),
            ErrorKind::Server(_) | ErrorKind::Extension => ClusterError::Refused(text),
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => ClusterError::Malformed(text),
            _ if sent => ClusterError::Indeterminate(text),
            _ => ClusterError::Unavailable(text),
        }
    }

    /// Whether the connection that produced `error` should be dropped and made again.
    pub(crate) fn breaks_connection(error: &RedisError) -> bool {
        !matches!(
            error.kind(),
            ErrorKind::Server(_) | ErrorKind::Extension | ErrorKind::UnexpectedReturnType
        )
    }
}

/// Text that came from Redis (or through it from another node), made safe for a log:
/// control characters escaped, cut to a bounded length.
pub fn escape(text: &str) -> String {
    const MAX: usize = 200;
    let mut out: String = text
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

/// Bytes from Redis made safe for a log (invalid UTF-8 replaced, then [`escape`]d).
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape(&String::from_utf8_lossy(&bytes[..bytes.len().min(800)]))
}
