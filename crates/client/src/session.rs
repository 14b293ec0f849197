//! The running session: what happens between "Connected" and exit.
//!
//! A session is a connection's two tasks (a *link*, in the private `link` module: the
//! message handler, which prints everything the server sends, and the writer),
//! optionally a reconnect task ([`crate::reconnect`]), and the [`Session`] front end the
//! REPL drives: it turns [`Command`]s into messages, and waits for the answer to a join
//! or a leave so that the join state it acts on is never stale.
//!
//! Says and private messages are not sent directly: each gets an id and waits in the
//! session's queue until the server acknowledges it (the `sends` module); the current
//! connection's writer sends them in order, paced within the server's flood limit. The
//! queue is bounded: when it is full, a say waits for room (the REPL stops reading), so a
//! pipe is read no faster than the room takes it. Leaving and quitting first wait,
//! bounded, for everything queued to be acknowledged; what never was is counted
//! ([`Session::undelivered`]).
//!
//! Without reconnecting ([`Session::start`]), losing the connection ends the session:
//! calls return [`SessionError::Lost`] and the [`LostSignal`] fires. With reconnecting
//! ([`Session::start_reconnecting`]), the reconnect task reports the loss through the
//! [`Output`], swaps a new connection in underneath and resumes the session there (its
//! nick, what it missed, its unacknowledged says). Meanwhile says and private messages
//! are queued and shown as pending (on a terminal the queue refuses lines when full;
//! with [`Session::set_patient`], for a pipe, it waits), other commands that need the
//! server print `Not connected to <server> (reconnecting); not sent`, and `/quit` returns
//! at once. The front end does not know how lines are read: a plain reader and a line
//! editor drive it alike through [`Session::handle_line`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use protocol::limits::MAX_FRAME_LEN;
use protocol::{ClientMessage, NodeName};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tracing::{debug, warn};

use crate::command::{self, Command};
use crate::connect::Connection;
use crate::link::{self, Context, Link, Loss, Outcome, Waited};
use crate::reconnect::{self, Redial};
use crate::render::{self, LineKind};
use crate::sends::Full;
pub use crate::sends::{QUEUE_LIMIT, Undelivered};
use crate::shared::Shared;
pub use crate::shared::{CALL_TIMEOUT, Members, Output, SessionError};

/// Longest message text the client sends; the rest of the frame limit is left for the
/// message's envelope. (The server's own text limit is usually much lower and is
/// reported back as a reply.)
pub const MAX_SEND_TEXT: usize = MAX_FRAME_LEN - 1024;

/// How long leaving or quitting waits for a reconnecting session to come back with
/// messages still queued (a patient session only): longer than the longest wait
/// between two reconnection attempts.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(20);

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
    /// A reconnecting session is not connected: the join was not sent (and that has
    /// been printed), or the connection was lost before the answer (and the reconnect
    /// task joins again once it is back).
    Disconnected,
}

/// Resolves when the session has lost its server for good, with the reason. Cheap to
/// clone, so a REPL can wait on it while it reads input.
#[derive(Debug, Clone)]
pub struct LostSignal(Ending);

/// Where the end of a session is announced.
#[derive(Debug, Clone)]
enum Ending {
    /// Without reconnecting: the one connection's loss.
    Link(watch::Receiver<Option<Loss>>),
    /// With reconnecting: the reconnect task gives up only for lasting reasons.
    Reconnecting(watch::Receiver<Option<SessionError>>),
}

