//! How both binaries say that they cannot go on: one line on standard error, a sentence
//! made of what failed and why (`Could not start chat-server: cannot listen on
//! 0.0.0.0:4000: Address already in use (os error 98)`), never anyhow's `Error: ...
//! Caused by:` block and never a backtrace, whatever `RUST_BACKTRACE` says. Mistakes on
//! the command line are clap's usage errors instead (exit status 2).

use std::error::Error;
use std::io::Write;

/// The exit status of a failure that is not a usage error.
pub const FAILURE: i32 = 1;

/// The exit status of a usage error (what clap uses for a bad flag).
pub const USAGE: i32 = 2;

/// The error and its causes in one line, joined with `: `. A cause whose text the line
/// already holds is left out: many errors quote their source in their own message (an
/// I/O error's `No such file or directory (os error 2)`), and saying it twice helps
/// nobody.
pub fn sentence(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let text = next.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = next.source();
    }
    line
}

/// Prints [`sentence`] of `error` on standard error and exits with [`FAILURE`].
pub fn fail(error: &(dyn Error + 'static)) -> ! {
    let mut err = std::io::stderr().lock();
    // Nothing more can be done if standard error is gone.
    let _ = writeln!(err, "{}", sentence(error)).and_then(|()| err.flush());
    std::process::exit(FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;
    use std::io;

    /// An error that quotes its source in its message, as many do.
    #[derive(Debug)]
    struct Quoting(io::Error);

    impl fmt::Display for Quoting {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot read cookie file /x: {}", self.0)
        }
    }

    impl Error for Quoting {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    /// An error that names its cause only as its source.
    #[derive(Debug)]
    struct Context(&'static str, Box<dyn Error + 'static>);

    impl fmt::Display for Context {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Context {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(self.1.as_ref())
        }
    }

    #[test]
    fn causes_are_joined_once_each() {
        let io = io::Error::from(io::ErrorKind::NotFound);
        let os = io.to_string();
        let error = Context("Could not start chat-client", Box::new(Quoting(io)));
        let line = sentence(&error);
        assert_eq!(
            line,
            format!("Could not start chat-client: cannot read cookie file /x: {os}")
        );
        assert_eq!(line.matches(&os).count(), 1, "{line}");
    }

    #[test]
    fn a_lone_error_is_its_message() {
        let error = io::Error::other("no --nick given");
        assert_eq!(sentence(&error), "no --nick given");
    }
}
