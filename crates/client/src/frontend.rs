//! Which front end reads the user's lines: the line editor on a terminal, the plain
//! reader otherwise.
//!
//! The line editor ([`terminal`]) is used when standard input and standard output are
//! both terminals and rustyline can drive them; anything else (a pipe, a file, a test,
//! `TERM=dumb`) gets the plain reader ([`plain`]), exactly as before. Both decorate lines
//! with the same [`Style`].

use std::io::{self, IsTerminal};
use std::sync::Arc;

use protocol::NodeName;
use tokio::io::BufReader;
use tracing::debug;

use crate::plain::{self, PlainOutput};
use crate::session::{Output, Session, SessionError};
use crate::style::Style;
use crate::terminal::{self, Terminal};

/// The chosen front end. Create it after connecting and before starting the session,
/// which prints through its [`FrontEnd::output`].
pub enum FrontEnd {
    /// Plain lines from standard input.
    Plain(Arc<PlainOutput>),
    /// The line editor.
    Terminal(Terminal),
}

impl FrontEnd {
    /// The front end for this process, prompting with the `own` node name and, with
    /// `timestamps` (`--timestamps`), prefixing server lines with the time.
    pub fn choose(own: &NodeName, timestamps: bool) -> Self {
        let style = Style::detect(timestamps);
        if terminal::is_interactive() {
            match Terminal::start(own, style) {
                Ok(terminal) => return Self::Terminal(terminal),
                Err(e) => debug!(error = %e, "no line editor; reading plain lines"),
            }
        }
        // Pipe mode (standard input not a terminal) never colours: what it prints is
        // for programs as much as for people, wherever it goes.
        let style = if io::stdin().is_terminal() {
            style
        } else {
            Style {
                colour: false,
                ..style
            }
        };
        Self::Plain(Arc::new(PlainOutput::detect(own).with_style(style)))
    }

    /// Where the session prints.
    pub fn output(&self) -> Arc<dyn Output> {
        match self {
            Self::Plain(output) => Arc::clone(output) as _,
            Self::Terminal(terminal) => terminal.output(),
        }
    }

    /// Reads lines and hands them to `session` until the user quits or input ends (see
    /// [`plain::run`] and [`terminal::run`]).
    pub async fn run(&self, session: &mut Session) -> Result<(), SessionError> {
        match self {
            Self::Plain(output) => {
                plain::run(BufReader::new(tokio::io::stdin()), session, output).await
            }
            Self::Terminal(terminal) => terminal::run(session, terminal).await,
        }
    }

    /// Ends the prompt's line when the REPL is abandoned (on SIGINT).
    pub fn end_prompt(&self) {
        match self {
            Self::Plain(output) => output.end_prompt(),
            // The editor's line is cleared when its REPL is dropped.
            Self::Terminal(_) => {}
        }
    }
}
