//! The shared secret every node of a cluster knows: the cookie.

use std::fmt;

/// The shared secret. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct Cookie(String);

impl Cookie {
    /// Wraps a cookie; surrounding whitespace (such as a file's newline) is trimmed.
    /// Returns `None` when nothing is left.
    pub fn new(secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Self(secret.to_string()))
    }

    /// The secret's bytes, for the handshake's password input (and only that).
    pub fn secret(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_trimmed_and_redacted() {
        assert!(Cookie::new("  \n").is_none());
        let c = Cookie::new("abc\n").unwrap();
        assert_eq!(c.secret(), b"abc");
        assert!(!format!("{c:?}").contains("abc"));
    }
}
