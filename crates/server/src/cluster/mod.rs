//! The room kept in Redis, for several `chat-server` nodes serving one room.
//!
//! This is the Redis side of the cluster backend, usable on its own: an async API over
//! a room's keys in Redis that does not know the registry. What it gives the nodes:
//!
//! - **One order** ([`Cluster::append`], [`Follower`]): one Redis Stream per room. A Lua
//!   script numbers each event (the next value of a counter, gap-free and strictly
//!   increasing) and adds it with the stream ID `SEQ-0`, trimmed to the history size,
//!   in one atomic step. Every node reads the stream in order with its own
//!   [`Follower`] and fans out to its local members; nobody else decides the order.
//! - **Epochs**: the room's epoch is set once in Redis. A Redis that restarted empty
//!   holds another epoch or none; every script and every reader checks it and reports
//!   [`ClusterError::EpochChanged`] instead of carrying on with new numbers.
//! - **Cluster-wide nicks and leases** ([`Cluster::join`], [`Cluster::reap`]): a join
//!   claims the nick's uniqueness key, creates the session and appends the join in one
//!   script, so exactly one of two racing joins wins. Sessions are held by a node under
//!   its lease; when a lease expires, one other node (holding a lock) departs the dead
//!   node's members.
//! - **Sessions for resume anywhere** ([`Cluster::resume`]): session records in Redis
//!   (the secret kept as a SHA-256 digest), taken over by any node; the old node learns
//!   from a control entry in the stream.
//! - **Members** ([`Members`]): a hash changed only with the matching presence entries,
//!   so a snapshot plus the stream after it gives every node the same list at the same
//!   position.
//! - **Faults**: every call returns a typed [`ClusterError`] saying whether it was done,
//!   not done, or may have been; connections come back with a backoff.
//!
//! Files: `config.rs` (settings), `node.rs` (node ids), `keys.rs` (the key layout),
//! `scripts.rs` (the Lua scripts), `link.rs` (a reconnecting connection), `reply.rs`
//! (reading answers), `entry.rs` (stream entries), `room.rs` ([`Cluster`]),
//! `follow.rs` ([`Follower`]), `lease.rs` (leases and reaping), `members.rs`
//! ([`Members`]), `error.rs` ([`ClusterError`]). ARCHITECTURE.md, "Cluster (Redis)",
//! has the design.

mod config;
mod entry;
mod error;
mod follow;
mod keys;
mod lease;
mod link;
mod members;
mod node;
mod reply;
mod room;
mod scripts;

pub use config::ClusterConfig;
pub use entry::{AppendKind, Control, LogBody, LogEntry, NewEvent, Origin, Presence, RoomEntry};
pub use error::{ClusterError, escape, escape_bytes};
pub use follow::{Follower, Progress};
pub use lease::{MAX_NODES, Reaped};
pub use members::Members;
pub use node::NodeId;
pub use room::{
    Appended, Cluster, Departed, Joined, MAX_MEMBERS, MAX_RANGE, Resume, Resumed, SessionRecord,
    Snapshot,
};
