//! [`Pty`]: a child process running in a pseudo-terminal, read as a screen.
//!
//! The child gets the slave side of a PTY as its standard input, output and error, and
//! the PTY as its controlling terminal, with a fixed window size ([`COLS`] x [`ROWS`]), as
//! in a terminal emulator. A background thread reads everything the child writes and
//! feeds it to a [`vt100`] parser: the tests assert on the *screen* (rows of text, the
//! cursor, the colours of cells), which is what a user sees however the program chose
//! to redraw it. Rows that scroll off the top are kept (scrollback) and still count.
//!
//! The reader also answers the one query a line editor sends to its terminal, the
//! cursor position report (`ESC [ 6 n`), as a terminal emulator would.
//!
//! Waiting is always for something observable on the screen (or for the exit), with a
//! timeout; a failure shows the whole screen, the cursor and the tail of the raw output.
//! Dropping a `Pty` kills the child with SIGKILL and reaps it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::num::NonZeroU16;
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use portable_pty::{CommandBuilder, MasterPty, PtySize, native_pty_system};

use crate::process::{Signal, send_signal, try_signal};

/// Window width of every PTY.
pub const COLS: u16 = 100;
/// Window height of every PTY.
pub const ROWS: u16 = 30;
/// Rows kept after they scroll off the top.
const SCROLLBACK: usize = 5000;
/// Raw output bytes shown in a failure report (the last ones).
const RAW_TAIL: usize = 3000;

/// Keys, as a terminal sends them.
pub mod keys {
    /// Enter (a terminal sends carriage return).
    pub const ENTER: &str = "\r";
    /// Tab.
    pub const TAB: &str = "\t";
    /// Ctrl-A: start of line.
    pub const CTRL_A: &str = "\x01";
    /// Ctrl-C.
    pub const CTRL_C: &str = "\x03";
    /// Ctrl-D.
    pub const CTRL_D: &str = "\x04";
    /// Ctrl-E: end of line.
    pub const CTRL_E: &str = "\x05";
    /// Ctrl-Z: suspend (the shell's `fg` continues).
    pub const CTRL_Z: &str = "\x1a";
    /// Ctrl-U: delete to the start of the line.
    pub const CTRL_U: &str = "\x15";
    /// Ctrl-W: delete the word before the cursor.
    pub const CTRL_W: &str = "\x17";
    /// Up arrow.
    pub const UP: &str = "\x1b[A";
    /// Down arrow.
    pub const DOWN: &str = "\x1b[B";
    /// Left arrow.
    pub const LEFT: &str = "\x1b[D";
    /// Right arrow.
    pub const RIGHT: &str = "\x1b[C";
}

/// How one cell is drawn, besides its text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Style {
    /// Foreground colour: `None` for the default, else a palette index or 0xRRGGBB + 256.
    pub fg: Option<u32>,
    /// Background colour, as `fg`.
    pub bg: Option<u32>,
    /// Bold.
    pub bold: bool,
    /// Dim.
    pub dim: bool,
    /// Italic.
    pub italic: bool,
    /// Underlined.
    pub underline: bool,
    /// Inverse video.
    pub inverse: bool,
}

impl Style {
    /// True for the terminal's default look (no colour, no attribute).
    pub fn is_plain(&self) -> bool {
        *self == Style::default()
    }
}

fn colour(c: vt100::Color) -> Option<u32> {
    match c {
        vt100::Color::Default => None,
        vt100::Color::Idx(i) => Some(u32::from(i)),
        vt100::Color::Rgb(r, g, b) => {
            Some(256 + (u32::from(r) << 16) + (u32::from(g) << 8) + u32::from(b))
        }
    }
}

/// One row of the screen (or of the scrollback above it).
#[derive(Debug, Clone)]
pub struct Row {
    /// Its text, trailing blanks removed unless the row wraps into the next one (then it
    /// is the whole width).
    pub text: String,
    /// True if the text goes on in the next row (a line longer than the width): the
    /// terminal wrapped it, or it reaches the last column.
    pub wrapped: bool,
    /// The style of each non-blank cell, in column order.
    pub styles: Vec<Style>,
}

impl Row {
    /// The distinct styles of its non-blank cells.
    pub fn style_set(&self) -> BTreeSet<Style> {
        self.styles.iter().copied().collect()
    }

