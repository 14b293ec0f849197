//! [`Proc`]: a child process owned by a test.
//!
//! Its stdout and stderr are each read by a background thread into one line channel, so
//! a test can wait for a line with a timeout and, when it fails, show everything the
//! process printed. Dropping a `Proc` kills it with SIGKILL and reaps it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

/// One of the output streams of a process, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Either: the lines of both streams in the order they were read.
    Any,
}

impl Stream {
    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::Any => 2,
        }
    }

    fn matches(self, actual: Stream) -> bool {
        self == Stream::Any || self == actual
    }

    fn label(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Any => "stdout/stderr",
        }
    }
}

/// What a reader thread reports.
enum Report {
    Line(Stream, String),
    Eof(Stream),
}

/// Unix signals a test sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Int,
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGSTOP: the process freezes, its sockets stay open.
    Stop,
    /// SIGCONT.
    Cont,
    /// SIGHUP: the terminal went away.
    Hup,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
            Signal::Hup => libc::SIGHUP,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Int => "INT",
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Hup => "HUP",
        }
    }
}

/// Sends `signal` to the process `pid`; panics if that fails.
#[track_caller]
pub fn send_signal(pid: u32, signal: Signal) {
    if let Err(e) = deliver(pid, signal) {
        panic!("cannot send SIG{} to {pid}: {e}", signal.name());
    }
}

/// Sends `signal` to the process `pid`; returns whether it was delivered.
pub fn try_signal(pid: u32, signal: Signal) -> bool {
    deliver(pid, signal).is_ok()
}

