//! A node's identity in the cluster: its name plus a random part, new at each start.
//!
//! A node that restarts, or lost its lease and registers again, is a new node to the
//! others: what was held under the old id is released by whoever reaps it, and nothing
//! the old incarnation wrote can be mistaken for the new one's.

use std::fmt;

/// One incarnation of a node: `NAME#RANDOM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// A new id for the node called `name`.
    pub fn new(name: &str) -> Self {
        Self(format!("{name}#{:016x}", rand::random::<u64>()))
    }

    /// An id as read from Redis.
    pub(crate) fn from_stored(id: String) -> Self {
        Self(id)
    }

    /// The id as stored in Redis.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    /// Escaped: ids read from Redis are not trusted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_debug())
    }
}