    /// True if some non-blank cell is not drawn in the default style.
    pub fn is_styled(&self) -> bool {
        self.styles.iter().any(|s| !s.is_plain())
    }
}

/// The whole screen at one moment: the scrollback rows, then the visible rows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Every row, oldest first: scrollback, then the `ROWS` visible rows.
    pub rows: Vec<Row>,
    /// Index in `rows` of the top visible row.
    pub top: usize,
    /// The cursor: index in `rows`, and column.
    pub cursor: (usize, u16),
    /// True once the child's side of the terminal is closed (it exited).
    pub closed: bool,
}

impl Snapshot {
    /// The text of the row the cursor is on (the line being edited).
    pub fn cursor_row(&self) -> &str {
        self.rows
            .get(self.cursor.0)
            .map_or("", |row| row.text.as_str())
    }

    /// The first row of the line being edited: the cursor's row, or an earlier one that
    /// wraps into it.
    pub fn input_start(&self) -> usize {
        let mut i = self.cursor.0.min(self.rows.len().saturating_sub(1));
        while i > 0 && self.rows[i - 1].wrapped {
            i -= 1;
        }
        i
    }

    /// The line being edited (prompt included, wrapped rows joined) and the cursor's
    /// position in it, in columns from its start.
    pub fn input_line(&self) -> (String, usize) {
        let start = self.input_start();
        let (text, _) = self.line_at(start);
        let col = (self.cursor.0 - start) * usize::from(COLS) + usize::from(self.cursor.1);
        (text, col)
    }

    /// The line that starts at row `i`: the rows from `i` joined while they wrap. Returns
    /// its text and the index of the row after it.
    pub fn line_at(&self, i: usize) -> (String, usize) {
        let mut text = String::new();
        let mut j = i;
        while j < self.rows.len() {
            text.push_str(&self.rows[j].text);
            j += 1;
            if !self.rows[j - 1].wrapped {
                break;
            }
        }
        (text, j)
    }

    /// The printed lines (above the line being edited, wrapped rows joined) from row
    /// `from` on: for each, its first row, its text, and the row after it.
    pub fn lines_above_cursor(&self, from: usize) -> Vec<(usize, String, usize)> {
        let end = self.input_start();
        let mut lines = Vec::new();
        let mut i = from;
        while i < end {
            let (text, next) = self.line_at(i);
            if next > end {
                break;
            }
            lines.push((i, text, next));
            i = next;
        }
        lines
    }

    /// The first printed line (see [`Snapshot::lines_above_cursor`]) from row `from` on
    /// for which `pred` holds: its first row, its text and the row after it.
    pub fn find_line(
        &self,
        from: usize,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(usize, String, usize)> {
        self.lines_above_cursor(from)
            .into_iter()
            .find(|(_, text, _)| pred(text))
    }

    /// How many rows (anywhere) contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.rows.iter().filter(|r| r.text.contains(needle)).count()
    }

    /// The screen as text, one numbered row per line, the cursor's row marked.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        let last = self
            .rows
            .iter()
            .rposition(|r| !r.text.is_empty())
            .unwrap_or(0)
            .max(self.cursor.0);
        for (i, row) in self.rows.iter().enumerate().take(last + 1) {
            let mark = if i == self.cursor.0 {
                '>'
            } else if i == self.top {
                '-'
            } else {
                ' '
            };
            let _ = writeln!(out, "{mark}{i:4}| {}", row.text);
        }
        let _ = write!(
            out,
            "(cursor at row {}, column {}; top visible row {}; {})",
            self.cursor.0,
            self.cursor.1,
            self.top,
            if self.closed {
                "terminal closed"
            } else {
                "terminal open"
            }
        );
        out
    }
}

/// Terminal answers the child asked for (the cursor position report).
#[derive(Default)]
struct Answers {
    pending: Vec<u8>,
}

impl vt100::Callbacks for Answers {
    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        // DSR 6: "where is the cursor?" -> ESC [ row ; col R (1-based).
        if c == 'n' && i1.is_none() && params.len() == 1 && params[0] == [6] {
            let (row, col) = screen.cursor_position();
            let answer = format!("\x1b[{};{}R", row + 1, col + 1);
            self.pending.extend_from_slice(answer.as_bytes());
        }
    }
}

