//! Sizes and validation rules that both ends agree on.
//!
//! The server enforces these on every message; the client checks them first so the user
//! gets an error before anything is sent.

/// Largest frame payload accepted on the wire, in bytes. A length prefix above this
/// closes the connection before anything is allocated.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Longest nick, in bytes.
pub const MAX_NICK_LEN: usize = 32;

/// Default longest message text, in bytes.
pub const DEFAULT_MAX_TEXT_LEN: usize = 4 * 1024;

/// Budget of one user list (join answer or `/users`), counted as [`listed_nick_cost`];
/// the rest of a big room is only counted. Keeps those replies within half the decode
/// limit whatever the room's size (585 nicks of the longest kind fit, more of shorter).
pub const MAX_LISTED_NICK_BYTES: usize = 32 * 1024;

/// Most nicks a join answer lists; the rest are counted. Keeps a join as cheap in a room
/// of 10,000 as in a room of 10 (`/users` lists up to [`MAX_LISTED_NICK_BYTES`]).
pub const MAX_JOIN_LISTED_USERS: usize = 100;

/// Most backlog messages a join may ask for.
pub const MAX_BACKLOG: u16 = 100;

/// Most entries a decoded user list may hold: what [`MAX_LISTED_NICK_BYTES`] admits of the
/// cheapest nicks, so no list the server sends is refused.
pub const MAX_LISTED_USERS: usize = MAX_LISTED_NICK_BYTES / std::mem::size_of::<String>() + 1;

/// What one nick costs against [`MAX_LISTED_NICK_BYTES`]: its bytes plus a `String`'s
/// size, because the decoder's limit counts the memory a list will take, not only its
/// encoded bytes.
pub fn listed_nick_cost(nick: &str) -> usize {
    nick.len() + std::mem::size_of::<String>()
}

/// The nick reserved for the server itself (refused in any letter case).
pub const SERVER_NICK: &str = "server";

/// Why a nick cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NickError {
    /// The reserved nick `server`, in any case.
    #[error("the nick {0:?} is reserved")]
    NotAllowed(String),
    /// Breaks a syntax rule; the text says which.
    #[error("{0}")]
    Invalid(String),
}

/// Checks a nick: 1..=32 bytes of printable, non-space characters, not `server`.
pub fn validate_nick(nick: &str) -> Result<(), NickError> {
    if nick.is_empty() {
        return Err(NickError::Invalid("nick must not be empty".into()));
    }
    if nick.len() > MAX_NICK_LEN {
        return Err(NickError::Invalid(format!(
            "nick is longer than {MAX_NICK_LEN} bytes"
        )));
    }
    if nick.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(NickError::Invalid(
            "nick must not contain spaces or control characters".into(),
        ));
    }
    if nick.starts_with('/') {
        return Err(NickError::Invalid("nick must not start with '/'".into()));
    }
    if nick.eq_ignore_ascii_case(SERVER_NICK) {
        return Err(NickError::NotAllowed(nick.to_string()));
    }
    Ok(())
}

/// Why a message text is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Nothing to say.
    #[error("message is empty")]
    Empty,
    /// Longer than the limit.
    #[error("message is longer than {max} bytes")]
    TooLong {
        /// The limit in force.
        max: usize,
    },
    /// Contains a control character other than tab (terminal escapes, for example).
    #[error("message contains control characters")]
    ControlCharacter,
}

/// Checks a message text: non-empty, at most `max` bytes, no control characters but tab.
/// (UTF-8 validity is already guaranteed by decoding into `String`.)
pub fn validate_text(text: &str, max: usize) -> Result<(), TextError> {
    if text.is_empty() {
        return Err(TextError::Empty);
    }
    if text.len() > max {
        return Err(TextError::TooLong { max });
    }
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(TextError::ControlCharacter);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks() {
        assert!(validate_nick("john").is_ok());
        assert!(validate_nick("Zoë_42").is_ok());
        assert!(validate_nick(&"a".repeat(32)).is_ok());
        assert!(matches!(validate_nick(""), Err(NickError::Invalid(_))));
        assert!(matches!(
            validate_nick(&"a".repeat(33)),
            Err(NickError::Invalid(_))
        ));
        assert!(matches!(validate_nick("jo hn"), Err(NickError::Invalid(_))));
        assert!(matches!(
            validate_nick("jo\u{1b}hn"),
            Err(NickError::Invalid(_))
        ));
        for s in ["server", "SERVER", "Server"] {
            assert!(matches!(validate_nick(s), Err(NickError::NotAllowed(_))));
        }
    }

    #[test]
    fn texts() {
        assert!(validate_text("hello\tworld", 4096).is_ok());
        assert_eq!(validate_text("", 10), Err(TextError::Empty));
        assert_eq!(
            validate_text("abcdef", 5),
            Err(TextError::TooLong { max: 5 })
        );
        assert_eq!(
            validate_text("a\u{1b}[2J", 100),
            Err(TextError::ControlCharacter)
        );
        assert_eq!(validate_text("a\nb", 100), Err(TextError::ControlCharacter));
    }
}
