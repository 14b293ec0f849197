//! Characters that can deceive: invisible, format and direction-changing characters, and
//! look-alikes. The rules for nicks and texts use this, and so does everything that
//! prints or logs a string that came from the network ([`escape`]).

use std::borrow::Cow;
use std::fmt::Write;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_security::GeneralSecurityProfile;
use unicode_security::general_security_profile::IdentifierType;

/// Unicode's format characters (general category Cf), Unicode 15.1.
const FORMAT: &[(char, char)] = &[
    ('\u{AD}', '\u{AD}'),
    ('\u{600}', '\u{605}'),
    ('\u{61C}', '\u{61C}'),
    ('\u{6DD}', '\u{6DD}'),
    ('\u{70F}', '\u{70F}'),
    ('\u{890}', '\u{891}'),
    ('\u{8E2}', '\u{8E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// True for a format character (Unicode category Cf: zero-width characters, bidi
/// controls, the soft hyphen, tags...).
pub fn is_format(c: char) -> bool {
    FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// True for a character that changes the direction of the text around it (the bidi
/// embeddings, overrides, isolates and marks).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{61C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// True for a character that shows nothing or changes how others show: controls,
/// format characters, line and paragraph separators, and what Unicode calls default
/// ignorable (variation selectors, Hangul fillers...).
pub fn is_invisible(c: char) -> bool {
    c.is_control()
        || is_format(c)
        || matches!(c, '\u{2028}' | '\u{2029}')
        || c.identifier_type() == Some(IdentifierType::Default_Ignorable)
}

/// `s` with every invisible character (see [`is_invisible`]) and backslash written as an
/// escape (`\u{1b}`, `\\`), so printing it can never drive a terminal or hide text.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || is_invisible(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    if c == '\\' {
        out.push_str("\\\\");
    } else if is_invisible(c) {
        let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
    } else {
        out.push(c);
    }
}

/// As [`escape`], keeping at most `max_chars` characters of `s` (then `...` and how many
/// bytes were left out): for logs, which must stay small whatever a peer sends.
pub fn escape_capped(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 2) + 8);
    for (taken, (at, c)) in s.char_indices().enumerate() {
        if taken == max_chars {
            let _ = write!(out, "...({} more bytes)", s.len() - at);
            break;
        }
        push_escaped(&mut out, c);
    }
    out
}

/// The form a nick is stored and shown in: Unicode NFC.
pub fn normalize(nick: &str) -> String {
    nick.nfc().collect()
}

/// What makes two nicks the same for uniqueness: case, accents and look-alikes do not
/// count. Decomposed, stripped of combining marks, lower-cased, then mapped to its UTS #39
/// confusable skeleton: `Ann`, `ánn` and Cyrillic `аnn` all have the key of `ann`.
pub fn nick_key(nick: &str) -> String {
    let bare: String = nick
        .nfd()
        .filter(|&c| !is_combining_mark(c))
        .flat_map(char::to_lowercase)
        .collect();
    // The skeleton maps some lower-case letters to others' look-alikes; lower-casing
    // again keeps the key case-free.
    unicode_security::skeleton(&bare)
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_drive_a_terminal_or_hide_text() {
        assert_eq!(escape("plain ☃ text"), "plain ☃ text");
        assert_eq!(escape("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(escape("zero\u{200b}width"), "zero\\u{200b}width");
        assert_eq!(escape("c1\u{9b}31m"), "c1\\u{9b}31m");
        assert_eq!(escape("back\\slash"), "back\\\\slash");
        assert_eq!(escape("line\u{2028}sep"), "line\\u{2028}sep");
    }

    #[test]
    fn capped_escapes_say_how_much_was_left_out() {
        assert_eq!(escape_capped("abc", 5), "abc");
        assert_eq!(escape_capped("abcdef", 3), "abc...(3 more bytes)");
        assert_eq!(escape_capped("\u{1b}x", 1), "\\u{1b}...(1 more bytes)");
    }

    #[test]
    fn look_alikes_share_a_key() {
        let ann = nick_key("ann");
        for disguise in ["Ann", "ANN", "a\u{301}nn", "\u{e1}nn", "\u{430}nn"] {
            assert_eq!(nick_key(disguise), ann, "{disguise:?}");
        }
        assert_ne!(nick_key("bob"), ann);
        let server = nick_key("server");
        for disguise in ["SERVER", "\u{405}erver", "serv\u{435}r", "Se\u{301}rver"] {
            assert_eq!(nick_key(disguise), server, "{disguise:?}");
        }
    }

    #[test]
    fn invisible_and_bidi_characters_are_known() {
        for c in [
            '\u{200b}', '\u{200d}', '\u{feff}', '\u{202e}', '\u{2066}', '\u{ad}', '\u{3164}',
        ] {
            assert!(is_invisible(c), "{c:?}");
        }
        assert!(is_bidi_control('\u{202e}'));
        assert!(!is_bidi_control('a'));
        for c in ['a', 'é', '☃', '中', '_'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }
}
