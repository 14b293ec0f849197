//! The ExMessenger chat server as a library: [`serve`] runs one room on a listener until
//! a shutdown future resolves. The `chat-server` binary adds the command line, the cookie,
//! the port-mapper registration and signal handling around it.
//!
//! How a message travels:
//!
//! ```text
//! socket -> inbound.rs + connection.rs (reader: decode, validate, rate-limit)
//!        -> registry.rs   (the actor that owns the room; numbers and encodes each event
//!                          once and appends it to history.rs)
//!        -> writer.rs     (each member's writer reads the history from its own cursor,
//!                          merged with its own queue, outbox.rs, into one buffer per
//!                          write) -> socket
//! ```

pub mod cluster;
pub mod config;
pub mod connection;
pub mod history;
pub mod inbound;
pub mod listener;
pub mod memory;
pub mod outbox;
pub mod peer;
pub mod rate_limit;
pub mod registry;
pub mod writer;

pub use config::ServerConfig;
pub use listener::serve;
