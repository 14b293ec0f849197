//! Erlang-style node names: `alive@host`.
//!
//! `alive` is letters, digits, `_` and `-`; `host` is a host name or an IP address.
//! A *short* name (`--sname server`) takes this machine's short host name, as Erlang's
//! `-sname` does; a *long* name (`--name server@host.example.org`) is given whole.

use std::fmt;
use std::str::FromStr;

/// Longest node name accepted, in bytes (Erlang's atoms are at most 255 characters).
pub const MAX_NODE_NAME_LEN: usize = 255;

/// A validated node name such as `server@localhost` or `john@192.168.1.13`.
#[derive(Debug, Clone, Eq)]
pub struct NodeName {
    alive: String,
    host: String,
}

/// Why a string is not a node name; each variant names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameError {
    /// The name has no `@host` part.
    #[error("node name {0:?} has no host: expected alive@host (for example server@localhost)")]
    MissingHost(String),
    /// Nothing before the `@`.
    #[error("node name {0:?} has an empty alive part before '@'")]
    EmptyAlive(String),
    /// The alive part has a character outside letters, digits, `_` and `-`.
    #[error("node name {0:?}: the part before '@' may only contain letters, digits, '_' and '-'")]
    BadAlive(String),
    /// The host part is empty or has characters a host name cannot have.
    #[error(
        "node name {0:?}: the host after '@' must be a host name or IP address (letters, digits, '-', '.')"
    )]
    BadHost(String),
    /// A short name (`--sname`) was given a host with dots.
    #[error("short node name {0:?} must not have a dotted host; use --name for long names")]
    DottedShortHost(String),
    /// The whole name is longer than Erlang allows.
    #[error("node name is longer than {MAX_NODE_NAME_LEN} bytes")]
    TooLong,
}

impl NodeName {
    /// Parses a full `alive@host` name (Erlang's `-name`).
    pub fn parse_long(s: &str) -> Result<Self, NodeNameError> {
        if s.len() > MAX_NODE_NAME_LEN {
            return Err(NodeNameError::TooLong);
        }
        let (alive, host) = s
            .split_once('@')
            .ok_or_else(|| NodeNameError::MissingHost(s.to_string()))?;
        Self::from_parts(alive, host).map_err(|e| e.with_input(s))
    }

    /// Parses a short name (Erlang's `-sname`): `alive` alone takes this machine's short
    /// host name; `alive@host` is accepted when `host` has no dots.
    pub fn parse_short(s: &str) -> Result<Self, NodeNameError> {
        match s.split_once('@') {
            Some((_, host)) if host.contains('.') => {
                Err(NodeNameError::DottedShortHost(s.to_string()))
            }
            Some(_) => Self::parse_long(s),
            None => Self::from_parts(s, &short_hostname()).map_err(|e| e.with_input(s)),
        }
    }

    /// Builds a name from its two parts, checking both.
    pub fn from_parts(alive: &str, host: &str) -> Result<Self, NodeNameError> {
        let whole = format!("{alive}@{host}");
        if whole.len() > MAX_NODE_NAME_LEN {
            return Err(NodeNameError::TooLong);
        }
        if alive.is_empty() {
            return Err(NodeNameError::EmptyAlive(whole));
        }
        if !alive
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(NodeNameError::BadAlive(whole));
        }
        if !valid_host(host) {
            return Err(NodeNameError::BadHost(whole));
        }
        Ok(Self {
            alive: alive.to_string(),
            host: host.to_string(),
        })
    }

    /// The part before `@`: the name registered with the port mapper.
    pub fn alive(&self) -> &str {
        &self.alive
    }

    /// The part after `@`: where the node's port mapper runs.
    pub fn host(&self) -> &str {
        &self.host
    }
}

/// Host names compare without regard to ASCII case, as DNS does.
impl PartialEq for NodeName {
    fn eq(&self, other: &Self) -> bool {
        self.alive == other.alive && self.host.eq_ignore_ascii_case(&other.host)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.alive, self.host)
    }
}

impl FromStr for NodeName {
    type Err = NodeNameError;

    /// Parses a long name; use [`NodeName::parse_short`] for `--sname` values.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_long(s)
    }
}

impl NodeNameError {
    /// Reports the name as the user typed it rather than as it was expanded.
    fn with_input(self, input: &str) -> Self {
        let input = input.to_string();
        match self {
            Self::MissingHost(_) => Self::MissingHost(input),
            Self::EmptyAlive(_) => Self::EmptyAlive(input),
            Self::BadAlive(_) => Self::BadAlive(input),
            Self::BadHost(_) => Self::BadHost(input),
            Self::DottedShortHost(_) => Self::DottedShortHost(input),
            Self::TooLong => Self::TooLong,
        }
    }
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with(['.', '-'])
        && !host.ends_with('-')
        && !host.contains("..")
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// This machine's short host name (up to the first dot), as Erlang's `-sname` uses it.
/// Falls back to `localhost` when the system name is unusable as a host.
pub fn short_hostname() -> String {
    let full = gethostname::gethostname().to_string_lossy().into_owned();
    let short = full.split('.').next().unwrap_or_default();
    if valid_host(short) {
        short.to_string()
    } else {
        "localhost".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_parse() {
        let n = NodeName::parse_long("server@192.168.1.13").unwrap();
        assert_eq!(n.alive(), "server");
        assert_eq!(n.host(), "192.168.1.13");
        assert_eq!(n.to_string(), "server@192.168.1.13");
        assert!(NodeName::parse_long("a_b-1@host.example.org").is_ok());
    }

    #[test]
    fn bad_names_say_which_rule() {
        assert!(matches!(
            NodeName::parse_long("server"),
            Err(NodeNameError::MissingHost(_))
        ));
        assert!(matches!(
            NodeName::parse_long("@host"),
            Err(NodeNameError::EmptyAlive(_))
        ));
        assert!(matches!(
            NodeName::parse_long("se rver@host"),
            Err(NodeNameError::BadAlive(_))
        ));
        assert!(matches!(
            NodeName::parse_long("server@"),
            Err(NodeNameError::BadHost(_))
        ));
        assert!(matches!(
            NodeName::parse_long("server@ho st"),
            Err(NodeNameError::BadHost(_))
        ));
        assert!(matches!(
            NodeName::parse_long(&format!("a@{}", "h".repeat(300))),
            Err(NodeNameError::TooLong)
        ));
        let msg = NodeName::parse_long("se!@h").unwrap_err().to_string();
        assert!(msg.contains("letters, digits"), "{msg}");
    }

    #[test]
    fn short_names_take_this_host() {
        let n = NodeName::parse_short("server").unwrap();
        assert_eq!(n.alive(), "server");
        assert_eq!(n.host(), short_hostname());
        assert!(NodeName::parse_short("server@box").is_ok());
        assert!(matches!(
            NodeName::parse_short("server@box.example.org"),
            Err(NodeNameError::DottedShortHost(_))
        ));
    }

    #[test]
    fn hosts_compare_case_insensitively() {
        assert_eq!(
            NodeName::parse_long("s@LocalHost").unwrap(),
            NodeName::parse_long("s@localhost").unwrap()
        );
        assert_ne!(
            NodeName::parse_long("S@localhost").unwrap(),
            NodeName::parse_long("s@localhost").unwrap()
        );
    }
}
