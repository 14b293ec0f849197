//! The running session: what happens between "Connected" and exit.
//!
//! A session is two tasks and a front end:
//!
//! - the *message handler* reads every server message, answers pings, prints everything
//!   else through an [`Output`] as it arrives, and keeps track of whether we are in the
//!   room;
//! - the *writer* drains a queue of outgoing messages into the socket, flushing once per
//!   batch;
//! - the [`Session`] front end is what the REPL drives: it turns [`Command`]s into
//!   messages, and waits for the answer to a join or a leave so that the join state it
//!   acts on is never stale.
//!
//! Replies and events share the stream but are separate variants, so the handler prints
//! both as they come and only tells the front end about the replies it waits for. The
//! front end does not know how lines are read: a plain reader and a line editor drive it
//! alike through [`Session::handle_line`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::limits::MAX_FRAME_LEN;
use protocol::{ClientMessage, EventKind, NodeName, Reply, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, warn};

use crate::command::{self, Command};
use crate::connect::{Connection, SessionStream};
use crate::render::{self, LineKind};

/// How long the front end waits for the answer to a join or a leave (and, on quit, for
/// the socket to be flushed and closed).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest message text the client sends; the rest of the frame limit is left for the
/// message's envelope. (The server's own text limit is usually much lower and is
/// reported back as a reply.)
pub const MAX_SEND_TEXT: usize = MAX_FRAME_LEN - 1024;

/// After a failed write, how long the message handler gets to read what the server sent
/// before closing (typically the reason it closed) before the write error is reported.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(2);

/// Added to four server ticks before a silent server counts as gone.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Outgoing messages queued for the writer before senders wait.
const OUTGOING_QUEUE: usize = 64;

/// Where the session's output lines go. The plain REPL prints them to standard output;
/// a line editor prints them above the line being typed.
pub trait Output: Send + Sync + 'static {
    /// Shows one complete line (without its line terminator) to the user.
    fn line(&self, line: &str);

    /// Shows a line that came from the server; `kind` lets a terminal colour it or
    /// timestamp it. By default it is shown like any other line.
    fn incoming(&self, kind: LineKind, line: &str) {
        let _ = kind;
        self.line(line);
    }
}

/// The nicks in the room as this client last heard them (from the join answer, `/users`
/// answers and join/leave events); empty while not joined. Cheap to clone, so a line
/// editor's completer can hold one.
#[derive(Debug, Clone, Default)]
pub struct Members(Arc<Mutex<BTreeSet<String>>>);

impl Members {
    /// The nicks, sorted.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // Every update is a single insert, remove or replace: a poisoned set is still whole.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn replace(&self, users: &[String]) {
        *self.lock() = users.iter().cloned().collect();
    }

    /// Follows one room event.
    fn follow(&self, event: &EventKind) {
        match event {
            EventKind::Joined { nick } => {
                self.lock().insert(nick.clone());
            }
            EventKind::Left { nick, .. } => {
                self.lock().remove(nick);
            }
            EventKind::Message { .. } | EventKind::Private { .. } | EventKind::Notice { .. } => {}
        }
    }
}

/// What the REPL should do after handling a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next line.
    Continue,
    /// The user quit and the session is closed: stop reading and exit successfully.
    Quit,
}

/// How a join attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// In the room; the banner has been printed.
    Joined,
    /// Refused for `reason` (`nick_in_use`, ...); the refusal has been printed.
    Refused(String),
    /// The server did not answer within [`CALL_TIMEOUT`].
    NoAnswer,
}

/// Why a session ended against the user's will.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection to the server broke; the text says why.
    #[error("{0}")]
    Lost(String),
}

/// Resolves when the connection is lost, with the reason. Cheap to clone, so a REPL can
/// wait on it while it reads input.
#[derive(Debug, Clone)]
pub struct LostSignal(watch::Receiver<Option<String>>);

impl LostSignal {
    /// Waits until the connection is lost and returns why.
    pub async fn wait(&mut self) -> String {
        match self.0.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the connection handler stopped".to_string(),
        }
    }
}

/// Replies the front end waits for, passed on by the handler after printing them.
#[derive(Debug)]
enum Outcome {
    Joined,
    JoinRefused(String),
    Left,
}

