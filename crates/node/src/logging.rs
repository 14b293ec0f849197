//! Logging setup: `tracing` to standard error, filtered by `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Sends `tracing` output to standard error. `RUST_LOG` filters it; without it, only
/// events at `default_level` and above are shown (`"info"` for the server, `"warn"` for
/// the client, whose standard output belongs to the user). Colours only on a terminal,
/// and never with `NO_COLOR` set.
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // A second call (in tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        // On a write error tracing-subscriber would report it with `eprintln!`, which
        // panics when standard error is gone (a closed terminal): a client whose window
        // was closed died there instead of leaving the room.
        .log_internal_errors(false)
        .try_init();
}
