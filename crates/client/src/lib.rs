//! The ExMessenger chat client, as a library so that its parts can be tested and reused.
//!
//! Start-up goes: resolve the server's name ([`connect`]), connect and prove the cookie,
//! start the [`session`] (a task that prints everything the server sends), join the room,
//! then read lines ([`frontend`]: the line editor or plain lines) and turn each into a
//! [`command::Command`].
//!
//! - [`cli`]: command-line flags and what they resolve to.
//! - [`command`]: one input line -> one [`command::Command`].
//! - [`render`]: server messages -> the exact lines the user sees.
//! - [`connect`]: name resolution, TCP, preamble and cookie handshake.
//! - [`erlang`]: joining an Erlang node that serves ExMessenger (hidden node, adapter).
//! - [`transport`]: what a session runs on, whichever kind of server it talks to.
//! - [`session`]: the running session: what the REPL calls; it sends through a connection's
//!   message handler and writer (`link`), swapped underneath when reconnecting.
//! - [`reconnect`]: after losing the server, reconnect with backoff and rejoin.
//! - `shared`: what the session, its links and the reconnect task share (re-exported
//!   from [`session`]); `position` (where the session stands in the room's history),
//!   `sends` (says waiting for their acknowledgement) and `pacing` (the send schedule
//!   within the server's flood limit) are its parts.
//! - [`plain`]: the plain line-by-line REPL over standard input.
//! - [`terminal`]: the line-editor REPL for a terminal (rustyline, external printer).
//! - [`frontend`]: picks one of the two.
//! - [`style`]: colours and timestamps.
//!
//! Parsing, rendering and the session know nothing about how lines are read, so a line
//! editor can replace [`plain`] without touching them.

pub mod cli;
pub mod command;
pub mod connect;
pub mod erlang;
pub mod frontend;
mod link;
pub mod manual;
mod pacing;
pub mod plain;
mod position;
pub mod reconnect;
pub mod render;
mod sends;
pub mod session;
mod shared;
pub mod style;
pub mod terminal;
pub mod transport;