/// State shared by the front end and the two tasks.
struct Shared {
    /// Whether the server last told us we are in the room.
    joined: AtomicBool,
    /// Set while leaving to exit: the final `Left` prints nothing.
    quitting: AtomicBool,
    /// The first reason the connection broke, if it did.
    lost: watch::Sender<Option<String>>,
    /// Who is in the room.
    members: Members,
}

impl Shared {
    /// Records why the connection broke; the first reason wins.
    fn report_lost(&self, why: String) {
        self.lost.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(why);
                true
            } else {
                false
            }
        });
    }
}

/// A connected session: the front end the REPL drives.
pub struct Session {
    nick: String,
    output: Arc<dyn Output>,
    /// `None` once the session is closed.
    outgoing: Option<mpsc::Sender<ClientMessage>>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    shared: Arc<Shared>,
    lost: watch::Receiver<Option<String>>,
    handler: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl Session {
    /// Starts the message handler and the writer on `connection` to `server`; `nick` is
    /// what [`Session::join`] asks for. Must be called inside a tokio runtime.
    pub fn start(
        connection: Connection,
        server: &NodeName,
        nick: String,
        output: Arc<dyn Output>,
    ) -> Self {
        let (sink, stream) = connection.stream.split();
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let (outcome_tx, outcomes) = mpsc::unbounded_channel();
        let (lost_tx, lost) = watch::channel(None);
        let shared = Arc::new(Shared {
            joined: AtomicBool::new(false),
            quitting: AtomicBool::new(false),
            lost: lost_tx,
            members: Members::default(),
        });
        let writer = tokio::spawn(write_loop(sink, queue, Arc::clone(&shared)));
        let handler = Handler {
            server: server.to_string(),
            output: Arc::clone(&output),
            pongs: outgoing.downgrade(),
            outcomes: outcome_tx,
            shared: Arc::clone(&shared),
            // The server pings us every tick and gives up on a peer after four silent
            // ticks; we do the same, with some grace for a busy machine.
            idle_limit: connection.tick.map(|tick| tick * 4 + IDLE_GRACE),
        };
        let handler = tokio::spawn(handler.run(stream));
        Self {
            nick,
            output,
            outgoing: Some(outgoing),
            outcomes,
            shared,
            lost,
            handler,
            writer: Some(writer),
        }
    }

    /// A signal that resolves when the connection is lost.
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal(self.lost.clone())
    }

    /// The nicks in the room, kept up to date by the message handler.
    pub fn members(&self) -> Members {
        self.shared.members.clone()
    }

    /// Whether the server last told us we are in the room.
    pub fn is_joined(&self) -> bool {
        self.shared.joined.load(Ordering::SeqCst)
    }

    /// Parses and carries out one line of input. Malformed commands print their error
    /// and blank lines do nothing.
    pub async fn handle_line(&mut self, line: &str) -> Result<Flow, SessionError> {
        match command::parse(line) {
            Ok(None) => Ok(Flow::Continue),
            Ok(Some(command)) => self.execute(command).await,
            Err(e) => {
                self.output.line(&e.to_string());
                Ok(Flow::Continue)
            }
        }
    }

    /// Carries out one command.
    pub async fn execute(&mut self, command: Command) -> Result<Flow, SessionError> {
        match command {
            Command::Help => {
                for line in command::help() {
                    self.output.line(&line);
                }
            }
            Command::Join => {
                if self.join().await? == JoinOutcome::NoAnswer {
                    warn!("no answer to /join within {} s", CALL_TIMEOUT.as_secs());
                }
            }
            Command::Leave => self.leave().await?,
            Command::Users => self.users().await?,
            Command::Private { to, text } => self.private(to, text).await?,
            Command::Say(text) => self.say(text).await?,
            Command::Quit => {
                self.quit().await?;
                return Ok(Flow::Quit);
            }
        }
        Ok(Flow::Continue)
    }

    /// Asks to join the room and waits for the answer; the handler has printed the
    /// banner or the refusal by the time this returns.
    pub async fn join(&mut self) -> Result<JoinOutcome, SessionError> {
        self.drain_outcomes();
        let nick = self.nick.clone();
        self.send(ClientMessage::Join { nick }).await?;
        let outcome = self
            .wait_for(|o| matches!(o, Outcome::Joined | Outcome::JoinRefused(_)))
            .await?;
        Ok(match outcome {
            Some(Outcome::Joined) => JoinOutcome::Joined,
            Some(Outcome::JoinRefused(reason)) => JoinOutcome::Refused(reason),
            Some(Outcome::Left) | None => JoinOutcome::NoAnswer,
        })
    }

