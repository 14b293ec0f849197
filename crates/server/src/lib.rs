//! The ExMessenger chat server as a library: [`serve`] runs one room on a listener until
//! a shutdown future resolves. The `chat-server` binary adds the command line, the cookie,
//! the port-mapper registration and signal handling around it.
//!
//! How a message travels:
//!
//! ```text
//! socket -> admission.rs (handshake pool, failed-guess limit), connection.rs (handshake)
//!        -> inbound.rs + connection.rs (reader: open records, decode, validate, rate-limit)
//!        -> registry.rs   (the actor that owns the room; encodes each event once)
//!        -> peer.rs       (a member: its outbox.rs, a bounded queue; full = slow consumer)
//!        -> writer.rs     (drains the outbox, seals many frames per record) -> socket
//! ```

pub mod admission;
pub mod config;
pub mod connection;
pub mod inbound;
pub mod listener;
pub mod log_limit;
pub mod mapper;
pub mod outbox;
pub mod peer;
pub mod rate_limit;
pub mod registry;
pub mod writer;

pub use config::ServerConfig;
pub use listener::serve;
