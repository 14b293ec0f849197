//! Command-line flags, and what they resolve to once defaults are filled in.
//!
//! ```text
//! chat-client [--server ALIVE@HOST[:PORT][,ALIVE@HOST[:PORT]...]] [--nick NICK]
//!             [--name ALIVE@HOST | --sname ALIVE] [--cookie COOKIE] [--cookie-file PATH]
//!             [--no-reconnect] [--timestamps]
//!             [--backlog N] [--erlang]
//! ```
//!
//! The server defaults to `server@<short hostname>`, the nick to `$USER`, and the client's
//! own node name to `<nick>@<short hostname>`. The cookie comes from `--cookie`,
//! `CHAT_COOKIE`, `--cookie-file` or `~/.erlang.cookie`, in that order, as resolved by
//! [`chat_node::cookie::resolve`].

use std::path::PathBuf;

use chat_node::cookie::{self, CookieError, CookieSource};
use clap::Parser;
use protocol::limits::MAX_BACKLOG;
use protocol::name::short_hostname;
use protocol::{Cookie, NodeName, NodeNameError};

use crate::connect::ServerTarget;

/// Longest `alive` part derived from a nick for the default own node name.
const MAX_DERIVED_ALIVE_LEN: usize = 64;

/// The command-line flags of `chat-client`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-client",
    version,
    about = "Join an ExMessenger chat room and talk in it.",
    after_help = crate::manual::help_footer()
)]
pub struct Args {
    /// The chat server's node name; with :PORT the port mapper is skipped. Several
    /// nodes of one cluster, comma-separated, are tried in turn, at start and after a
    /// lost connection (failover). Default: server@HOST, HOST being this machine's
    /// short host name.
    #[arg(long, value_name = "ALIVE@HOST[:PORT],...", value_delimiter = ',')]
    pub server: Option<Vec<ServerTarget>>,

    /// The nick to join the room with. Default: $USER (or $LOGNAME).
    #[arg(long)]
    pub nick: Option<String>,

    /// This client's full node name, alive@host. Default: NICK@HOST, HOST being this
    /// machine's short host name.
    #[arg(long, value_name = "ALIVE@HOST", value_parser = NodeName::parse_long, conflicts_with = "sname")]
    pub name: Option<NodeName>,

    /// This client's short node name: alive, or alive@host with no dots in host.
    #[arg(long, value_name = "ALIVE", value_parser = NodeName::parse_short)]
    pub sname: Option<NodeName>,

    /// The shared secret (visible to other local users; prefer CHAT_COOKIE or
    /// --cookie-file).
    #[arg(long)]
    pub cookie: Option<String>,

    /// A file holding the cookie. Default: ~/.erlang.cookie, created if missing.
    #[arg(long, value_name = "PATH")]
    pub cookie_file: Option<PathBuf>,

    /// Exit with status 1 when the connection to the server is lost, instead of
    /// reconnecting (with backoff, rejoining with the same nick).
    #[arg(long)]
    pub no_reconnect: bool,

    /// Prefix every line that came from the server with the local time, HH:MM.
    #[arg(long)]
    pub timestamps: bool,

    /// The server is an Erlang node serving ExMessenger (such as the original Elixir
    /// server). Needed only with --server alive@host:PORT: through the port mapper, a
    /// node that is not a chat-server is recognised by itself.
    #[arg(long)]
    pub erlang: bool,
    /// Show the room's last N messages on joining, marked "[earlier]"; 0 for none.
    #[arg(long, value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u16).range(0..=i64::from(MAX_BACKLOG)))]
    pub backlog: u16,

    /// Print the shell completion script for SHELL and exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    pub completions: Option<chat_node::docs::Shell>,

    /// Print the man page (roff) and exit.
    #[arg(long, exclusive = true)]
    pub manpage: bool,
}

/// The environment variables the client reads, gathered in one place so that
/// [`Args::resolve`] can be tested without touching the process environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$USER` (or `$LOGNAME`): the default nick.
    pub user: Option<String>,
    /// `$CHAT_COOKIE`: the cookie when `--cookie` is not given.
    pub cookie: Option<String>,
}

