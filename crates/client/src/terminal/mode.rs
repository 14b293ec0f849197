//! The terminal's mode (termios) as it was before the line editor started, so that it can
//! be put back if the process exits while the editor has the terminal in raw mode (for
//! example when the connection is lost with `--no-reconnect` in the middle of a line).
//!
//! rustyline restores the mode itself whenever `readline` returns; this is only for the
//! exit that does not wait for it.

use std::io::{self, Write};

/// Turns off bracketed paste (which the editor turns on), then clears the current line.
const LEAVE_EDITOR_LINE: &str = "\x1b[?2004l\r\x1b[K";

/// Standard input's terminal mode, saved.
#[derive(Clone, Copy)]
pub(crate) struct SavedMode(libc::termios);

impl SavedMode {
    /// Saves standard input's mode; `None` if it is not a terminal.
    pub(crate) fn save() -> Option<Self> {
        // SAFETY: `termios` is a plain C struct for which all-zero bytes are valid;
        // `tcgetattr` only writes into it and reports failure by its return value.
        unsafe {
            let mut mode: libc::termios = std::mem::zeroed();
            (libc::tcgetattr(libc::STDIN_FILENO, &mut mode) == 0).then_some(Self(mode))
        }
    }

    /// Puts the saved mode back (a no-op when it is already in force).
    pub(crate) fn restore(&self) {
        // SAFETY: `self.0` was filled in by a successful `tcgetattr` and is only read.
        let rc = unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
        if rc != 0 {
            tracing::debug!(error = %io::Error::last_os_error(), "cannot restore the terminal mode");
        }
    }
}

/// Removes the editor's prompt and half-typed line from the screen, for output that
/// follows once nobody redraws them.
pub(crate) fn clear_editor_line() {
    let mut out = io::stdout().lock();
    let _ = out
        .write_all(LEAVE_EDITOR_LINE.as_bytes())
        .and_then(|()| out.flush());
}

/// Ctrl-Z in the editor: suspends the process as a shell's job control expects, from the
/// editor's own thread, and on `fg` gives the editor its terminal back.
///
/// rustyline's own suspend signals the whole process group, which any thread may take:
/// the editor thread went on, put the terminal back in raw mode and redrew before the
/// stop, so the shell saved raw mode, and after `fg` the terminal stayed in the shell's
/// mode (every key echoed twice) with nothing redrawn. Here the terminal is put in
/// `cooked` (its mode before the editor), the stop is sent to this thread alone (so it
/// is taken here, at once), and once continued the editor's raw mode is restored; the
/// caller then repaints the prompt and the half-typed line.
pub(crate) fn suspend(cooked: &SavedMode) {
    let raw = SavedMode::save();
    clear_bracketed_paste();
    cooked.restore();
    // SAFETY: `pthread_self` is always valid for the calling thread, and SIGTSTP's
    // default action stops the process; nothing here depends on memory shared with it.
    unsafe {
        libc::pthread_kill(libc::pthread_self(), libc::SIGTSTP);
    }
    // Continued (`fg`), or never stopped (an orphaned process group ignores SIGTSTP).
    if let Some(raw) = raw {
        raw.restore();
    }
}

/// Turns off bracketed paste (the editor's), for the shell that takes the terminal.
fn clear_bracketed_paste() {
    let mut out = io::stdout().lock();
    let _ = out.write_all(b"\x1b[?2004l").and_then(|()| out.flush());
}

/// The terminal's width in columns (standard output's), if it can say.
pub(crate) fn columns() -> Option<usize> {
    // SAFETY: `winsize` is a plain C struct for which all-zero bytes are valid; the
    // ioctl only writes into it and reports failure by its return value.
    let size = unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == 0).then_some(size)
    }?;
    (size.ws_col > 0).then_some(usize::from(size.ws_col))
}