    /// Leaves the room, staying connected, and waits for the confirmation.
    pub async fn leave(&mut self) -> Result<(), SessionError> {
        if !self.is_joined() {
            self.output.line(&render::not_joined());
            return Ok(());
        }
        self.leave_and_wait().await
    }

    /// Says `text` to the room.
    pub async fn say(&mut self, text: String) -> Result<(), SessionError> {
        if self.check_length(&text) {
            self.send(ClientMessage::Say { text }).await?;
        }
        Ok(())
    }

    /// Says `text` to `to` alone.
    pub async fn private(&mut self, to: String, text: String) -> Result<(), SessionError> {
        if self.check_length(&text) {
            self.send(ClientMessage::Private { to, text }).await?;
        }
        Ok(())
    }

    /// Asks who is in the room; the handler prints the answer.
    pub async fn users(&mut self) -> Result<(), SessionError> {
        self.send(ClientMessage::ListUsers).await
    }

    /// Leaves the room if in it, waiting (at most [`CALL_TIMEOUT`]) for the confirmation,
    /// so that every earlier reply has been printed; then closes the connection.
    pub async fn quit(&mut self) -> Result<(), SessionError> {
        self.shared.quitting.store(true, Ordering::SeqCst);
        if self.outgoing.is_some() && self.is_joined() {
            self.leave_and_wait().await?;
        }
        // We are done reading: what the server does once we hang up is not news.
        self.handler.abort();
        // Dropping the queue's sender lets the writer flush and shut the socket down.
        self.outgoing = None;
        if let Some(writer) = self.writer.take()
            && timeout(CALL_TIMEOUT, writer).await.is_err()
        {
            debug!("the writer did not finish closing the connection in time");
        }
        Ok(())
    }

    async fn leave_and_wait(&mut self) -> Result<(), SessionError> {
        self.drain_outcomes();
        self.send(ClientMessage::Leave).await?;
        if self
            .wait_for(|o| matches!(o, Outcome::Left))
            .await?
            .is_none()
        {
            warn!(
                "no answer to leaving the room within {} s",
                CALL_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }

    /// Refuses (with a message to the user) a text too long to fit in a frame.
    fn check_length(&self, text: &str) -> bool {
        if text.len() > MAX_SEND_TEXT {
            self.output.line(&render::text_too_long(MAX_SEND_TEXT));
            false
        } else {
            true
        }
    }

    async fn send(&self, msg: ClientMessage) -> Result<(), SessionError> {
        let Some(outgoing) = &self.outgoing else {
            return Err(SessionError::Lost("the session is closed".to_string()));
        };
        match outgoing.send(msg).await {
            Ok(()) => Ok(()),
            Err(_) => Err(self.wait_lost().await),
        }
    }

    /// Forgets answers that arrived after their waiter gave up.
    fn drain_outcomes(&mut self) {
        while let Ok(stale) = self.outcomes.try_recv() {
            debug!(?stale, "discarding a late answer");
        }
    }

    /// Waits for the first outcome that `wanted` accepts. `Ok(None)` on timeout; an
    /// error when the handler has stopped because the connection is gone.
    async fn wait_for(
        &mut self,
        wanted: impl Fn(&Outcome) -> bool,
    ) -> Result<Option<Outcome>, SessionError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match timeout_at(deadline, self.outcomes.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => return Err(self.wait_lost().await),
                Ok(Some(outcome)) if wanted(&outcome) => return Ok(Some(outcome)),
                Ok(Some(other)) => debug!(?other, "ignoring an answer nobody waits for"),
            }
        }
    }

