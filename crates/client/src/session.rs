//! The running session: what happens between "Connected" and exit.
//!
//! A session is a connection's two tasks (a *link*, in the private `link` module: the
//! message handler, which prints everything the server sends, and the writer),
//! optionally a reconnect task ([`crate::reconnect`]), and the [`Session`] front end the
//! REPL drives: it turns [`Command`]s into messages, and waits for the answer to a join
//! or a leave so that the join state it acts on is never stale.
//!
//! Without reconnecting ([`Session::start`]), losing the connection ends the session:
//! calls return [`SessionError::Lost`] and the [`LostSignal`] fires. With reconnecting
//! ([`Session::start_reconnecting`]), the reconnect task reports the loss through the
//! [`Output`] and swaps a new connection in underneath; meanwhile every line that needs
//! the server prints `Not connected to <server> (reconnecting); not sent`, and `/quit`
//! returns at once. The front end does not know how lines are read: a plain reader and a
//! line editor drive it alike through [`Session::handle_line`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use protocol::limits::MAX_FRAME_LEN;
use protocol::{ClientMessage, NodeName};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::command::{self, Command};
use crate::connect::Connection;
use crate::link::{self, Context, Link, Outcome, Waited};
use crate::reconnect::{self, Redial};
use crate::render;
use crate::shared::Shared;
pub use crate::shared::{CALL_TIMEOUT, Members, Output};

/// Longest message text the client sends; the rest of the frame limit is left for the
/// message's envelope. (The server's own text limit is usually much lower and is
/// reported back as a reply.)
pub const MAX_SEND_TEXT: usize = MAX_FRAME_LEN - 1024;

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

/// Why a session ended against the user's will.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection to the server broke; the text says why.
    #[error("{0}")]
    Lost(String),
}

/// Resolves when the session has lost its server for good, with the reason. A
/// reconnecting session never loses it for good. Cheap to clone, so a REPL can wait on it
/// while it reads input.
#[derive(Debug, Clone)]
pub struct LostSignal(watch::Receiver<Option<String>>);

impl LostSignal {
    /// Waits until the connection is lost for good and returns why.
    pub async fn wait(&mut self) -> String {
        match self.0.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // Closed without a reason: the session was closed on purpose (or reconnects
            // and never loses the server for good). Nothing to report, ever.
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

/// A connected session: the front end the REPL drives.
pub struct Session {
    nick: String,
    server: String,
    output: Arc<dyn Output>,
    shared: Arc<Shared>,
    /// The connection calls go through; `None` once closed, or while reconnecting.
    link: Option<Link>,
    /// Whether losing the connection is survived (the session was started reconnecting).
    reconnects: bool,
    /// The reconnect task; `None` without reconnecting and once quitting.
    reconnecting: Option<Reconnecting>,
    /// Holds the lost reason once the server is lost for good.
    lost: watch::Receiver<Option<String>>,
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
        let context = new_context(server, output);
        let (link, _watch) = link::start(connection, &context);
        let lost = link.lost_receiver();
        Self::new(nick, context, link, lost, None)
    }

    /// Like [`Session::start`], but a lost connection is reported and replaced: the
    /// session reconnects as `redial` says (to `redial.target`) and rejoins with `nick`
    /// if it was in the room. Must be called inside a tokio runtime.
    pub fn start_reconnecting(
        connection: Connection,
        nick: String,
        output: Arc<dyn Output>,
        redial: Redial,
    ) -> Self {
        let context = new_context(&redial.target.name, output);
        let (link, watch) = link::start(connection, &context);
        let (links_tx, links) = mpsc::unbounded_channel();
        let task = tokio::spawn(reconnect::supervise(
            redial,
            nick.clone(),
            context.clone(),
            watch,
            links_tx,
        ));
        // Never set: a reconnecting session does not lose its server for good.
        let (_, lost) = watch::channel(None);
        let reconnecting = Reconnecting { links, task };
        Self::new(nick, context, link, lost, Some(reconnecting))
    }

    fn new(
        nick: String,
        context: Context,
        link: Link,
        lost: watch::Receiver<Option<String>>,
        reconnecting: Option<Reconnecting>,
    ) -> Self {
        Self {
            nick,
            server: context.server,
            output: context.output,
            shared: context.shared,
            link: Some(link),
            reconnects: reconnecting.is_some(),
            reconnecting,
            lost,
        }
    }

    /// A signal that resolves when the server is lost for good (never, for a
    /// reconnecting session).
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

    /// Carries out one command. While a reconnecting session is down, commands that
    /// need the server print that they were not sent.
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
            _ if self.reconnects && !self.is_connected() => self.not_sent(),
            Command::Join => {
                if self.join().await? == JoinOutcome::NoAnswer {
                    warn!("no answer to /join within {} s", CALL_TIMEOUT.as_secs());
                }
            }
            Command::Leave => self.leave().await?,
            Command::Users => self.users().await?,
            Command::Private { to, text } => self.private(to, text).await?,
            Command::Say(text) => self.say(text).await?,
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
        let nick = self.nick.clone();
        if !self
            .send_now(ClientMessage::Join { nick, backlog: 0 })
            .await?
        {
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
            self.send(ClientMessage::Say { id: 0, text }).await?;
        }
        Ok(())
    }

    /// Says `text` to `to` alone.
    pub async fn private(&mut self, to: String, text: String) -> Result<(), SessionError> {
        if self.check_length(&text) {
            self.send(ClientMessage::Private { id: 0, to, text })
                .await?;
        }
        Ok(())
    }

    /// Asks who is in the room; the handler prints the answer.
    pub async fn users(&mut self) -> Result<(), SessionError> {
        self.send(ClientMessage::ListUsers).await.map(drop)
    }

    /// Leaves the room if in it, waiting (at most [`CALL_TIMEOUT`]) for the confirmation,
    /// so that every earlier reply has been printed; then closes the connection. A
    /// reconnecting session stops reconnecting first, and returns at once when it is
    /// not connected.
    pub async fn quit(&mut self) -> Result<(), SessionError> {
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
fn new_context(server: &NodeName, output: Arc<dyn Output>) -> Context {
    Context {
        server: server.to_string(),
        output,
        shared: Arc::new(Shared {
            joined: AtomicBool::new(false),
            wants_room: AtomicBool::new(false),
            quitting: AtomicBool::new(false),
            members: Members::default(),
        }),
    }
}
