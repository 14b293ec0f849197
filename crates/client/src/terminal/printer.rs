//! The terminal front end's [`Output`]: every line goes, in order, to one printer thread
//! that prints it through the line editor's external printer, above the prompt and the
//! half-typed line.
//!
//! Why a thread rather than calling the printer from the session's tasks: rustyline's
//! printer hands each line to the editor through a channel of capacity one and waits
//! while the previous line has not been taken. A line that arrives just as the user
//! presses Enter can sit there until the next prompt, and the caller would wait with it:
//! a tokio worker blocked, or the REPL itself (a deadlock). The thread is the only one
//! that can wait; the session's tasks just queue.

use std::io::{self, Write};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rustyline::ExternalPrinter;
use tracing::debug;

use crate::render::LineKind;
use crate::session::Output;
use crate::style::Style;

/// Work for the printer thread, done in the order sent.
enum Job {
    /// Print this line (without its terminator).
    Line(String),
    /// Call this once every earlier line is printed.
    Flush(Box<dyn FnOnce() + Send>),
    /// `true`: write straight to standard output from now on, because no editor is
    /// left to redraw the prompt; `false`: go through the editor again.
    Direct(bool),
}

/// The session [`Output`] of the terminal front end.
pub struct TerminalOutput {
    jobs: mpsc::Sender<Job>,
    style: Style,
}

impl TerminalOutput {
    /// Starts the printer thread on `printer`; lines are decorated with `style`.
    pub(crate) fn start<P>(printer: P, style: Style) -> io::Result<Self>
    where
        P: ExternalPrinter + Send + 'static,
    {
        let (jobs, queue) = mpsc::channel();
        thread::Builder::new()
            .name("chat-printer".into())
            .spawn(move || print_loop(printer, &queue))?;
        Ok(Self { jobs, style })
    }

    /// Waits (at most `limit`) until every line queued so far is on the screen, so that
    /// the prompt is drawn below a command's output. `false` if the limit was reached.
    pub async fn flush(&self, limit: Duration) -> bool {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job = Job::Flush(Box::new(move || {
            let _ = done.send(());
        }));
        if self.jobs.send(job).is_err() {
            return true;
        }
        matches!(tokio::time::timeout(limit, wait).await, Ok(Ok(())))
    }

    /// Like [`TerminalOutput::flush`], blocking the calling thread; for the last lines
    /// before the process exits.
    pub fn flush_blocking(&self, limit: Duration) -> bool {
        let (done, wait) = mpsc::sync_channel(1);
        let job = Job::Flush(Box::new(move || {
            let _ = done.send(());
        }));
        self.jobs.send(job).is_err() || wait.recv_timeout(limit).is_ok()
    }

    /// Whether to bypass the editor (`true` once no editor redraws the prompt).
    pub(crate) fn set_direct(&self, direct: bool) {
        let _ = self.jobs.send(Job::Direct(direct));
    }

    fn print(&self, line: String) {
        if let Err(mpsc::SendError(Job::Line(line))) = self.jobs.send(Job::Line(line)) {
            // The printer thread is gone (it never exits on its own): print directly.
            write_direct(&format!("{line}\n"));
        }
    }
}

impl Output for TerminalOutput {
    fn line(&self, line: &str) {
        self.print(self.style.local(line));
    }

    fn incoming(&self, kind: LineKind, line: &str) {
        self.print(self.style.incoming(kind, line));
    }
}

/// The printer thread: prints jobs in order until every sender is gone.
fn print_loop<P: ExternalPrinter>(mut printer: P, queue: &mpsc::Receiver<Job>) {
    let mut direct = false;
    for job in queue {
        match job {
            Job::Line(mut line) => {
                line.push('\n');
                if direct {
                    write_direct(&line);
                } else if let Err(e) = printer.print(line.clone()) {
                    debug!(error = %e, "the external printer failed; printing directly");
                    write_direct(&line);
                }
            }
            Job::Flush(done) => done(),
            Job::Direct(on) => direct = on,
        }
    }
}

/// Writes to standard output, ignoring a closed one.
fn write_direct(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A printer that records what it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl ExternalPrinter for Recorder {
        fn print(&mut self, msg: String) -> rustyline::Result<()> {
            self.0.lock().unwrap().push(msg);
            Ok(())
        }
    }

    #[tokio::test]
    async fn lines_are_printed_in_order_and_decorated() {
        let recorder = Recorder::default();
        let style = Style {
            colour: true,
            timestamps: false,
        };
        let output = TerminalOutput::start(recorder.clone(), style).unwrap();
        output.incoming(LineKind::Message, "s> ann: hi");
        output.incoming(LineKind::Private, "s> ann (private): psst");
        output.line("Usage: /pm <nick> <message>");
        assert!(output.flush(Duration::from_secs(5)).await);
        assert_eq!(
            *recorder.0.lock().unwrap(),
            [
                "s> ann: hi\n".to_string(),
                "\x1b[1;35ms> ann (private): psst\x1b[0m\n".to_string(),
                "\x1b[36mUsage: /pm <nick> <message>\x1b[0m\n".to_string(),
            ]
        );
        assert!(output.flush_blocking(Duration::from_secs(5)));
    }
}