    /// The error for a connection that is gone, once the handler (or the writer) has
    /// said why.
    async fn wait_lost(&self) -> SessionError {
        let mut lost = self.lost_signal();
        let why = timeout(WRITE_FAILURE_GRACE * 2, lost.wait()).await;
        SessionError::Lost(why.unwrap_or_else(|_| "the connection closed".to_string()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.handler.abort();
    }
}

/// The message handler task's state.
struct Handler {
    server: String,
    output: Arc<dyn Output>,
    /// Weak, so the writer ends (and closes the socket) when the front end lets go.
    pongs: mpsc::WeakSender<ClientMessage>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    shared: Arc<Shared>,
    idle_limit: Option<Duration>,
}

impl Handler {
    /// Handles messages until the connection ends, then reports why. Dropping `self`
    /// afterwards wakes a front end waiting for an answer.
    async fn run(self, mut stream: SplitStream<SessionStream>) {
        let why = self.read_loop(&mut stream).await;
        debug!(why, "message handler stopped");
        self.shared.report_lost(why);
    }

    async fn read_loop(&self, stream: &mut SplitStream<SessionStream>) -> String {
        loop {
            let next = match self.idle_limit {
                Some(limit) => match timeout(limit, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return format!(
                            "timed out (nothing heard from the server for {} s)",
                            limit.as_secs_f64()
                        );
                    }
                },
                None => stream.next().await,
            };
            let msg = match next {
                None => return "the server closed the connection".to_string(),
                Some(Err(e)) => return e.to_string(),
                Some(Ok(msg)) => msg,
            };
            match msg {
                ServerMessage::Ping => self.pong(),
                ServerMessage::Pong => {}
                ServerMessage::Closing { reason } => return reason.describe().to_string(),
                ServerMessage::Event(event) => {
                    self.shared.members.follow(&event.kind);
                    let line = render::event(&self.server, &event.kind);
                    self.output.incoming(render::event_kind(&event.kind), &line);
                }
                ServerMessage::Reply(reply) => self.on_reply(reply),
            }
        }
    }

    /// Answers a tick. Never waits: if the queue is full, we are sending anyway, and
    /// that keeps the connection alive just as well.
    fn pong(&self) {
        if let Some(outgoing) = self.pongs.upgrade()
            && outgoing.try_send(ClientMessage::Pong).is_err()
        {
            debug!("outgoing queue full; skipping a pong");
        }
    }

    /// Prints a reply, updates the join state, and tells a waiting front end.
    fn on_reply(&self, reply: Reply) {
        let quitting = self.shared.quitting.load(Ordering::SeqCst);
        let kind = render::reply_kind(&reply);
        for line in render::reply(&self.server, &reply, quitting) {
            self.output.incoming(kind, &line);
        }
        match &reply {
            Reply::Joined { users } | Reply::Users { users } => self.shared.members.replace(users),
            Reply::Left => self.shared.members.replace(&[]),
            _ => {}
        }
        let outcome = match &reply {
            Reply::Joined { .. } => {
                self.shared.joined.store(true, Ordering::SeqCst);
                Outcome::Joined
            }
            Reply::Left => {
                self.shared.joined.store(false, Ordering::SeqCst);
                Outcome::Left
            }
            other => match render::join_refusal_reason(other) {
                Some(reason) => Outcome::JoinRefused(reason),
                None => return,
            },
        };
        // Nobody may be waiting (the front end gave up); that is fine.
        let _ = self.outcomes.send(outcome);
    }
}

/// The writer task: sends queued messages, flushing once per batch, until the front end
/// drops the queue; then closes the socket. A failed write is reported as the reason
/// the connection was lost only if the handler has not found a better one in time.
async fn write_loop(
    mut sink: SplitSink<SessionStream, ClientMessage>,
    mut queue: mpsc::Receiver<ClientMessage>,
    shared: Arc<Shared>,
) {
    let sent = async {
        while let Some(msg) = queue.recv().await {
            sink.feed(msg).await?;
            while let Ok(more) = queue.try_recv() {
                sink.feed(more).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, protocol::CodecError>(())
    }
    .await;
    match sent {
        Ok(()) => {
            if let Err(e) = sink.close().await {
                debug!(error = %e, "closing the connection failed");
            }
        }
        Err(e) => {
            // The server may have closed the connection on purpose and said why; that
            // reason, and everything before it, is still to be read by the handler.
            debug!(error = %e, "writing to the server failed");
            tokio::time::sleep(WRITE_FAILURE_GRACE).await;
            shared.report_lost(e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LeaveReason;

    #[test]
    fn members_follow_joins_leaves_and_user_lists() {
        let members = Members::default();
        members.replace(&["bob".into(), "ann".into()]);
        members.follow(&EventKind::Joined { nick: "cy".into() });
        members.follow(&EventKind::Left {
            nick: "bob".into(),
            reason: LeaveReason::Timeout,
        });
        members.follow(&EventKind::Message {
            from: "ann".into(),
            text: "hi".into(),
        });
        assert_eq!(members.snapshot(), ["ann", "cy"]);
        members.replace(&[]);
        assert!(members.snapshot().is_empty());
    }
}