impl Environment {
    /// Reads the variables from this process's environment.
    pub fn from_process() -> Self {
        Self {
            user: ["USER", "LOGNAME"]
                .into_iter()
                .find_map(|var| std::env::var(var).ok().filter(|u| !u.is_empty())),
            cookie: std::env::var(cookie::COOKIE_ENV).ok(),
        }
    }
}

/// Everything the client needs to start, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to connect.
    pub server: ServerTarget,
    /// Other nodes of the same room, tried in turn when `server` cannot be reached
    /// (`--server a,b,c`).
    pub fallbacks: Vec<ServerTarget>,
    /// This client's node name, sent in the handshake.
    pub own: NodeName,
    /// The nick to join with.
    pub nick: String,
    /// The shared secret.
    pub cookie: Cookie,
    /// Where the cookie came from (for diagnostics).
    pub cookie_source: CookieSource,
    /// Whether to reconnect after losing the server.
    pub reconnect: bool,
    /// Whether to prefix lines from the server with the local time (`--timestamps`).
    pub timestamps: bool,
    /// How many of the room's last messages to show on joining (`--backlog`).
    pub backlog: u16,
}

/// Why the flags do not add up to a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No `--nick` and no `$USER` to default to.
    #[error("no --nick given and $USER is not set")]
    NoNick,
    /// The default server or own node name could not be built.
    #[error(transparent)]
    Name(#[from] NodeNameError),
    /// No usable cookie.
    #[error(transparent)]
    Cookie(#[from] CookieError),
}

impl Args {
    /// Fills in the defaults and resolves the cookie (which may create
    /// `~/.erlang.cookie`, as Erlang does).
    pub fn resolve(&self, env: &Environment) -> Result<Config, ConfigError> {
        let mut servers = self.server.clone().unwrap_or_default();
        if servers.is_empty() {
            servers.push(ServerTarget {
                name: NodeName::parse_short("server")?,
                port: None,
                erlang: false,
            });
        }
        for server in &mut servers {
            server.erlang |= self.erlang;
        }
        let server = servers.remove(0);
        let fallbacks = servers;
        let nick = self
            .nick
            .clone()
            .or_else(|| env.user.clone())
            .ok_or(ConfigError::NoNick)?;
        let own = match (&self.name, &self.sname) {
            (Some(name), _) | (None, Some(name)) => name.clone(),
            (None, None) => default_own_name(&nick)?,
        };
        let (cookie, cookie_source) = cookie::resolve(
            self.cookie.as_deref(),
            env.cookie.as_deref(),
            self.cookie_file.as_deref(),
        )?;
        Ok(Config {
            server,
            fallbacks,
            own,
            nick,
            cookie,
            cookie_source,
            reconnect: !self.no_reconnect,
            timestamps: self.timestamps,
            backlog: self.backlog,
        })
    }

    /// The warning to show when the cookie was given on the command line, where every
    /// local user can read it (in `ps`, `/proc`).
    pub fn cookie_warning(&self) -> Option<&'static str> {
        self.cookie.as_ref().map(|_| {
            "warning: a cookie given with --cookie is visible to other users of this machine; \
             prefer CHAT_COOKIE or --cookie-file"
        })
    }
}

/// The default own node name: `<nick>@<short hostname>`, with every character a node
/// name cannot have replaced by `_`.
pub fn default_own_name(nick: &str) -> Result<NodeName, NodeNameError> {
    NodeName::from_parts(&alive_from_nick(nick), &short_hostname())
}

