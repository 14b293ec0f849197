//! Erlang distribution, so BEAM nodes and our programs can talk: the term format, the
//! version 6 handshake, frames and control messages, and ExMessenger's own terms. Like the
//! rest of this crate it does no I/O; `chat-server` and `chat-client` drive it.
//!
//! - [`term`]: the External Term Format subset, decoded under hard limits.
//! - [`handshake`]: the cookie challenge handshake (MD5), acceptor and initiator.
//! - [`dist`]: frames after the handshake (ticks, pass-through messages, SEND/REG_SEND).
//! - [`exmessenger`]: the original ExMessenger's calls, casts and replies.

pub mod dist;
pub mod exmessenger;
pub mod handshake;
pub mod term;

/// The bytes our own chat-servers put in the port mapper's Extra field, so a client can
/// tell one from an Erlang node serving ExMessenger (whose Extra is empty).
pub const EPMD_EXTRA_MARKER: &[u8] = b"exmessenger";
