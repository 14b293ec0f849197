//! The terminal front end: a line editor (rustyline) for input, and an
//! [`Output`](crate::session::Output) that prints incoming lines above the prompt without
//! disturbing the half-typed line.
//!
//! rustyline's `readline` blocks, so the editor runs on its own thread. The REPL
//! ([`run`]) and that thread take turns:
//!
//! 1. the REPL waits until every line queued for the screen is printed, then asks the
//!    editor thread for a line;
//! 2. the editor thread shows the prompt, edits a line (meanwhile incoming lines are
//!    printed above it through the external printer), and sends back the line, or
//!    end-of-file (Ctrl-D on an empty line) or "interrupted" (Ctrl-C);
//! 3. the REPL carries the line out through [`Session::handle_line`], then goes back to 1.
//!
//! So commands run strictly in order, and the prompt comes back below a command's own
//! output. Ctrl-C abandons the line (nothing is sent) and shows a fresh, empty prompt;
//! Ctrl-D on an empty line leaves the room and ends the REPL; history lasts for the
//! session; the keys are rustyline's Emacs defaults.

mod helper;
mod mode;
mod printer;

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, mpsc as std_mpsc};
use std::thread;
use std::time::Duration;

use protocol::NodeName;
use rustyline::error::ReadlineError;
use rustyline::history::MemHistory;
use rustyline::{
    Cmd, ConditionalEventHandler, Config, EditMode, Editor, Event, EventContext, EventHandler,
    KeyEvent, RepeatCount,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

pub use printer::TerminalOutput;

use crate::render;
use crate::session::{Flow, Members, Session, SessionError};
use crate::style::Style;
use helper::{ChatHelper, MembersSlot};
use mode::SavedMode;

/// How long the REPL waits for queued output before showing the prompt anyway (only
/// reached if the editor itself holds a line back; see [`printer`]).
const FLUSH_LIMIT: Duration = Duration::from_millis(500);

/// How long exiting waits for the last lines to reach the screen.
const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Lines kept in the session's history.
const HISTORY_SIZE: usize = 1000;

/// What the editor thread hands the REPL.
#[derive(Debug)]
enum Input {
    /// A line the user entered (possibly several, pasted at once).
    Line(String),
    /// Ctrl-C: the line was abandoned.
    Interrupted,
    /// Ctrl-D on an empty line.
    Eof,
    /// The terminal could not be read.
    Failed(String),
}

/// The line editor on its thread, and the output that prints above it.
pub struct Terminal {
    output: Arc<TerminalOutput>,
    /// Asks the editor thread for one line.
    requests: std_mpsc::Sender<()>,
    /// Lines (and ends) from the editor thread.
    inputs: tokio::sync::Mutex<mpsc::UnboundedReceiver<Input>>,
    /// A line was asked for and not handed over yet (survives a cancelled [`run`]).
    pending: AtomicBool,
    /// The editor thread is inside `readline` (the terminal is in raw mode).
    reading: Arc<AtomicBool>,
    /// Whose nicks Tab completes.
    members: MembersSlot,
    /// The terminal mode to put back on exit.
    saved_mode: Option<SavedMode>,
}

impl Terminal {
    /// Sets up the editor for prompt `<own>> ` and starts its thread and the printer
    /// thread. Fails where rustyline cannot edit (not a terminal, `TERM=dumb`...): the
    /// caller then uses the plain reader.
    pub fn start(own: &NodeName, style: Style) -> Result<Self, ReadlineError> {
        let config = Config::builder()
            .edit_mode(EditMode::Emacs)
            .auto_add_history(false)
            .max_history_size(HISTORY_SIZE)?
            .build();
        let mut editor: Editor<ChatHelper, MemHistory> = Editor::with_config(config)?;
        let members = MembersSlot::default();
        editor.set_helper(Some(ChatHelper::new(Arc::clone(&members))));
        let printer = editor.create_external_printer()?;
        let saved_mode = SavedMode::save();
        if let Some(cooked) = saved_mode {
            editor.bind_sequence(
                KeyEvent::ctrl('Z'),
                EventHandler::Conditional(Box::new(Suspend(cooked))),
            );
        }
        let output = Arc::new(TerminalOutput::start(printer, style)?);

        let (requests, requested) = std_mpsc::channel();
        let (entered, inputs) = mpsc::unbounded_channel();
        let reading = Arc::new(AtomicBool::new(false));
        let editing = EditorThread {
            editor,
            style,
            prompt: render::prompt(&own.to_string()),
            reading: Arc::clone(&reading),
        };
        thread::Builder::new()
            .name("chat-editor".into())
            .spawn(move || editing.run(&requested, &entered))?;
        Ok(Self {
            output,
            requests,
            inputs: tokio::sync::Mutex::new(inputs),
            pending: AtomicBool::new(false),
            reading,
            members,
            saved_mode,
        })
    }

    /// The output to give the session.
    pub fn output(&self) -> Arc<TerminalOutput> {
        Arc::clone(&self.output)
    }

    /// Completes nicks from `members` from now on.
    fn follow(&self, members: Members) {
        *self.members.lock().unwrap_or_else(PoisonError::into_inner) = members;
    }

    /// Asks the editor thread for a line unless one is asked for already. `false` if the
    /// thread is gone.
    fn request_line(&self) -> bool {
        if self.pending.swap(true, Ordering::SeqCst) {
            return true;
        }
        self.requests.send(()).is_ok()
    }
}

impl Drop for Terminal {
    /// Lets the last lines reach the screen and leaves the terminal as it was found.
    fn drop(&mut self) {
        if !self.output.flush_blocking(EXIT_FLUSH_LIMIT) {
            debug!("the last lines did not reach the screen in time");
        }
        if let Some(mode) = &self.saved_mode {
            mode.restore();
        }
    }
}

/// Reads lines with the editor and hands each to `session` in order, until `/quit`,
/// Ctrl-D on an empty line or an unreadable terminal; the latter two quit the session
/// (leaving the room cleanly). The same shape as [`crate::plain::run`].
///
/// If this future is dropped while the user is typing (the connection was lost and the
/// process is about to exit), the prompt is removed and later lines are printed plainly.
pub async fn run(session: &mut Session, terminal: &Terminal) -> Result<(), SessionError> {
    terminal.follow(session.members());
    terminal.output.set_direct(false);
    let mut inputs = terminal.inputs.lock().await;
    let _cancelled = CancelGuard(terminal);
    loop {
        if !terminal.output.flush(FLUSH_LIMIT).await {
            debug!("showing the prompt before all output was printed");
        }
        if !terminal.request_line() {
            break;
        }
        let Some(input) = inputs.recv().await else {
            break;
        };
        terminal.pending.store(false, Ordering::SeqCst);
        match input {
            Input::Line(text) => {
                // A paste can hold several lines: each is one line of input.
                for line in text.split('\n') {
                    if session.handle_line(line).await? == Flow::Quit {
                        return Ok(());
                    }
                }
            }
            Input::Interrupted => {}
            Input::Eof => break,
            Input::Failed(why) => {
                warn!(error = %why, "cannot read the terminal; quitting");
                break;
            }
        }
    }
    session.quit().await
}

/// On a cancelled [`run`], takes the editor's prompt off the screen.
struct CancelGuard<'t>(&'t Terminal);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        let terminal = self.0;
        if terminal.reading.load(Ordering::SeqCst) {
            // Nobody will take the line being edited: its prompt would only be in the
            // way of what is printed next.
            terminal.output.set_direct(true);
            let _ = terminal.output.flush_blocking(FLUSH_LIMIT);
            mode::clear_editor_line();
        }
    }
}

