//! The ExMessenger chat server as a library: [`serve`] runs one room on a listener until
//! a shutdown future resolves. The `chat-server` binary adds the command line, the cookie,
//! the port-mapper registration and signal handling around it.
//!
//! How a message travels:
//!
//! ```text
//! socket -> admission.rs (handshake pool, failed-guess limit), connection.rs (handshake)
//!        -> inbound.rs + connection.rs (reader: open records, decode, validate, rate-limit)
//!        -> registry.rs   (the actor that owns the room; numbers and encodes each event
//!                          once and appends it to history.rs)
//!        -> writer.rs     (each member's writer reads the history from its own cursor,
//!                          merged with its own queue, outbox.rs, into one buffer, sealed
//!                          into records, one write) -> socket
//! ```
//!
//! A BEAM node's connection goes through `erlang/` instead of `connection.rs`: its
//! nicks are members like any other, fed to the same registry.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod erlang;
pub mod history;
pub mod inbound;
pub mod linger;
pub mod listener;
pub mod log_limit;
pub mod mapper;
pub mod memory;
pub mod outbox;
pub mod peer;
pub mod rate_limit;
pub mod registry;
pub mod writer;

pub use config::ServerConfig;
pub use listener::serve;