impl LostSignal {
    /// Waits until the server is lost for good and returns why.
    pub async fn wait(&mut self) -> SessionError {
        let ended = match &mut self.0 {
            Ending::Link(lost) => lost.wait_for(Option::is_some).await.map(|loss| {
                SessionError::Lost(loss.as_ref().map(|l| l.why.clone()).unwrap_or_default())
            }),
            Ending::Reconnecting(ended) => ended
                .wait_for(Option::is_some)
                .await
                .map(|end| end.clone().unwrap_or(SessionError::Lost(String::new()))),
        };
        match ended {
            Ok(why) => why,
            // Closed without a reason: the session was closed on purpose. Nothing to
            // report, ever.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The reconnect task and what it hands over.
struct Reconnecting {
    /// New links, oldest first.
    links: mpsc::UnboundedReceiver<Link>,
    task: JoinHandle<()>,
}

/// A say or a private message, before it has an id.
#[derive(Debug, Clone)]
enum Outgoing {
    Say(String),
    Private { to: String, text: String },
}

impl Outgoing {
    fn into_message(self, id: u64) -> ClientMessage {
        match self {
            Self::Say(text) => ClientMessage::Say { id, text },
            Self::Private { to, text } => ClientMessage::Private { id, to, text },
        }
    }
}

/// A connected session: the front end the REPL drives.
pub struct Session {
    server: String,
    output: Arc<dyn Output>,
    shared: Arc<Shared>,
    /// The connection calls go through; `None` once closed, or while reconnecting.
    link: Option<Link>,
    /// Whether losing the connection is survived (the session was started reconnecting).
    reconnects: bool,
    /// The reconnect task; `None` without reconnecting and once quitting.
    reconnecting: Option<Reconnecting>,
    /// Where the end of the session is announced.
    ending: Ending,
    /// Wait for room in the queue (and, when leaving, for the server to come back)
    /// rather than refusing lines typed while disconnected.
    patient: bool,
}

impl Session {
    /// Starts the message handler and the writer on `connection` to `server`; `nick` is
    /// what [`Session::join`] asks for. Losing the connection ends the session. Must be
    /// called inside a tokio runtime.
    pub fn start(
        connection: Connection,
        server: &NodeName,
        nick: String,
        output: Arc<dyn Output>,
    ) -> Self {
        let context = new_context(server, nick, output);
        let (link, _watch) = link::start(connection, &context);
        let ending = Ending::Link(link.lost_receiver());
        Self::new(context, link, ending, None)
    }

    /// Like [`Session::start`], but a lost connection is reported and replaced: the
    /// session reconnects as `redial` says (to `redial.target`) and resumes (or, when the
    /// server cannot resume it, joins again with `nick`) if it was in the room. Must be
    /// called inside a tokio runtime.
    pub fn start_reconnecting(
        connection: Connection,
        nick: String,
        output: Arc<dyn Output>,
        redial: Redial,
    ) -> Self {
        let context = new_context(&redial.target.name, nick, output);
        let (link, watch) = link::start(connection, &context);
        let (links_tx, links) = mpsc::unbounded_channel();
        let (ended_tx, ended) = watch::channel(None);
        let task = tokio::spawn(reconnect::supervise(
            redial,
            context.clone(),
            watch,
            links_tx,
            ended_tx,
        ));
        let reconnecting = Reconnecting { links, task };
        Self::new(
            context,
            link,
            Ending::Reconnecting(ended),
            Some(reconnecting),
        )
    }

    fn new(
        context: Context,
        link: Link,
        ending: Ending,
        reconnecting: Option<Reconnecting>,
    ) -> Self {
        Self {
            server: context.server,
            output: context.output,
            shared: context.shared,
            link: Some(link),
            reconnects: reconnecting.is_some(),
            reconnecting,
            ending,
            patient: false,
        }
    }

    /// Asks for the last `count` messages of the room with every join (`--backlog`;
    /// 0, the default, for none). They are printed marked as earlier than the join.
    pub fn set_backlog(&self, count: u16) {
        self.shared.backlog.store(count, Ordering::SeqCst);
    }

    /// A patient session (for input from a pipe) waits for room in the queue of
    /// unacknowledged messages instead of refusing a line typed while disconnected, and
    /// when leaving waits (bounded) for a reconnecting session to come back and deliver
    /// what is queued.
    pub fn set_patient(&mut self, patient: bool) {
        self.patient = patient;
    }

    /// A signal that resolves when the server is lost for good (for a reconnecting
    /// session, only for reasons that will not go away by themselves).
    pub fn lost_signal(&self) -> LostSignal {
        LostSignal(self.ending.clone())
    }

    /// The nicks in the room, kept up to date by the message handler.
    pub fn members(&self) -> Members {
        self.shared.members.clone()
    }

    /// Whether the server last told us we are in the room.
    pub fn is_joined(&self) -> bool {
        self.shared.joined.load(Ordering::SeqCst)
    }

    /// Says and private messages that did not reach the room: refused, or never
    /// acknowledged or sent; what still waits counts as not reaching it, so this is the
    /// answer once the session has ended.
    pub fn undelivered(&self) -> Undelivered {
        self.shared.sends.report()
    }

    /// Whether the session has a connection it believes alive; false while a
    /// reconnecting session is reconnecting, and once closed.
    pub fn is_connected(&mut self) -> bool {
        self.refresh();
        self.link.as_ref().is_some_and(|link| !link.is_lost())
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

    /// Carries out one command. While a reconnecting session is down, says and private
    /// messages are queued; other commands that need the server print that they were
    /// not sent.
    pub async fn execute(&mut self, command: Command) -> Result<Flow, SessionError> {
        match command {
            Command::Help => {
                for line in command::help() {
                    self.output.line(&line);
                }
            }
            Command::Quit => {
                self.quit().await?;
                return Ok(Flow::Quit);
            }
            Command::Private { to, text } => self.private(to, text).await?,
            Command::Say(text) => self.say(text).await?,
            _ if self.reconnects && !self.is_connected() => self.not_sent(),
            Command::Join => {
                if self.join().await? == JoinOutcome::NoAnswer {
                    warn!("no answer to /join within {} s", CALL_TIMEOUT.as_secs());
                }
            }
            Command::Leave => self.leave().await?,
            Command::Users => self.users().await?,
        }
        Ok(Flow::Continue)
    }

    /// Asks to join the room and waits for the answer; the handler has printed the
    /// banner or the refusal by the time this returns.
    pub async fn join(&mut self) -> Result<JoinOutcome, SessionError> {
        self.refresh();
        if let Some(link) = &mut self.link {
            link.drain_outcomes();
        }
        if !self.send_now(self.shared.join_message()).await? {
            return Ok(JoinOutcome::Disconnected);
        }
        self.shared.wants_room.store(true, Ordering::SeqCst);
        let waited = self
            .wait_for(|o| matches!(o, Outcome::Joined | Outcome::JoinRefused(_)))
            .await?;
        Ok(match waited {
            Waited::Got(Outcome::Joined) => JoinOutcome::Joined,
            Waited::Got(Outcome::JoinRefused(reason)) => JoinOutcome::Refused(reason),
            Waited::Got(Outcome::Left) | Waited::TimedOut => JoinOutcome::NoAnswer,
            Waited::Closed => JoinOutcome::Disconnected,
        })
    }

    /// Leaves the room, staying connected, and waits for the confirmation. What was
    /// said before goes out first (waiting at most [`CALL_TIMEOUT`] without progress).
    pub async fn leave(&mut self) -> Result<(), SessionError> {
        if !self.is_joined() {
            self.output.line(&render::not_joined());
            return Ok(());
        }
        self.drain().await;
        self.leave_and_wait().await
    }

    /// Says `text` to the room (queued until acknowledged).
    pub async fn say(&mut self, text: String) -> Result<(), SessionError> {
        if self.check_length(&text) {
            self.submit(Outgoing::Say(text)).await?;
        }
        Ok(())
    }

    /// Says `text` to `to` alone (queued until acknowledged), and shows the user what
    /// went to whom (`-> ann: text`), as IRC clients do: the room never echoes it.
    pub async fn private(&mut self, to: String, text: String) -> Result<(), SessionError> {
        if self.check_length(&text) {
            let echo = render::private_sent(&to, &text);
            if self.submit(Outgoing::Private { to, text }).await? {
                self.output.incoming(LineKind::Private, &echo);
            }
        }
        Ok(())
    }

    /// Asks who is in the room; the handler prints the answer.
    pub async fn users(&mut self) -> Result<(), SessionError> {
        self.send(ClientMessage::ListUsers).await.map(drop)
    }

    /// Waits (bounded) for what was said to be acknowledged, leaves the room if in it,
    /// waiting (at most [`CALL_TIMEOUT`]) for the confirmation so that every earlier
    /// reply has been printed; then closes the connection. A reconnecting session stops
    /// reconnecting first, and returns at once when it is not connected (unless patient
    /// with messages queued). What is still queued then is counted as undelivered.
    pub async fn quit(&mut self) -> Result<(), SessionError> {
        self.drain().await;
        self.shared.quitting.store(true, Ordering::SeqCst);
        if let Some(reconnecting) = &self.reconnecting {
            reconnecting.task.abort();
        }
        // Take a link handed over just before the task stopped.
        self.refresh();
        self.reconnecting = None;
        if self.link.is_some() && self.is_joined() {
            self.leave_and_wait().await?;
        }
        if let Some(mut link) = self.link.take() {
            link.close().await;
        }
        self.shared.sends.abandon();
        Ok(())
    }

    async fn leave_and_wait(&mut self) -> Result<(), SessionError> {
        self.refresh();
        if let Some(link) = &mut self.link {
            link.drain_outcomes();
        }
        if !self.send_now(ClientMessage::Leave).await? {
            return Ok(());
        }
        self.shared.wants_room.store(false, Ordering::SeqCst);
        if let Waited::TimedOut = self.wait_for(|o| matches!(o, Outcome::Left)).await? {
            warn!(
                "no answer to leaving the room within {} s",
                CALL_TIMEOUT.as_secs()
            );
        }
        Ok(())
    }

    /// Queues a say or a private message; waits for room in the queue when it is full,
    /// unless disconnected and impatient (then the line is refused, and the user told).
    /// `true` if it was queued.
    async fn submit(&mut self, outgoing: Outgoing) -> Result<bool, SessionError> {
        let mut versions = self.shared.sends.subscribe();
        loop {
            versions.borrow_and_update();
            let connected = self.is_connected();
            if !connected && !self.reconnects {
                return Err(self.lost_for_good().await);
            }
            if !self.shared.wants_room.load(Ordering::SeqCst) {
                if connected {
                    self.output.line(&render::not_joined());
                } else {
                    self.not_sent();
                }
                return Ok(false);
            }
            let message = outgoing.clone();
            match self
                .shared
                .sends
                .push(|id| message.into_message(id), !connected)
            {
                Ok(waiting) => {
                    if !connected {
                        self.output.line(&render::pending(&self.server, waiting));
                    }
                    return Ok(true);
                }
                Err(Full) if !connected && !self.patient => {
                    self.shared.sends.refused_full();
                    self.output
                        .line(&render::queue_full(&self.server, QUEUE_LIMIT));
                    return Ok(false);
                }
                Err(Full) => {
                    debug!("the send queue is full; waiting for acknowledgements");
                    self.changed(&mut versions, None).await;
                }
            }
        }
    }

    /// Waits until everything queued has been acknowledged, giving up after
    /// [`CALL_TIMEOUT`] without progress, at once when disconnected (a patient session
    /// waits up to [`RECONNECT_PATIENCE`] for the connection to come back), and when
    /// the user is not in the room (nothing queued can go out then).
    async fn drain(&mut self) {
        let shared = Arc::clone(&self.shared);
        let sends = &shared.sends;
        let mut versions = sends.subscribe();
        let mut waiting = sends.len();
        let mut deadline = Instant::now() + CALL_TIMEOUT;
        let mut was_connected = true;
        loop {
            versions.borrow_and_update();
            let now_waiting = sends.len();
            if sends.is_empty() || !self.shared.wants_room.load(Ordering::SeqCst) {
                return;
            }
            if now_waiting < waiting {
                waiting = now_waiting;
                deadline = deadline.max(Instant::now() + CALL_TIMEOUT);
            }
            let connected = self.is_connected();
            if !connected {
                if !(self.reconnects && self.patient) {
                    return;
                }
                if was_connected {
                    deadline = deadline.max(Instant::now() + RECONNECT_PATIENCE);
                }
            }
            was_connected = connected;
            if Instant::now() >= deadline {
                debug!(waiting, "giving up waiting for acknowledgements");
                return;
            }
            self.changed(&mut versions, Some(deadline)).await;
        }
    }

    /// Waits until the queue changes, the connection is lost, or `deadline` passes.
    async fn changed(&self, versions: &mut watch::Receiver<u64>, deadline: Option<Instant>) {
        let mut lost = self.link.as_ref().map(Link::lost_receiver);
        let link_lost = async {
            match &mut lost {
                Some(lost) => {
                    let _ = lost.wait_for(Option::is_some).await;
                }
                None => std::future::pending().await,
            }
        };
        let timer = async {
            match deadline {
                Some(deadline) => sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = versions.changed() => {}
            () = link_lost => {}
            () = timer => {}
        }
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

    /// Takes the newest link the reconnect task handed over, and lets go of a link
    /// that is lost (only when reconnecting: otherwise its loss ends the session).
    fn refresh(&mut self) {
        let Some(reconnecting) = &mut self.reconnecting else {
            return;
        };
        while let Ok(link) = reconnecting.links.try_recv() {
            self.link = Some(link);
        }
        if self.link.as_ref().is_some_and(Link::is_lost) {
            self.link = None;
        }
    }

    /// Sends `msg` on the newest link; whether it was sent (see [`Session::send_now`]).
    async fn send(&mut self, msg: ClientMessage) -> Result<bool, SessionError> {
        self.refresh();
        self.send_now(msg).await
    }

    /// Sends `msg` on the current link. `Ok(false)` when a reconnecting session is not
    /// connected, which has been printed; an error when the connection is gone for good.
    async fn send_now(&mut self, msg: ClientMessage) -> Result<bool, SessionError> {
        let Some(link) = &self.link else {
            if self.reconnects && self.reconnecting.is_some() {
                self.not_sent();
                return Ok(false);
            }
            return Err(SessionError::Lost("the session is closed".to_string()));
        };
        if link.send(msg).await.is_ok() {
            return Ok(true);
        }
        if self.reconnects {
            self.link = None;
            // Not while quitting: then nothing is reconnecting.
            if self.reconnecting.is_some() {
                self.not_sent();
            }
            Ok(false)
        } else {
            Err(SessionError::Lost(link.lost_reason().await))
        }
    }

    /// Why a session that does not reconnect has no connection.
    async fn lost_for_good(&self) -> SessionError {
        match &self.link {
            Some(link) => SessionError::Lost(link.lost_reason().await),
            None => SessionError::Lost("the session is closed".to_string()),
        }
    }

    /// Waits on the current link for the answer `wanted` accepts. `Waited::Closed` only
    /// when reconnecting; otherwise a closed connection is an error.
    async fn wait_for(
        &mut self,
        wanted: impl Fn(&Outcome) -> bool,
    ) -> Result<Waited, SessionError> {
        let Some(link) = &mut self.link else {
            return Ok(Waited::Closed);
        };
        match link.wait_for(wanted).await {
            Waited::Closed if !self.reconnects => Err(SessionError::Lost(link.lost_reason().await)),
            waited => Ok(waited),
        }
    }

    /// Tells the user a line was not sent because the session is reconnecting.
    fn not_sent(&self) {
        self.output.line(&render::not_connected(&self.server));
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(reconnecting) = &self.reconnecting {
            reconnecting.task.abort();
        }
        if let Some(link) = &self.link {
            link.abort();
        }
    }
}

/// The state every link of a new session shares.
fn new_context(server: &NodeName, nick: String, output: Arc<dyn Output>) -> Context {
    Context {
        server: server.to_string(),
        output,
        shared: Arc::new(Shared::new(nick)),
    }
}
