//! The ExMessenger chat server as a library: [`serve`] runs one room on a listener until
//! a shutdown future resolves. The `chat-server` binary adds the command line, the cookie,
//! the port-mapper registration and signal handling around it.
//!
//! How a message travels:
//!
//! ```text
//! socket -> connection.rs (reader: decode, validate, rate-limit)
//!        -> registry.rs   (the actor that owns the room; encodes each event once)
//!        -> peer.rs       (per-member bounded queue; full queue = slow consumer, dropped)
//!        -> writer.rs     (drains the queue, many frames per syscall) -> socket
//! ```

pub mod config;
pub mod connection;
pub mod listener;
pub mod peer;
pub mod rate_limit;
pub mod registry;
pub mod writer;

pub use config::ServerConfig;
pub use listener::serve;