struct Term {
    parser: vt100::Parser<Answers>,
    raw: Vec<u8>,
    closed: bool,
}

impl Term {
    fn snapshot(&mut self) -> Snapshot {
        let screen = self.parser.screen_mut();
        let (rows, cols) = screen.size();
        let (rows, cols) = (rows.get(), cols.get());
        screen.set_scrollback(usize::MAX);
        let back = screen.scrollback();
        let mut all = Vec::with_capacity(back + usize::from(rows));
        for offset in (1..=back).rev() {
            screen.set_scrollback(offset);
            all.push(read_row(screen, 0, cols));
        }
        screen.set_scrollback(0);
        for r in 0..rows {
            all.push(read_row(screen, r, cols));
        }
        let (crow, ccol) = screen.cursor_position();
        Snapshot {
            rows: all,
            top: back,
            cursor: (back + usize::from(crow), ccol),
            closed: self.closed,
        }
    }
}

fn read_row(screen: &vt100::Screen, row: u16, cols: u16) -> Row {
    let mut text = String::new();
    let mut styles = Vec::new();
    for col in 0..cols {
        let Some(cell) = screen.cell(row, col) else {
            break;
        };
        if cell.is_wide_continuation() {
            continue;
        }
        let contents = cell.contents();
        if contents.is_empty() {
            text.push(' ');
            continue;
        }
        text.push_str(contents);
        if !contents.trim().is_empty() {
            styles.push(Style {
                fg: colour(cell.fgcolor()),
                bg: colour(cell.bgcolor()),
                bold: cell.bold(),
                dim: cell.dim(),
                italic: cell.italic(),
                underline: cell.underline(),
                inverse: cell.inverse(),
            });
        }
    }
    // A row goes on in the next one if the terminal wrapped it, or if it is written to
    // the last column (a line editor breaks its long line itself, with CR LF, at the
    // edge). So a printed line of exactly the width counts as joined to the next one.
    let wrapped = screen.row_wrapped(row)
        || screen
            .cell(row, cols - 1)
            .is_some_and(vt100::Cell::has_contents);
    Row {
        text: if wrapped {
            text
        } else {
            text.trim_end().to_string()
        },
        wrapped,
        styles,
    }
}

struct Shared {
    term: Mutex<Term>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Term> {
        // A panicking reader thread must not hide the screen from the report.
        self.term.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The exit of a PTY child.
#[derive(Debug, Clone)]
pub struct Exit {
    /// The exit code (0 for a death by signal, see `signal`).
    pub code: u32,
    /// The signal that ended it, if one did.
    pub signal: Option<String>,
}

impl Exit {
    /// Exited normally with status 0.
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.signal {
            Some(sig) => write!(f, "killed by {sig}"),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

/// A child process in a pseudo-terminal. Killed (SIGKILL) and reaped on drop.
pub struct Pty {
    label: String,
    pid: u32,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    // Kept open for the life of the child: closing the master hangs the terminal up
    // ([`Pty::hang_up`]).
    master: Option<Box<dyn MasterPty + Send>>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Tells the reader thread to let go of its copy of the master.
    hung_up: Arc<AtomicBool>,
    shared: Arc<Shared>,
    exit: Option<Exit>,
}

impl Pty {
    /// Starts `cmd` (program, arguments, environment changes and directory are taken
    /// from it) in a new PTY of [`COLS`] x [`ROWS`]; `label` names it in reports.
    pub fn spawn(label: impl Into<String>, cmd: &Command) -> Pty {
        let label = label.into();
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap_or_else(|e| panic!("{label}: cannot open a pty: {e}"));
        let mut builder = CommandBuilder::new(cmd.get_program());
        builder.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => builder.env(key, value),
                None => builder.env_remove(key),
            }
        }
        if let Some(dir) = cmd.get_current_dir() {
            builder.cwd(dir);
        }
        let child = pair
            .slave
            .spawn_command(builder)
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}) in a pty: {e}"));
        // Only the child holds the slave side now, so its exit closes the terminal.
        drop(pair.slave);
        let pid = child
            .process_id()
            .unwrap_or_else(|| panic!("{label}: no process id"));
        // The reader's own copy of the master, which it can let go of on a hang-up.
        let master_fd = pair
            .master
            .as_raw_fd()
            .unwrap_or_else(|| panic!("{label}: the pty master has no descriptor"));
        // Close-on-exec: a copy inherited by a process started later (another client, a
        // server) would keep the master open after a hang-up.
        // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor nothing else owns (or -1, checked).
        let copy = unsafe { libc::fcntl(master_fd, libc::F_DUPFD_CLOEXEC, 0) };
        assert!(copy >= 0, "{label}: cannot duplicate the pty master");
        // SAFETY: `copy` is a fresh, open descriptor owned by this File alone.
        let reader = unsafe { std::fs::File::from_raw_fd(copy) };
        let writer =
            Arc::new(Mutex::new(pair.master.take_writer().unwrap_or_else(|e| {
                panic!("{label}: cannot write to the pty: {e}")
            })));
        let rows = NonZeroU16::new(ROWS).expect("ROWS is not zero");
        let cols = NonZeroU16::new(COLS).expect("COLS is not zero");
        let shared = Arc::new(Shared {
            term: Mutex::new(Term {
                parser: vt100::Parser::new_with_callbacks(
                    rows,
                    cols,
                    SCROLLBACK,
                    Answers::default(),
                ),
                raw: Vec::new(),
                closed: false,
            }),
            changed: Condvar::new(),
        });
        let hung_up = Arc::new(AtomicBool::new(false));
        spawn_reader(
            &label,
            reader,
            Arc::clone(&shared),
            Arc::clone(&writer),
            Arc::clone(&hung_up),
        );
        Pty {
            label,
            pid,
            child,
            master: Some(pair.master),
            writer,
            hung_up,
            shared,
            exit: None,
        }
    }