fn deliver(pid: u32, signal: Signal) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::other(format!("pid {pid} out of range")))?;
    if pid <= 0 {
        return Err(std::io::Error::other("refusing to signal a process group"));
    }
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a single positive
    // process id, never 0 or -1 (which would signal groups).
    let rc = unsafe { libc::kill(pid, signal.number()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Longest line kept whole in failure reports; longer ones are cut.
const REPORT_LINE_MAX: usize = 400;
/// Most lines shown per process in a failure report (the last ones).
const REPORT_LINES_MAX: usize = 300;

/// A running child process with captured output. Killed (SIGKILL) and reaped on drop.
pub struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    rx: Receiver<Report>,
    /// Every line read so far, in the order read.
    lines: Vec<(Stream, String)>,
    /// Per stream (stdout, stderr, any): index in `lines` where the next search starts.
    cursor: [usize; 3],
    /// Per stream (stdout, stderr): end of output seen.
    eof: [bool; 2],
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with piped stdin, stdout and stderr; `label` names it in reports.
    pub fn spawn(label: impl Into<String>, mut cmd: Command) -> Proc {
        let label = label.into();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {label} ({cmd:?}): {e}"));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        spawn_reader(&label, Stream::Stdout, stdout, tx.clone());
        spawn_reader(&label, Stream::Stderr, stderr, tx);
        let stdin = child.stdin.take();
        Proc {
            label,
            child,
            stdin,
            rx,
            lines: Vec::new(),
            cursor: [0; 3],
            eof: [false; 2],
            status: None,
        }
    }

    /// The name this process has in reports.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line on stdout containing `needle`; returns it. Lines
    /// before it are skipped (the next search starts after it).
    #[track_caller]
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect_in(Stream::Stdout, needle, timeout)
    }

    /// As [`Proc::expect_line`], on stderr.
    #[track_caller]
    pub fn expect_stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect_in(Stream::Stderr, needle, timeout)
    }

    /// As [`Proc::expect_line`], on stdout or stderr.
    #[track_caller]
    pub fn expect_output(&mut self, needle: &str, timeout: Duration) -> String {
        self.expect_in(Stream::Any, needle, timeout)
    }

    /// Waits up to `timeout` for a line of `stream` containing `needle`.
    #[track_caller]
    pub fn expect_in(&mut self, stream: Stream, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.find_from_cursor(stream, |l| l.contains(needle)) {
                self.cursor[stream.index()] = i + 1;
                return self.lines[i].1.clone();
            }
            if !self.pump_until(deadline) {
                self.fail(&format!(
                    "no line containing {needle:?} on {} within {timeout:?}",
                    stream.label()
                ));
            }
        }
    }

    /// Waits up to `timeout` for a stdout line containing `marker`, failing if a line
    /// containing `forbidden` comes first. Returns the marker line.
    ///
    /// This is how a test shows that something did *not* arrive: the marker is an answer
    /// that is necessarily ordered after the forbidden line, had it been sent.
    #[track_caller]
    pub fn expect_no_line_before(
        &mut self,
        forbidden: &str,
        marker: &str,
        timeout: Duration,
    ) -> String {
        let stream = Stream::Stdout;
        let deadline = Instant::now() + timeout;
        loop {
            let start = self.cursor[stream.index()];
            for i in start..self.lines.len() {
                let (s, line) = &self.lines[i];
                if !stream.matches(*s) {
                    continue;
                }
                if line.contains(marker) {
                    self.cursor[stream.index()] = i + 1;
                    return line.clone();
                }
                if line.contains(forbidden) {
                    let line = line.clone();
                    self.fail(&format!(
                        "got the forbidden line {line:?} (containing {forbidden:?}) \
                         before one containing {marker:?}"
                    ));
                }
            }
            self.cursor[stream.index()] = self.lines.len();
            if !self.pump_until(deadline) {
                self.fail(&format!(
                    "no line containing {marker:?} on stdout within {timeout:?}"
                ));
            }
        }
    }

    /// Watches stdout and stderr for `duration` and fails if a line containing any of
    /// `forbidden` appears (from the `Any` cursor on). This is a timed observation, not a
    /// readiness wait: use it only to show that something does not happen over a span
    /// of time.
    #[track_caller]
    pub fn expect_no_output_for(&mut self, forbidden: &[&str], duration: Duration) {
        let deadline = Instant::now() + duration;
        loop {
            let more = self.pump_until(deadline);
            let hit =
                self.find_from_cursor(Stream::Any, |l| forbidden.iter().any(|f| l.contains(f)));
            if let Some(i) = hit {
                let line = self.lines[i].1.clone();
                self.fail(&format!(
                    "got the forbidden line {line:?} (looking out for {forbidden:?})"
                ));
            }
            self.cursor[Stream::Any.index()] = self.lines.len();
            if !more && (Instant::now() >= deadline || self.eof == [true, true]) {
                return;
            }
        }
    }

    /// Without waiting: the next line of `stream` (from its cursor) containing `needle`,
    /// if one has arrived; the cursor moves past it, or past everything read if none.
    /// Each line is looked at once, however often this is called.
    pub fn poll_line(&mut self, stream: Stream, needle: &str) -> Option<String> {
        self.pump_available();
        match self.find_from_cursor(stream, |l| l.contains(needle)) {
            Some(i) => {
                self.cursor[stream.index()] = i + 1;
                Some(self.lines[i].1.clone())
            }
            None => {
                self.cursor[stream.index()] = self.lines.len();
                None
            }
        }
    }

    /// True if any line read so far, on any stream and regardless of cursors, contains
    /// `needle`. Reads what is available without waiting.
    pub fn seen(&mut self, needle: &str) -> bool {
        self.pump_available();
        self.lines.iter().any(|(_, l)| l.contains(needle))
    }

    /// Every line read so far from `stream` (reads what is available without waiting).
    pub fn lines(&mut self, stream: Stream) -> Vec<String> {
        self.pump_available();
        self.lines
            .iter()
            .filter(|(s, _)| stream.matches(*s))
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// The lines read so far from `stream` that contain `needle`: what a test counts or
    /// compares after the fact, once a later line shows that they have all arrived.
    pub fn lines_containing(&mut self, stream: Stream, needle: &str) -> Vec<String> {
        let mut lines = self.lines(stream);
        lines.retain(|l| l.contains(needle));
        lines
    }

    /// Writes `line` and a newline to stdin.
    #[track_caller]
    pub fn send_line(&mut self, line: &str) {
        let mut data = Vec::with_capacity(line.len() + 1);
        data.extend_from_slice(line.as_bytes());
        data.push(b'\n');
        self.write_stdin(&data);
    }

    /// Writes raw bytes to stdin.
    #[track_caller]
    pub fn write_stdin(&mut self, data: &[u8]) {
        let result = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(data).and_then(|()| stdin.flush()),
            None => {
                self.fail("stdin is already closed");
            }
        };
        if let Err(e) = result {
            self.fail(&format!("cannot write to stdin: {e}"));
        }
    }

    /// Closes stdin (end of input for the child).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a signal to the process.
    pub fn signal(&mut self, signal: Signal) {
        if self.status.is_none() {
            send_signal(self.pid(), signal);
        }
    }

    /// The exit status, if the process has exited (does not wait).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the process to exit and returns its status. Also reads
    /// the rest of its output (briefly: a detached grandchild may hold the pipes open).
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.try_status() {
                break status;
            }
            if Instant::now() >= deadline {
                self.fail(&format!("did not exit within {timeout:?}"));
            }
            self.pump_until((Instant::now() + Duration::from_millis(10)).min(deadline));
        };
        let drain = Instant::now() + Duration::from_secs(2);
        while !(self.eof[0] && self.eof[1]) && self.pump_until(drain) {}
        status
    }

    /// Waits for the process to exit and fails unless it exited with code 0.
    #[track_caller]
    pub fn expect_success(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        if !status.success() {
            self.fail(&format!("expected exit status 0, got {status}"));
        }
    }

    /// Waits for the process to exit and fails unless it exited with a non-zero code
    /// (a death by signal does not count: a failure must be reported, not crashed into).
    #[track_caller]
    pub fn expect_failure(&mut self, timeout: Duration) -> i32 {
        let status = self.wait_exit(timeout);
        match status.code() {
            Some(0) => self.fail("expected a non-zero exit status, got 0"),
            Some(code) => code,
            None => self.fail(&format!("expected a non-zero exit code, got {status}")),
        }
    }

    /// Fails the test with `msg` and everything this process printed so far.
    #[track_caller]
    pub fn fail(&mut self, msg: &str) -> ! {
        self.pump_available();
        let status = self.try_status();
        panic!(
            "{}: {msg}\n(exit status: {})\n{}",
            self.label,
            status.map_or_else(|| "still running".to_string(), |s| s.to_string()),
            self.transcript()
        );
    }

    /// Everything printed so far, labelled, for failure reports (long output is cut).
    pub fn transcript(&self) -> String {
        let mut out = format!("---- output of {} ----\n", self.label);
        let skip = self.lines.len().saturating_sub(REPORT_LINES_MAX);
        if skip > 0 {
            out.push_str(&format!("[... {skip} earlier lines ...]\n"));
        }
        for (stream, line) in &self.lines[skip..] {
            let tag = if *stream == Stream::Stderr {
                "err"
            } else {
                "out"
            };
            if line.len() > REPORT_LINE_MAX {
                let mut cut = REPORT_LINE_MAX;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push_str(&format!(
                    "{tag}| {}[... {} more bytes]\n",
                    &line[..cut],
                    line.len() - cut
                ));
            } else {
                out.push_str(&format!("{tag}| {line}\n"));
            }
        }
        out.push_str(&format!("---- end of {} ----", self.label));
        out
    }

    fn find_from_cursor(&self, stream: Stream, pred: impl Fn(&str) -> bool) -> Option<usize> {
        let start = self.cursor[stream.index()];
        (start..self.lines.len()).find(|&i| {
            let (s, line) = &self.lines[i];
            stream.matches(*s) && pred(line)
        })
    }

    fn record(&mut self, report: Report) {
        match report {
            Report::Line(stream, line) => self.lines.push((stream, line)),
            Report::Eof(stream) => self.eof[stream.index()] = true,
        }
    }

    /// Reads every report already available.
    fn pump_available(&mut self) {
        while let Ok(report) = self.rx.try_recv() {
            self.record(report);
        }
    }

    /// Waits for at least one report until `deadline`, then takes all available ones.
    /// Returns false if the deadline passed (or both streams ended) with nothing new.
    fn pump_until(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            self.pump_available();
            return false;
        }
        match self.rx.recv_timeout(deadline - now) {
            Ok(report) => {
                self.record(report);
                self.pump_available();
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                // Both readers are done: nothing more will come, so wait out the time
                // only for the exit status, which the callers poll themselves.
                thread::sleep((deadline - now).min(Duration::from_millis(10)));
                false
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            self.pump_available();
            eprintln!("{}", self.transcript());
        }
    }
}

fn spawn_reader(
    label: &str,
    stream: Stream,
    source: impl Read + Send + 'static,
    tx: Sender<Report>,
) {
    thread::Builder::new()
        .name(format!("{label}-{}", stream.label()))
        .spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        while matches!(buf.last(), Some(b'\n' | b'\r')) {
                            buf.pop();
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send(Report::Line(stream, line)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Report::Eof(stream));
        })
        .expect("cannot start an output reader thread");
}