/// Turns a nick into a valid `alive` part: letters, digits, `_` and `-` are kept, every
/// other character becomes `_`; an empty nick gives `client`.
fn alive_from_nick(nick: &str) -> String {
    let alive: String = nick
        .chars()
        .take(MAX_DERIVED_ALIVE_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if alive.is_empty() {
        "client".to_string()
    } else {
        alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("chat-client").chain(list.iter().copied()))
    }

    fn env() -> Environment {
        Environment {
            user: Some("john".into()),
            cookie: Some("env-secret".into()),
        }
    }

    #[test]
    fn defaults() {
        let config = args(&[]).unwrap().resolve(&env()).unwrap();
        assert_eq!(config.nick, "john");
        assert_eq!(config.server.name.alive(), "server");
        assert_eq!(config.server.name.host(), short_hostname());
        assert_eq!(config.server.port, None);
        assert_eq!(config.own.to_string(), format!("john@{}", short_hostname()));
        assert_eq!(config.cookie_source, CookieSource::Env);
        assert!(config.reconnect);
    }

    #[test]
    fn flags_override_defaults() {
        let a = args(&[
            "--server",
            "chat@localhost:4000",
            "--nick",
            "ann",
            "--name",
            "me@127.0.0.1",
            "--cookie",
            "x",
            "--no-reconnect",
        ])
        .unwrap();
        assert!(a.cookie_warning().is_some());
        let config = a.resolve(&env()).unwrap();
        assert_eq!(config.server.name.to_string(), "chat@localhost");
        assert_eq!(config.server.port, Some(4000));
        assert_eq!(config.nick, "ann");
        assert_eq!(config.own.to_string(), "me@127.0.0.1");
        assert_eq!(config.cookie_source, CookieSource::Flag);
        assert!(!config.reconnect);
    }

    #[test]
    fn backlog_defaults_to_ten_and_is_bounded() {
        assert_eq!(args(&[]).unwrap().resolve(&env()).unwrap().backlog, 10);
        let config = args(&["--backlog", "0"]).unwrap().resolve(&env()).unwrap();
        assert_eq!(config.backlog, 0);
        assert!(args(&["--backlog", "101"]).is_err());
        assert!(args(&["--backlog", "-1"]).is_err());
    }

    #[test]
    fn timestamps_are_off_unless_asked() {
        assert!(!args(&[]).unwrap().resolve(&env()).unwrap().timestamps);
        let config = args(&["--timestamps"]).unwrap().resolve(&env()).unwrap();
        assert!(config.timestamps);
    }

    #[test]
    fn name_and_sname_conflict() {
        assert!(args(&["--name", "a@b", "--sname", "a"]).is_err());
        let a = args(&["--sname", "me"]).unwrap();
        assert_eq!(
            a.resolve(&env()).unwrap().own.to_string(),
            format!("me@{}", short_hostname())
        );
    }

    #[test]
    fn several_servers_are_tried_in_the_order_given() {
        let config = args(&["--server", "a@h,b@h:4001,c@h"])
            .unwrap()
            .resolve(&env())
            .unwrap();
        assert_eq!(config.server.to_string(), "a@h");
        let rest: Vec<String> = config.fallbacks.iter().map(|t| t.to_string()).collect();
        assert_eq!(rest, ["b@h:4001", "c@h"]);
        assert!(args(&["--server", "a@h,,b@h"]).is_err());
    }

    #[test]
    fn bad_names_are_usage_errors() {
        assert!(args(&["--server", "no host"]).is_err());
        assert!(args(&["--server", "server@host:notaport"]).is_err());
        assert!(args(&["--name", "nohost"]).is_err());
        assert!(args(&["--sname", "a@b.c"]).is_err());
    }

    #[test]
    fn no_nick_without_user() {
        let e = Environment {
            user: None,
            cookie: Some("c".into()),
        };
        assert!(matches!(
            args(&[]).unwrap().resolve(&e),
            Err(ConfigError::NoNick)
        ));
        assert!(args(&[]).unwrap().cookie_warning().is_none());
    }

    #[test]
    fn own_name_from_odd_nicks() {
        assert_eq!(alive_from_nick("john"), "john");
        assert_eq!(alive_from_nick("Zoë.b-1"), "Zo__b-1");
        assert_eq!(alive_from_nick(""), "client");
        assert_eq!(
            alive_from_nick(&"x".repeat(300)).len(),
            MAX_DERIVED_ALIVE_LEN
        );
        assert!(default_own_name("a b@c").is_ok());
    }
}
