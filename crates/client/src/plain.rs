//! The plain REPL: read whole lines, hand each to the session, print plain text.
//!
//! This is what runs when standard input is a pipe or a file (scripts, tests), or a
//! terminal the line editor ([`crate::terminal`]) cannot drive (say `TERM=dumb`, or
//! standard output redirected). Lines are handled strictly in order; at the end of input
//! the client leaves the room cleanly, as `/quit` does. On a terminal the prompt
//! `<own node>> ` is shown; when standard output is a terminal as well, an incoming line
//! first clears the prompt and then draws it again below itself. Lines are decorated by
//! a [`Style`]: timestamps with `--timestamps`, colours only when standard output is a
//! terminal (never for a pipe) and `NO_COLOR` is unset.

use std::io::{self, IsTerminal, Write};

use protocol::NodeName;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tracing::warn;

use crate::render::{self, LineKind};
use crate::session::{Flow, Output, Session, SessionError};
use crate::style::Style;

/// Clears the current terminal line: carriage return, then "erase to end of line".
const CLEAR_LINE: &str = "\r\x1b[K";

/// Standard output as a session [`Output`], with an optional prompt.
#[derive(Debug, Clone)]
pub struct PlainOutput {
    prompt: Option<String>,
    redraw: bool,
    style: Style,
}

impl PlainOutput {
    /// An output with `prompt` (if any); `redraw` clears and re-draws the prompt around
    /// every line, which only makes sense when standard output is a terminal.
    pub fn new(prompt: Option<String>, redraw: bool) -> Self {
        Self {
            prompt,
            redraw,
            style: Style::default(),
        }
    }

    /// The same output, decorating lines with `style` (colours, timestamps).
    pub fn with_style(self, style: Style) -> Self {
        Self { style, ..self }
    }

    /// The output this process should use: a prompt for `own` when standard input is a
    /// terminal, redrawn when standard output is one too.
    pub fn detect(own: &NodeName) -> Self {
        let interactive = io::stdin().is_terminal();
        let prompt = interactive.then(|| render::prompt(&own.to_string()));
        Self::new(prompt, interactive && io::stdout().is_terminal())
    }

    /// Shows the prompt, if there is one.
    pub fn show_prompt(&self) {
        if let Some(prompt) = &self.prompt {
            let mut out = io::stdout().lock();
            let clear = if self.redraw { CLEAR_LINE } else { "" };
            // Standard output going away is no reason to stop chatting; ignore errors.
            let _ = write!(out, "{clear}{prompt}").and_then(|()| out.flush());
        }
    }

    /// Ends the prompt's line (at the end of input on a terminal).
    pub fn end_prompt(&self) {
        if self.prompt.is_some() {
            print_line("");
        }
    }

    /// Writes one finished line, around the prompt if there is one to redraw.
    fn write(&self, line: &str) {
        let mut out = io::stdout().lock();
        let written = match (&self.prompt, self.redraw) {
            (Some(prompt), true) => write!(out, "{CLEAR_LINE}{line}\n{prompt}"),
            _ => writeln!(out, "{line}"),
        };
        let _ = written.and_then(|()| out.flush());
    }
}

impl Output for PlainOutput {
    fn line(&self, line: &str) {
        self.write(&self.style.local(line));
    }

    fn incoming(&self, kind: LineKind, line: &str) {
        self.write(&self.style.incoming(kind, line));
    }
}

/// Prints one line on standard output, ignoring a closed stdout (unlike `println!`,
/// which panics).
pub fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Prints one line on standard error, ignoring a standard error that is gone (unlike
/// `eprintln!`, which panics: a terminal that was closed fails every write, and the
/// client still has to leave the room cleanly after that).
pub fn eprint_line(line: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Reads lines from `input` and hands each to `session` in order, until `/quit` or the
/// end of input; at the end of input it quits the session (leaving the room cleanly).
///
/// Bytes that are not UTF-8 are replaced with U+FFFD rather than ending the session.
pub async fn run<R>(
    mut input: R,
    session: &mut Session,
    output: &PlainOutput,
) -> Result<(), SessionError>
where
    R: AsyncBufRead + Unpin,
{
    let mut buf = Vec::new();
    loop {
        output.show_prompt();
        buf.clear();
        match input.read_until(b'\n', &mut buf).await {
            Ok(0) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                if session.handle_line(&line).await? == Flow::Quit {
                    return Ok(());
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot read standard input; quitting");
                break;
            }
        }
    }
    output.end_prompt();
    session.quit().await
}