/// Ctrl-Z: suspends the process (see [`mode::suspend`]) and repaints the line on `fg`.
struct Suspend(SavedMode);

impl ConditionalEventHandler for Suspend {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, _: &EventContext<'_>) -> Option<Cmd> {
        mode::suspend(&self.0);
        Some(Cmd::Repaint)
    }
}

/// The editor, owned by its thread.
struct EditorThread {
    editor: Editor<ChatHelper, MemHistory>,
    /// How lines look: with `--timestamps`, an entered line is stamped too.
    style: Style,
    prompt: String,
    reading: Arc<AtomicBool>,
}

impl EditorThread {
    /// Reads one line per request until the REPL is gone.
    fn run(mut self, requested: &std_mpsc::Receiver<()>, entered: &mpsc::UnboundedSender<Input>) {
        while requested.recv().is_ok() {
            let input = self.read();
            if entered.send(input).is_err() {
                break;
            }
        }
    }

    fn read(&mut self) -> Input {
        self.reading.store(true, Ordering::SeqCst);
        let read = self.editor.readline(&self.prompt);
        self.reading.store(false, Ordering::SeqCst);
        match read {
            Ok(line) => {
                if self.style.timestamps {
                    stamp_entered(&self.style, &self.prompt, &line);
                }
                if !line.trim().is_empty()
                    && let Err(e) = self.editor.add_history_entry(line.as_str())
                {
                    debug!(error = %e, "cannot add to the history");
                }
                Input::Line(line)
            }
            Err(ReadlineError::Interrupted) => Input::Interrupted,
            Err(ReadlineError::Eof) => Input::Eof,
            Err(e) => Input::Failed(e.to_string()),
        }
    }
}

/// With `--timestamps`, writes the line just entered again, with the time in front, over
/// the copy the editor left (the prompt and the text; the cursor on the row below), so
/// that the user's own lines are stamped as what arrives is. Only while nothing else
/// writes: lines for the external printer wait for the next `readline`. Lines holding
/// more than printable ASCII (whose width on screen is not the count of their
/// characters) or several lines (a paste) are left as they are, as are empty ones.
fn stamp_entered(style: &Style, prompt: &str, line: &str) {
    let plain = |text: &str| text.bytes().all(|b| (0x20..0x7f).contains(&b));
    if line.trim().is_empty() || !plain(line) || !plain(prompt) {
        return;
    }
    let Some(columns) = mode::columns() else {
        return;
    };
    // The editor's layout: one row per `columns` characters, and a row of its own for
    // the cursor when the text ends exactly at a row's end.
    let rows = (prompt.len() + line.len()) / columns + 1;
    let stamped = style.decorate(
        render::LineKind::Message,
        &format!("{prompt}{line}"),
        crate::style::local_time(),
    );
    let mut out = io::stdout().lock();
    let _ = write!(out, "\x1b[{rows}A\r\x1b[J{stamped}\r\n").and_then(|()| out.flush());
}

/// Whether both standard input and standard output are terminals, the condition for
/// this front end.
pub fn is_interactive() -> bool {
    io::stdin().is_terminal() && io::stdout().is_terminal()
}
