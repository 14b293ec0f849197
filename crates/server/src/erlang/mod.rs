//! Erlang distribution: BEAM nodes join the room as hidden-node peers.
//!
//! A connection whose first bytes are a distribution `send_name` is handed here by
//! [`crate::connection`]. After the cookie handshake, the node talks to our emulation of
//! ExMessenger's `message_server`; every nick it joins is a room member like any other,
//! and what happens in the room reaches it as casts to its `message_handler`.
//!
//! - [`distribution`]: the connection: handshake, reader, writer, Erlang's ticks.
//! - [`link`]: the node's queue and stop token, shared by all its nicks.
//! - [`member`]: one nick as a [`crate::peer::Peer`]; room events as BEAM frames.
//! - [`message_server`]: calls and casts turned into registry commands.

pub mod distribution;
pub mod link;
pub mod member;
pub mod message_server;

pub use distribution::run;