    /// The name this process has in reports.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Types `keys` (text and key sequences from [`keys`]) into the terminal.
    #[track_caller]
    pub fn keys(&mut self, keys: &str) {
        let result = {
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(keys.as_bytes()).and_then(|()| w.flush())
        };
        if let Err(e) = result {
            self.fail(&format!("cannot type {keys:?}: {e}"));
        }
    }

    /// The screen now.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.lock().snapshot()
    }

    /// Resizes the terminal to `cols` x `rows`, as a user dragging the window's corner:
    /// the emulator's screen first, then the kernel's window size, which sends the
    /// child SIGWINCH. The emulator does not reflow rows (as xterm), so what the child
    /// redraws is all there is.
    #[track_caller]
    pub fn resize(&mut self, cols: u16, rows: u16) {
        {
            let mut term = self.shared.lock();
            let (r, c) = (NonZeroU16::new(rows), NonZeroU16::new(cols));
            match (r, c) {
                (Some(r), Some(c)) => term.parser.screen_mut().set_size(r, c),
                _ => panic!("a terminal of {cols} x {rows} cannot exist"),
            }
        }
        let size = PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        };
        let resized = match &self.master {
            Some(master) => master.resize(size).map_err(|e| e.to_string()),
            None => Err("it was hung up".to_string()),
        };
        if let Err(e) = resized {
            self.fail(&format!("cannot resize the terminal: {e}"));
        }
    }

    /// Everything the child wrote so far, as raw bytes (escape sequences included).
    pub fn raw_output(&self) -> Vec<u8> {
        self.shared.lock().raw.clone()
    }

    /// Waits up to `timeout` until `check` finds what it wants on the screen, and
    /// returns that; fails with the screen, saying `what` was awaited, otherwise.
    #[track_caller]
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Snapshot) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        let deadline = start + timeout;
        let shared = Arc::clone(&self.shared);
        let mut term = shared.lock();
        loop {
            let snap = term.snapshot();
            if let Some(found) = check(&snap) {
                return found;
            }
            let now = Instant::now();
            if now >= deadline || snap.closed {
                drop(term);
                let why = if snap.closed {
                    format!(
                        "the terminal closed (the process exited) after {:?}",
                        start.elapsed()
                    )
                } else {
                    format!("timed out after {timeout:?}")
                };
                self.fail(&format!("waited for {what}: {why}"));
            }
            term = shared
                .changed
                .wait_timeout(term, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The exit, if the process has exited (does not wait).
    pub fn try_exit(&mut self) -> Option<Exit> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(Exit {
                code: status.exit_code(),
                signal: status.signal().map(str::to_string),
            });
        }
        self.exit.clone()
    }

    /// Waits up to `timeout` for the process to exit.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> Exit {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.try_exit() {
                return exit;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("did not exit within {timeout:?}"));
            }
            // No event tells a parent about a child's exit without reaping it: poll.
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit and fails unless it exited with status 0.
    #[track_caller]
    pub fn expect_success(&mut self, timeout: Duration) {
        let exit = self.wait_exit(timeout);
        if !exit.success() {
            self.fail(&format!("expected exit status 0, got {exit}"));
        }
    }

    /// Fails if the process has exited.
    #[track_caller]
    pub fn expect_running(&mut self) {
        if let Some(exit) = self.try_exit() {
            self.fail(&format!("expected it to be running, but it ended: {exit}"));
        }
    }

    /// Closes the terminal as a closed window does: every copy of the master side is
    /// closed, so the kernel hangs the terminal up (SIGHUP to its session's foreground,
    /// and every later read or write of it fails). The screen keeps what was shown.
    pub fn hang_up(&mut self) {
        self.hung_up.store(true, Ordering::SeqCst);
        self.master = None;
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = Box::new(std::io::sink());
    }

    /// Sends a signal to the process (if it is still running).
    pub fn signal(&mut self, signal: Signal) {
        if self.try_exit().is_none() {
            send_signal(self.pid, signal);
        }
    }

    /// Fails the test with `msg`, the screen and the tail of the raw output.
    #[track_caller]
    pub fn fail(&mut self, msg: &str) -> ! {
        let exit = self.try_exit();
        panic!(
            "{}: {msg}\n(status: {})\n{}",
            self.label,
            exit.map_or_else(|| "still running".to_string(), |e| e.to_string()),
            self.transcript()
        );
    }

    /// The screen and the tail of the raw output, for failure reports.
    pub fn transcript(&self) -> String {
        let (snap, raw) = {
            let mut term = self.shared.lock();
            (term.snapshot(), term.raw.clone())
        };
        let tail = &raw[raw.len().saturating_sub(RAW_TAIL)..];
        format!(
            "---- screen of {label} ({COLS}x{ROWS}) ----\n{}\n\
             ---- last {} raw bytes of {label} ----\n{}\n---- end of {label} ----",
            snap.dump(),
            tail.len(),
            escape(tail),
            label = self.label,
        )
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            try_signal(self.pid, Signal::Kill);
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

/// Shows bytes with escapes and control characters visible (`\e[0m`, `\r`).
pub fn escape(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\x1b' => out.push_str("\\e"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// The SGR sequences (`ESC [ ... m`) in `bytes`, as their parameter strings.
pub fn sgr_sequences(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == 0x1b && bytes[i + 1] == b'[' {
            let start = i + 2;
            let mut j = start;
            while j < bytes.len() && (0x30..=0x3f).contains(&bytes[j]) {
                j += 1;
            }
            while j < bytes.len() && (0x20..=0x2f).contains(&bytes[j]) {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'm' {
                found.push(String::from_utf8_lossy(&bytes[start..j]).into_owned());
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

fn spawn_reader(
    label: &str,
    mut reader: std::fs::File,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Box<dyn Write + Send>>>,
    hung_up: Arc<AtomicBool>,
) {
    thread::Builder::new()
        .name(format!("{label}-pty"))
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                // Wakes now and then to see whether the terminal is to be hung up.
                let mut wait = libc::pollfd {
                    fd: reader.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for the duration of the call.
                let ready = unsafe { libc::poll(&raw mut wait, 1, 50) };
                if hung_up.load(Ordering::SeqCst) {
                    break;
                }
                if ready == 0
                    || (ready < 0
                        && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted)
                {
                    continue;
                }
                // EIO once the child and its slave side are gone.
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let answer = {
                    let mut term = shared.lock();
                    term.raw.extend_from_slice(&buf[..n]);
                    term.parser.process(&buf[..n]);
                    std::mem::take(&mut term.parser.callbacks_mut().pending)
                };
                if !answer.is_empty() {
                    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = w.write_all(&answer).and_then(|()| w.flush());
                }
                shared.changed.notify_all();
            }
            shared.lock().closed = true;
            shared.changed.notify_all();
        })
        .expect("cannot start a pty reader thread");
}
