//! ExMessenger's port mapper: how a node name becomes a TCP port.
//!
//! A chat server listens on some (usually ephemeral) port and is known by a name such as
//! `server@host`. To connect, a client asks the *port mapper* on `host` which port
//! `server` listens on. This is exactly the job of Erlang's `epmd`, and we speak its wire
//! protocol (see [`protocol::epmd`]), so the two are interchangeable: our servers
//! register with a real `epmd`, Erlang nodes register with our mapper, and
//! `epmd -names` lists whatever is registered with either.
//!
//! - [`daemon`]: the mapper itself, [`serve`]d on a listener.
//! - [`client`]: [`register`] (the registration lives as long as the returned
//!   [`Registration`]), [`lookup`], [`names`].
//! - [`launch`]: [`ensure_running`] starts a detached mapper when none answers, as `erl`
//!   does with `epmd -daemon`.
//! - [`error`]: the [`PortmapError`] type.

pub mod client;
pub mod daemon;
pub mod error;
pub mod launch;

use std::time::Duration;

pub use client::{Registration, lookup, lookup_registration, names, register, register_node};
pub use daemon::serve;
pub use error::PortmapError;
pub use launch::ensure_running;

/// The port mapper's well-known port (epmd's).
pub const DEFAULT_PORT: u16 = 4369;

/// The environment variable that overrides [`DEFAULT_PORT`], as it does for Erlang.
pub const PORT_ENV_VAR: &str = "ERL_EPMD_PORT";

/// Time limit for each network step talking to a mapper (connecting, one request and
/// its answer), and for a client to send its request to our mapper.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The mapper port to use: `ERL_EPMD_PORT` if it is set to a valid non-zero port,
/// otherwise [`DEFAULT_PORT`].
pub fn mapper_port_from_env() -> u16 {
    parse_port(std::env::var(PORT_ENV_VAR).ok().as_deref())
}

/// Interprets the value of `ERL_EPMD_PORT`.
fn parse_port(value: Option<&str>) -> u16 {
    value
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|&port| port != 0)
        .unwrap_or(DEFAULT_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_comes_from_the_environment_value_when_valid() {
        assert_eq!(parse_port(None), DEFAULT_PORT);
        assert_eq!(parse_port(Some("4370")), 4370);
        assert_eq!(parse_port(Some(" 4370\n")), 4370);
        assert_eq!(parse_port(Some("")), DEFAULT_PORT);
        assert_eq!(parse_port(Some("0")), DEFAULT_PORT);
        assert_eq!(parse_port(Some("70000")), DEFAULT_PORT);
        assert_eq!(parse_port(Some("epmd")), DEFAULT_PORT);
    }
}
