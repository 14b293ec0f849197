//! How a line looks on the user's screen: colours by [`LineKind`] and the `--timestamps`
//! prefix.
//!
//! Colours are plain ANSI SGR sequences wrapped around text that is otherwise exactly the
//! uncoloured line, so stripping the escapes always gives back the contract's text. They
//! are used only when standard output is a terminal and `NO_COLOR` is not set (set to
//! anything, even empty). The timestamp is the local time `HH:MM ` in front of every line
//! that came from the server, in every front end.

use std::io::{self, IsTerminal};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::render::LineKind;

/// Resets every SGR attribute.
const RESET: &str = "\x1b[0m";

/// The SGR sequence for timestamps: faint, so the text stands out.
const TIMESTAMP_SGR: &str = "\x1b[2m";

/// How lines are decorated. `Copy`, so every output can hold its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Style {
    /// Wrap lines in SGR colour sequences.
    pub colour: bool,
    /// Prefix lines that came from the server with the local time.
    pub timestamps: bool,
}

impl Style {
    /// The style for this process: colours when standard output is a terminal and
    /// `NO_COLOR` is unset; timestamps as the `--timestamps` flag says.
    pub fn detect(timestamps: bool) -> Self {
        Self {
            colour: colour_enabled(
                io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").is_some(),
            ),
            timestamps,
        }
    }

    /// A line that came from the server, as shown now: timestamped (if asked) and coloured
    /// by `kind` (if colours are on).
    pub fn incoming(&self, kind: LineKind, line: &str) -> String {
        let time = if self.timestamps { local_time() } else { None };
        self.decorate(kind, line, time)
    }

    /// A line of the client's own (help, usage, local errors): coloured as
    /// [`LineKind::Local`], never timestamped.
    pub fn local(&self, line: &str) -> String {
        self.decorate(LineKind::Local, line, None)
    }

    /// `line` with the timestamp `time` (hour, minute) in front, if given, and coloured by
    /// `kind` if colours are on. Pure, for tests.
    pub fn decorate(&self, kind: LineKind, line: &str, time: Option<(u32, u32)>) -> String {
        let stamp = time.map(|(hour, minute)| timestamp(hour, minute));
        match (self.colour, stamp) {
            (false, None) => line.to_string(),
            (false, Some(stamp)) => format!("{stamp}{line}"),
            (true, None) => paint(kind, line),
            (true, Some(stamp)) => {
                // The space after the time stays outside the faint part.
                let time = stamp.trim_end();
                format!("{TIMESTAMP_SGR}{time}{RESET} {}", paint(kind, line))
            }
        }
    }
}

/// Whether to colour: only on a terminal, and never when `NO_COLOR` is set (whatever its
/// value, as the contract says).
pub fn colour_enabled(stdout_is_terminal: bool, no_color_set: bool) -> bool {
    stdout_is_terminal && !no_color_set
}

/// The SGR parameters for a kind of line; `None` for text in the terminal's own colours.
/// Private messages stand out most; room messages stay plain, as in an IRC client.
pub fn sgr(kind: LineKind) -> Option<&'static str> {
    match kind {
        LineKind::Message => None,
        LineKind::Private => Some("\x1b[1;35m"),
        LineKind::Presence => Some("\x1b[32m"),
        LineKind::Server => Some("\x1b[33m"),
        LineKind::Local => Some("\x1b[36m"),
    }
}

/// `text` wrapped in the colour of `kind` (and a reset), or unchanged for a kind without
/// a colour.
pub fn paint(kind: LineKind, text: &str) -> String {
    match sgr(kind) {
        Some(sgr) => format!("{sgr}{text}{RESET}"),
        None => text.to_string(),
    }
}

/// The prefix for a line received at `hour`:`minute`: `HH:MM ` (24-hour clock).
pub fn timestamp(hour: u32, minute: u32) -> String {
    format!("{hour:02}:{minute:02} ")
}

/// The local wall-clock time now, as (hour, minute); `None` if the system cannot say.
pub fn local_time() -> Option<(u32, u32)> {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let secs = libc::time_t::try_from(secs).ok()?;
    // SAFETY: `tm` is a plain C struct for which all-zero bytes are a valid value, and
    // `localtime_r` (the thread-safe variant) only reads `secs` and writes `tm`, both
    // live for the whole call. It returns null on failure, which is checked.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return None;
        }
        tm
    };
    Some((
        u32::try_from(tm.tm_hour).ok()?,
        u32::try_from(tm.tm_min).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [LineKind; 5] = [
        LineKind::Message,
        LineKind::Private,
        LineKind::Presence,
        LineKind::Server,
        LineKind::Local,
    ];

    /// Removes every `ESC [ ... m` sequence.
    fn strip_sgr(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_enabled(true, false));
        assert!(!colour_enabled(true, true));
        assert!(!colour_enabled(false, false));
        assert!(!colour_enabled(false, true));
    }

    #[test]
    fn kinds_that_matter_have_distinct_colours() {
        let colours: Vec<_> = ALL.iter().map(|&k| sgr(k)).collect();
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn colouring_keeps_the_text() {
        let line = "server@host> ann (private): psst";
        for kind in ALL {
            let painted = paint(kind, line);
            assert_eq!(strip_sgr(&painted), line, "{kind:?}");
            let style = Style {
                colour: true,
                timestamps: true,
            };
            let decorated = style.decorate(kind, line, Some((9, 5)));
            assert_eq!(strip_sgr(&decorated), format!("09:05 {line}"));
        }
        assert_eq!(
            paint(LineKind::Private, "x"),
            "\x1b[1;35mx\x1b[0m",
            "private messages are coloured"
        );
        assert_eq!(paint(LineKind::Message, "x"), "x");
    }

    #[test]
    fn no_colour_means_no_escapes() {
        let style = Style {
            colour: false,
            timestamps: false,
        };
        for kind in ALL {
            assert_eq!(style.decorate(kind, "a line", None), "a line");
        }
        assert_eq!(
            style.local("Usage: /pm <nick> <message>"),
            "Usage: /pm <nick> <message>"
        );
        assert_eq!(
            style.incoming(LineKind::Server, "s> server: x"),
            "s> server: x"
        );
    }

    #[test]
    fn timestamps_are_hours_and_minutes() {
        assert_eq!(timestamp(14, 5), "14:05 ");
        assert_eq!(timestamp(0, 0), "00:00 ");
        assert_eq!(timestamp(23, 59), "23:59 ");
        let style = Style {
            colour: false,
            timestamps: true,
        };
        assert_eq!(
            style.decorate(LineKind::Message, "server@box> ann: hi", Some((14, 5))),
            "14:05 server@box> ann: hi"
        );
        // Local lines never get one.
        assert_eq!(style.local("Usage"), "Usage");
    }

    #[test]
    fn the_clock_gives_a_valid_time() {
        let (hour, minute) = local_time().expect("the local time");
        assert!(hour < 24 && minute < 60);
        let style = Style {
            colour: false,
            timestamps: true,
        };
        let line = style.incoming(LineKind::Message, "s> a: b");
        assert_eq!(line.len(), "HH:MM s> a: b".len());
        assert_eq!(&line[2..3], ":");
    }
}
