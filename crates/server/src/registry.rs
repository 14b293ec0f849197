//! The registry actor: the one task that owns this node's side of the room.
//!
//! It holds every attached connection, the sessions they carry, and its view of the
//! members, and is the only place that changes them; connections talk to it through
//! [`RegistryHandle`]. It never awaits a peer, nor the room's store.
//!
//! The room's state itself (the order of events, membership and nick uniqueness, the
//! resumable sessions) is its [`Backend`]'s: the embedded [`LocalBackend`] of one node,
//! or the Redis backend of a cluster. The registry works in two halves:
//!
//! - **Requests**: a command is checked here (a joined connection, a valid nick, the
//!   private-message limit) and handed to the backend as a [`Request`]. The backend
//!   answers with [`Effect`]s, at once (local) or when its task's [`Mail`] comes back
//!   (Redis); the registry drains them in a loop after every command.
//! - **Ordered entries** ([`Effect::Entry`]), applied strictly in sequence: update the
//!   view of the members, append the event to the room's [`History`] (which native
//!   members' writers read by themselves), hand it to the peers that do not read the
//!   history ([`Peer::deliver`]), acknowledge the sender if it is here, close a stale
//!   connection whose session another node took over. A join or resume is answered
//!   once its own entry is applied, so the member's events start right after it.
//!
//! Sessions: a join creates a session with a secret ticket. When a connection drops
//! without leaving, its member leaves the room, but the session stays resumable for a
//! while: a client that comes back with the ticket gets its nick again (and a stale
//! connection of the same session is replaced at once) and its writer replays, from the
//! history, everything after the last event the client saw. Says and private messages
//! carry the client's ids, acknowledged with their sequence numbers, and a repeated id
//! is acknowledged again but not repeated in the room.
//!
//! No recursion: a broadcast that finds dead members does not announce their departures
//! from inside itself (one stack frame deeper per dead member, which overflowed the stack
//! when thousands dropped at once). Their departures are requests whose effects join the
//! end of the effect queue, which [`Registry::handle`] drains in a loop.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use protocol::limits::{self, NickError};
use protocol::unicode::{self, escape_capped};
use protocol::{EventKind, FloodLimits, LeaveReason, Reply, ResumeFailure, SessionTicket};
use tokio::sync::{mpsc, oneshot};

use crate::backend::local::LocalBackend;
use crate::backend::{
    Backend, Body, Change, Effect, Effects, InlineNick, Mail, Ordered, Request, Resumed, Snapshot,
    View,
};
use crate::connection::LOG_CAP;
use crate::history::{Audience, History, SessionId};
use crate::log_limit::LogLimiter;
use crate::memory::MemoryKeeper;
use crate::peer::{DeliveryError, Peer};
use crate::rate_limit::{TokenBucket, Verdict};

pub use crate::peer::ConnId;

/// Requests to the registry.
pub enum Command {
    /// A connection finished its handshake; it may now make calls.
    Attach {
        /// The connection.
        id: ConnId,
        /// How to reach it.
        peer: Arc<dyn Peer>,
    },
    /// A connection ended; if it was a member, the room is told it left for `reason`.
    Detach {
        /// The connection.
        id: ConnId,
        /// Why it ended.
        reason: LeaveReason,
    },
    /// Join the room as `nick`.
    Join {
        /// The connection.
        id: ConnId,
        /// The nick wanted.
        nick: String,
        /// How many of the last messages to send after the answer.
        backlog: u16,
    },
    /// Take back a session after a dropped link.
    Resume {
        /// The new connection.
        id: ConnId,
        /// The session's ticket.
        ticket: SessionTicket,
        /// The room epoch the ticket is from.
        epoch: u64,
        /// The last event the client received.
        last_seq: u64,
    },
    /// Leave the room.
    Leave {
        /// The connection.
        id: ConnId,
    },
    /// Say `text` to every other member.
    Say {
        /// The speaker.
        id: ConnId,
        /// The client's id of the message (0: no acknowledgement).
        msg_id: u64,
        /// The message (already validated).
        text: String,
    },
    /// Say `text` to `to` alone.
    Private {
        /// The speaker.
        id: ConnId,
        /// The client's id of the message (0: no acknowledgement).
        msg_id: u64,
        /// The recipient's nick.
        to: String,
        /// The message (already validated).
        text: String,
    },
    /// Ask for the members' nicks.
    ListUsers {
        /// The asker.
        id: ConnId,
    },
    /// A liveness tick: probe every connection, drop those silent for too long.
    Tick,
    /// Look for slow consumers: members too far behind the history's newest event.
    Sweep,
    /// Tell every connection the server is shutting down and close them.
    Shutdown {
        /// Answered once every connection has been told.
        done: oneshot::Sender<()>,
    },
}

/// The sending side of the registry's mailbox; cheap to clone.
#[derive(Clone)]
pub struct RegistryHandle {
    tx: mpsc::Sender<Command>,
}

impl RegistryHandle {
    /// Sends a command; waits only if the mailbox is full (back-pressure on readers).
    /// Returns false once the registry has stopped.
    pub async fn send(&self, command: Command) -> bool {
        match self.tx.try_send(command) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // Boxed: waiting is rare, and inline the wait's state would enlarge every
            // connection's task for its whole life.
            Err(mpsc::error::TrySendError::Full(command)) => {
                Box::pin(self.tx.send(command)).await.is_ok()
            }
        }
    }

    /// Tells every connection that the server is shutting down; returns once they all
    /// have the notice queued (and the backend has let go of the room).
    pub async fn shutdown(&self) {
        let (done, told) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await {
            let _ = told.await;
        }
    }
}

/// The room's rules, as the registry applies them.
#[derive(Debug, Clone)]
pub struct RoomRules {
    /// A connection not heard from for this long is dropped at the next tick.
    pub silence_limit: Duration,
    /// A member further behind the history's newest event than this many bytes is a
    /// slow consumer.
    pub max_lag_bytes: u64,
    /// The flood limit, told to clients at join.
    pub flood: FloodLimits,
    /// Most sessions kept resumable after their connection dropped.
    pub max_departed: usize,
    /// How long a session stays resumable after its connection dropped.
    pub resume_window: Duration,
}

impl Default for RoomRules {
    fn default() -> Self {
        Self {
            silence_limit: Duration::from_secs(60),
            max_lag_bytes: 4 * 1024 * 1024,
            flood: FloodLimits {
                interval_us: 100_000,
                burst: 20,
            },
            max_departed: 10_000,
            resume_window: Duration::from_secs(120),
        }
    }
}

/// How many private messages one member may receive: `rate` per second on average,
/// bursts of `burst`, so that others cannot push it past its send queue.
#[derive(Debug, Clone, Copy)]
pub struct PrivateLimit {
    /// Per second, on average.
    pub rate: f64,
    /// In a burst.
    pub burst: u32,
}

impl Default for PrivateLimit {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 40,
        }
    }
}

/// Mail from the backend's tasks that the registry's inbox holds before they wait.
const MAIL_BOX: usize = 1024;

/// The sending side of the registry's inbox for its backend's tasks.
pub type MailSender = mpsc::Sender<Mail>;

/// Starts the registry actor over `history` with a mailbox of `mailbox` commands; each
/// member may receive private messages within `private_limit`. `backend` makes the
/// room's backend, given where its tasks send their mail.
pub fn spawn(
    mailbox: usize,
    history: Arc<History>,
    rules: RoomRules,
    private_limit: PrivateLimit,
    backend: impl FnOnce(MailSender) -> Box<dyn Backend>,
) -> RegistryHandle {
    let (tx, rx) = mpsc::channel(mailbox);
    let (mail_tx, mail_rx) = mpsc::channel(MAIL_BOX);
    let mut registry = Registry::new(history, rules, backend(mail_tx));
    registry.private_limit = private_limit;
    tokio::spawn(registry.run(rx, mail_rx));
    RegistryHandle { tx }
}

/// Refused joins logged per second, on average, and in a burst (as refused handshakes).
const REFUSAL_LOG_RATE: f64 = 10.0;
/// See [`REFUSAL_LOG_RATE`].
const REFUSAL_LOG_BURST: u32 = 50;

/// How long after a leave the end of the connection makes it a quit (in the log).
const QUIT_WINDOW: Duration = Duration::from_secs(1);

/// Logs that `nick` (on `node`) left the room for `reason`: one line per departure.
fn log_left(nick: &str, node: &str, reason: LeaveReason) {
    tracing::info!(%nick, %node, reason = reason.describe(), "left");
}

/// The embedded backend for `rules`: the room in this process.
pub fn local_backend(rules: &RoomRules) -> Box<dyn Backend> {
    Box::new(LocalBackend::new(rules.max_departed, rules.resume_window))
}

/// A join or resume asked for and not yet answered.
enum Pending {
    /// A join of `nick` (as asked for, for the log) with its backlog request.
    Joining {
        backlog: u16,
        nick: String,
    },
    Resuming,
}

struct Connection {
    peer: Arc<dyn Peer>,
    /// The session this connection carries, once joined or resumed.
    session: Option<SessionId>,
    /// A join or resume in progress (boxed, as the next field: a member keeps its
    /// connection's entry, and the map's buckets, for its whole life).
    pending: Option<Box<Pending>>,
    /// Set once the registry has closed this connection; its own `Detach` follows.
    closed: bool,
    /// The nick this connection took out of the room with a leave, not logged yet, and
    /// when: a quit is a leave and then the end of the connection, logged as one line
    /// (`left reason=quit`). Logged as `left` when the connection goes on instead.
    unlogged_leave: Option<Box<(String, Instant)>>,
}

impl Connection {
    /// Takes the join or resume in progress.
    fn take_pending(&mut self) -> Option<Pending> {
        self.pending.take().map(|pending| *pending)
    }

    /// Takes the leave not logged yet: its nick and when.
    fn take_unlogged_leave(&mut self) -> Option<(String, Instant)> {
        self.unlogged_leave.take().map(|leave| *leave)
    }
}

/// A session carried by one of this node's connections.
struct Attached {
    conn: ConnId,
    nick: InlineNick,
}

/// An answer that waits for its own entry to be applied.
enum Waiter {
    Join {
        conn: ConnId,
        session: SessionId,
        ticket: SessionTicket,
        backlog: u16,
    },
    Resume(Box<Resumed>),
}

struct Registry {
    history: Arc<History>,
    rules: RoomRules,
    backend: Box<dyn Backend>,
    connections: HashMap<ConnId, Connection>,
    /// The sessions this node's connections carry.
    attached: HashMap<SessionId, Attached>,
    /// The members as applied from the room's entries.
    view: View,
    /// What each member may receive of private messages.
    private_limit: PrivateLimit,
    /// The private-message buckets of members that were sent some.
    buckets: HashMap<SessionId, TokenBucket>,
    /// Members that do not read the history: handed every event meant for them.
    fed: BTreeMap<SessionId, ConnId>,
    /// Answers waiting for their entry, by its number.
    waiting: BTreeMap<u64, Waiter>,
    /// Set by [`Command::Shutdown`]: everyone has been told, so departures are no
    /// longer announced.
    shutting_down: bool,
    /// Effects still to be carried out, oldest first. Filled by the backend while a
    /// command is handled (and by effects themselves: a broadcast that finds dead
    /// members adds their departures), drained by [`Registry::handle`] in a loop, so
    /// nothing here recurses.
    fx: Effects,
    /// Returns memory to the system after a crowd leaves.
    memory: MemoryKeeper,
    /// Bounds the log lines about refused joins.
    refusal_log: LogLimiter,
}

impl Registry {
    fn new(history: Arc<History>, rules: RoomRules, backend: Box<dyn Backend>) -> Self {
        Self {
            history,
            rules,
            backend,
            connections: HashMap::new(),
            attached: HashMap::new(),
            view: View::default(),
            private_limit: PrivateLimit::default(),
            buckets: HashMap::new(),
            fed: BTreeMap::new(),
            waiting: BTreeMap::new(),
            shutting_down: false,
            fx: Effects::new(),
            memory: MemoryKeeper::default(),
            refusal_log: LogLimiter::new(REFUSAL_LOG_RATE, REFUSAL_LOG_BURST),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut mail: mpsc::Receiver<Mail>) {
        loop {
            tokio::select! {
                // The backend's results first: they free what readers wait for.
                biased;
                Some(letter) = mail.recv() => {
                    self.backend.on_mail(letter, &self.view, &mut self.fx);
                    self.drain();
                }
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
            }
        }
    }

    fn handle(&mut self, command: Command) {
        self.apply(command);
        self.drain();
    }

    /// Carries out the effects queued so far, and those they cause, in order. Every
    /// member leaves at most once and every entry is applied once, so this ends.
    fn drain(&mut self) {
        while let Some(effect) = self.fx.pop_front() {
            self.effect(effect);
        }
    }

    fn submit(&mut self, request: Request) {
        self.backend.submit(request, &self.view, &mut self.fx);
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Attach { id, peer } => {
                let connection = Connection {
                    peer,
                    session: None,
                    pending: None,
                    closed: false,
                    unlogged_leave: None,
                };
                self.connections.insert(id, connection);
            }
            Command::Detach { id, reason } => {
                // One line per connection's end: its member leaving, a leave and then
                // the end (a quit), or the end alone; nothing if the registry closed it
                // (that was logged then).
                let (node, mut told, leave) = match self.connections.get_mut(&id) {
                    Some(c) => (c.peer.node().to_string(), c.closed, c.take_unlogged_leave()),
                    None => (String::new(), true, None),
                };
                if let Some(session) = self.session_of(id)
                    && let Some(nick) = self.depart(session, reason)
                {
                    log_left(&nick, &node, reason);
                    told = true;
                }
                if let Some((nick, _)) = leave {
                    if reason == LeaveReason::ConnectionLost {
                        log_left(&nick, &node, LeaveReason::Quit);
                        told = true;
                    } else {
                        log_left(&nick, &node, LeaveReason::Left);
                    }
                }
                if !told {
                    tracing::info!(%node, reason = reason.describe(), "disconnected");
                }
                self.connections.remove(&id);
            }
            Command::Join { id, nick, backlog } => self.join(id, nick, backlog),
            Command::Resume {
                id,
                ticket,
                epoch,
                last_seq,
            } => self.resume(id, ticket, epoch, last_seq),
            Command::Leave { id } => self.leave(id),
            Command::Say { id, msg_id, text } => self.say(id, msg_id, text),
            Command::Private {
                id,
                msg_id,
                to,
                text,
            } => self.private(id, msg_id, to, text),
            Command::ListUsers { id } => {
                let (users, more) = self.view.user_list(usize::MAX);
                self.reply(id, Reply::Users { users, more });
            }
            Command::Tick => {
                self.tick();
                self.backend.tick(&mut self.fx);
            }
            Command::Sweep => self.sweep(),
            Command::Shutdown { done } => {
                tracing::info!(
                    members = self.attached.len(),
                    connections = self.connections.len(),
                    "server shutting down"
                );
                self.shutting_down = true;
                // Everyone leaves now, so that every `left` is logged before `bye`.
                let ids: Vec<ConnId> = self.connections.keys().copied().collect();
                for id in ids {
                    self.drop_connection(id, LeaveReason::ServerShutdown);
                }
                self.backend.shutdown(done);
            }
        }
    }

    fn effect(&mut self, effect: Effect) {
        match effect {
            Effect::Reply { conn, reply } => self.reply(conn, reply),
            Effect::Refused { conn, reply } => {
                let pending = self
                    .connections
                    .get_mut(&conn)
                    .and_then(Connection::take_pending);
                if let Some(Pending::Joining { nick, .. }) = pending {
                    self.log_join_refused(conn, &nick, &reply);
                }
                self.reply(conn, reply);
            }
            Effect::Joined {
                conn,
                session,
                ticket,
                nick,
                seq,
            } => self.joined(conn, session, ticket, nick, seq),
            Effect::Resumed(resumed) => self.resumed(resumed),
            Effect::Entry(entry) => self.apply_entry(entry),
            Effect::Lost { from, to } => self.lost(from, to),
            Effect::Offline => self.offline(),
            Effect::Start(snapshot) => self.start(*snapshot),
        }
    }

    /// The session a connection carries.
    fn session_of(&self, id: ConnId) -> Option<SessionId> {
        self.connections.get(&id)?.session
    }

    /// The session a connection carries, if it is a member here.
    fn member_session(&self, id: ConnId) -> Option<SessionId> {
        self.session_of(id)
            .filter(|s| self.attached.get(s).is_some_and(|a| a.conn == id))
    }

    /// Probes every connection; drops the silent ones as timed out.
    fn tick(&mut self) {
        let silence_limit = self.rules.silence_limit;
        let silent: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, connection)| !connection.closed)
            .filter(|(_, connection)| !connection.peer.tick(silence_limit))
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.drop_connection(id, LeaveReason::Timeout);
        }
        // A leave not followed by the connection's end within a second was no quit.
        let now = Instant::now();
        for connection in self.connections.values_mut() {
            if connection
                .unlogged_leave
                .as_ref()
                .is_some_and(|leave| now.duration_since(leave.1) >= QUIT_WINDOW)
                && let Some((nick, _)) = connection.take_unlogged_leave()
            {
                log_left(
                    &nick,
                    &connection.peer.node().to_string(),
                    LeaveReason::Left,
                );
            }
        }
    }

    /// Drops members whose writers are too far behind the history.
    fn sweep(&mut self) {
        let limit = self.rules.max_lag_bytes;
        let slow: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| !c.closed && c.session.is_some())
            .filter(|(_, c)| {
                c.peer.cursor().is_some_and(|cursor| {
                    let lag = self.history.lag(cursor);
                    lag.fell_off || lag.bytes > limit
                })
            })
            .map(|(id, _)| *id)
            .collect();
        for id in slow {
            tracing::debug!(node = %self.node_of(id), "too far behind the room; dropping");
            self.drop_connection(id, LeaveReason::SendQueueExceeded);
        }
        self.backend.sweep();
        // Shrink first, so that the trim below can return what the maps gave back.
        if self.connections.capacity() > 4 * self.connections.len().max(64) {
            self.connections.shrink_to_fit();
        }
        if self.attached.capacity() > 4 * self.attached.len().max(64) {
            self.attached.shrink_to_fit();
            self.buckets.shrink_to_fit();
        }
        self.view.shrink_if_sparse();
        self.memory
            .observe(self.connections.len() + self.attached.len() + self.backend.kept_sessions());
    }

    fn node_of(&self, id: ConnId) -> String {
        self.connections
            .get(&id)
            .map_or_else(String::new, |c| c.peer.node().to_string())
    }

    /// Closes connection `id` for `reason` (once) and takes its member out of the room.
    /// Logs a leave of connection `id` not logged yet: the connection goes on, so it was
    /// no quit.
    fn log_leave(&mut self, id: ConnId) {
        if let Some(connection) = self.connections.get_mut(&id)
            && let Some((nick, _)) = connection.take_unlogged_leave()
        {
            log_left(
                &nick,
                &connection.peer.node().to_string(),
                LeaveReason::Left,
            );
        }
    }

    /// Logs a refused join (at a bounded rate: a client can try again and again); `nick`
    /// as asked for, escaped.
    fn log_join_refused(&self, id: ConnId, nick: &str, reply: &Reply) {
        let reason = match reply {
            Reply::NickInUse => "nick in use".to_string(),
            Reply::NickNotAllowed => "nick not allowed".to_string(),
            Reply::InvalidNick { reason } => format!("invalid nick ({reason})"),
            Reply::AlreadyJoined { .. } => "already in the room".to_string(),
            Reply::Unavailable { .. } => "the room is unavailable on this node".to_string(),
            other => format!("{other:?}"),
        };
        if let Some(suppressed) = self.refusal_log.allow() {
            let nick = escape_capped(nick, LOG_CAP);
            let reason = escape_capped(&reason, LOG_CAP);
            let node = self.node_of(id);
            if suppressed > 0 {
                tracing::info!(%nick, %node, reason = reason.as_str(), suppressed, "join refused (and {suppressed} more not logged)");
            } else {
                tracing::info!(%nick, %node, reason = reason.as_str(), "join refused");
            }
        }
    }

    /// Logged here, in one line: `left` with the reason for a member, else
    /// `disconnected`; the connection's own `Detach` that follows logs nothing.
    fn drop_connection(&mut self, id: ConnId, reason: LeaveReason) {
        let Some(connection) = self.connections.get_mut(&id).filter(|c| !c.closed) else {
            return;
        };
        connection.closed = true;
        connection.peer.close(reason);
        let node = connection.peer.node().to_string();
        if let Some((nick, _)) = connection.take_unlogged_leave() {
            log_left(&nick, &node, LeaveReason::Left);
        }
        match connection
            .session
            .and_then(|session| self.depart(session, reason))
        {
            Some(nick) => log_left(&nick, &node, reason),
            None => tracing::info!(%node, reason = reason.describe(), "disconnected"),
        }
    }

    /// Closes connection `id` without telling the room anything: its session is no
    /// longer this connection's (taken over, or the room is gone).
    fn close_quietly(&mut self, id: ConnId) {
        if let Some(connection) = self.connections.get_mut(&id) {
            if let Some(session) = connection.session.take() {
                self.fed.remove(&session);
            }
            connection.pending = None;
            if !connection.closed {
                connection.closed = true;
                connection.peer.close(LeaveReason::ConnectionLost);
            }
        }
    }

    fn join(&mut self, id: ConnId, nick: String, backlog: u16) {
        self.log_leave(id);
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if let Some(session) = connection.session {
            let nick = self
                .attached
                .get(&session)
                .map(|a| a.nick.as_str().to_string())
                .unwrap_or_default();
            let reply = Reply::AlreadyJoined { nick: nick.clone() };
            self.log_join_refused(id, &nick, &reply);
            self.reply(id, reply);
            return;
        }
        if connection.pending.is_some() {
            let reply = Reply::AlreadyJoined { nick: nick.clone() };
            self.log_join_refused(id, &nick, &reply);
            self.reply(id, reply);
            return;
        }
        // Normalised (NFC), and unique by its key: case, accents and look-alike
        // letters do not make another nick.
        let checked = match limits::normalize_nick(&nick) {
            Err(NickError::NotAllowed(_)) => Err(Reply::NickNotAllowed),
            Err(NickError::Invalid(reason)) => Err(Reply::InvalidNick { reason }),
            Ok(nick) if InlineNick::new(&nick).is_none() => Err(Reply::InvalidNick {
                reason: format!("nick is longer than {} bytes", limits::MAX_NICK_LEN),
            }),
            Ok(nick) => {
                let key = unicode::nick_key(&nick);
                if self.view.holder_of_key(&key).is_some() {
                    Err(Reply::NickInUse)
                } else {
                    Ok((nick, key))
                }
            }
        };
        let (nick, key) = match checked {
            Ok(checked) => checked,
            Err(reply) => {
                self.log_join_refused(id, &nick, &reply);
                self.reply(id, reply);
                return;
            }
        };
        connection.pending = Some(Box::new(Pending::Joining {
            backlog,
            nick: nick.clone(),
        }));
        self.submit(Request::Join {
            conn: id,
            nick,
            key,
        });
    }

    /// The backend accepted a join; the answer goes out once its entry is applied.
    fn joined(
        &mut self,
        conn: ConnId,
        session: SessionId,
        ticket: SessionTicket,
        nick: String,
        seq: u64,
    ) {
        let backlog = match self.connections.get_mut(&conn) {
            Some(c)
                if !c.closed && matches!(c.pending.as_deref(), Some(Pending::Joining { .. })) =>
            {
                let Some(Pending::Joining { backlog, .. }) = c.take_pending() else {
                    return;
                };
                c.session = Some(session);
                tracing::info!(%nick, node = %c.peer.node(), "joined");
                backlog
            }
            _ => {
                // The connection went away meanwhile: the session is in the room with
                // nobody to carry it.
                if !self.shutting_down {
                    self.submit(Request::Depart {
                        session,
                        nick,
                        reason: LeaveReason::ConnectionLost,
                    });
                }
                return;
            }
        };
        let Some(inline) = InlineNick::new(&nick) else {
            return;
        };
        self.attached
            .insert(session, Attached { conn, nick: inline });
        let waiter = Waiter::Join {
            conn,
            session,
            ticket,
            backlog,
        };
        if seq <= self.view.applied() {
            self.finish(waiter, seq);
        } else {
            self.waiting.insert(seq, waiter);
        }
    }

    /// Answers a join or resume whose entry (number `seq`) has been applied.
    fn finish(&mut self, waiter: Waiter, seq: u64) {
        match waiter {
            Waiter::Join {
                conn,
                session,
                ticket,
                backlog,
            } => self.finish_join(conn, session, ticket, seq, backlog),
            Waiter::Resume(resumed) => self.finish_resume(*resumed),
        }
    }

    /// The peer of connection `conn` if it still carries `session`.
    fn carrier(&self, conn: ConnId, session: SessionId) -> Option<Arc<dyn Peer>> {
        self.connections
            .get(&conn)
            .filter(|c| !c.closed && c.session == Some(session))
            .map(|c| Arc::clone(&c.peer))
    }

    fn finish_join(
        &mut self,
        conn: ConnId,
        session: SessionId,
        ticket: SessionTicket,
        seq: u64,
        backlog: u16,
    ) {
        let Some(peer) = self.carrier(conn, session) else {
            return;
        };
        // As of just before the join: the join itself is not the joiner's to read.
        let before = seq.saturating_sub(1);
        let (users, more) = self.view.user_list(limits::MAX_JOIN_LISTED_USERS);
        let joined = Reply::Joined {
            users,
            more,
            ticket,
            epoch: self.backend.epoch(),
            seq: before,
            limits: self.rules.flood,
        };
        let backlog = usize::from(backlog.min(limits::MAX_BACKLOG));
        let result = peer.reply(joined).and_then(|()| {
            if peer.reads_history() {
                peer.send_frames(self.history.backlog(backlog, before))?;
            }
            self.start_reading(&peer, conn, session, seq)
        });
        if let Err(e) = result {
            self.delivery_failed(conn, e);
        }
    }

    /// Starts the room's events for a member from number `from`: its writer reads the
    /// history, or (a peer that does not read it) it is handed each event.
    fn start_reading(
        &mut self,
        peer: &Arc<dyn Peer>,
        id: ConnId,
        session: SessionId,
        from: u64,
    ) -> Result<(), DeliveryError> {
        if peer.reads_history() {
            peer.subscribe(session, from)
        } else {
            self.fed.insert(session, id);
            Ok(())
        }
    }

    fn resume(&mut self, id: ConnId, ticket: SessionTicket, epoch: u64, last_seq: u64) {
        self.log_leave(id);
        let Some(connection) = self.connections.get_mut(&id) else {
            return;
        };
        if connection.session.is_some() || connection.pending.is_some() {
            self.reply(
                id,
                Reply::ResumeFailed {
                    reason: ResumeFailure::AlreadyJoined,
                },
            );
            return;
        }
        connection.pending = Some(Box::new(Pending::Resuming));
        let oldest_local = self.history.oldest();
        self.submit(Request::Resume {
            conn: id,
            ticket,
            epoch,
            last_seq,
            oldest_local,
        });
    }

    /// The backend accepted a resume; the answer goes out once its entry is applied.
    fn resumed(&mut self, resumed: Box<Resumed>) {
        let (conn, session) = (resumed.conn, resumed.session);
        let asked = self
            .connections
            .get(&conn)
            .is_some_and(|c| !c.closed && matches!(c.pending.as_deref(), Some(Pending::Resuming)));
        if !asked {
            // The connection went away meanwhile. Unless another connection here
            // carries the session, nobody does.
            if !self.attached.contains_key(&session) && !self.shutting_down {
                self.submit(Request::Depart {
                    session,
                    nick: resumed.nick,
                    reason: LeaveReason::ConnectionLost,
                });
            }
            return;
        }
        // A stale connection of the same session (its client is gone but the server
        // has not noticed yet) is replaced at once, without telling the room.
        if let Some(stale) = self.attached.get(&session).map(|a| a.conn)
            && stale != conn
        {
            self.close_quietly(stale);
        }
        let Some(inline) = InlineNick::new(&resumed.nick) else {
            return;
        };
        let Some(connection) = self.connections.get_mut(&conn) else {
            return;
        };
        connection.pending = None;
        connection.session = Some(session);
        tracing::info!(
            nick = %resumed.nick,
            node = %connection.peer.node(),
            rejoined = resumed.rejoined,
            "resumed"
        );
        self.attached
            .insert(session, Attached { conn, nick: inline });
        if resumed.seq > self.view.applied() {
            let seq = resumed.seq;
            self.waiting.insert(seq, Waiter::Resume(resumed));
        } else {
            self.finish_resume(*resumed);
        }
    }

    fn finish_resume(&mut self, resumed: Resumed) {
        let (conn, session) = (resumed.conn, resumed.session);
        let Some(peer) = self.carrier(conn, session) else {
            return;
        };
        // What the backend had from before the local history, then the local history.
        let mut older = BytesMut::new();
        let mut older_count: u32 = 0;
        for entry in &resumed.older {
            if let Body::Event {
                event, audience, ..
            } = &entry.body
                && entry.seq > resumed.last_seq
                && audience.includes(session)
            {
                older.put_slice(event.native_frame());
                older_count = older_count.saturating_add(1);
            }
        }
        let upto = resumed
            .last_seq
            .max(resumed.older_upto)
            .min(self.history.head());
        let missed = self.history.missed(session, upto);
        let (users, more) = self.view.user_list(limits::MAX_JOIN_LISTED_USERS);
        let answer = Reply::Resumed {
            missed: missed.kept.saturating_add(older_count),
            lost: missed.lost.saturating_add(resumed.older_lost),
            rejoined: resumed.rejoined,
            users,
            more,
            seq: missed.head,
            limits: self.rules.flood,
        };
        let result = peer.reply(answer).and_then(|()| {
            if !older.is_empty() && peer.reads_history() {
                peer.send_frames(older.freeze())?;
            }
            self.start_reading(&peer, conn, session, missed.from)
        });
        if let Err(e) = result {
            self.delivery_failed(conn, e);
        }
    }

    fn leave(&mut self, id: ConnId) {
        let Some(session) = self.member_session(id) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        if let Some(nick) = self.depart(session, LeaveReason::Left)
            && let Some(connection) = self.connections.get_mut(&id)
        {
            connection.unlogged_leave = Some(Box::new((nick, Instant::now())));
        }
        self.reply(id, Reply::Left);
        if let Some(connection) = self.connections.get(&id)
            && let Err(e) = connection.peer.unsubscribe()
        {
            self.delivery_failed(id, e);
        }
    }

    fn say(&mut self, id: ConnId, msg_id: u64, text: String) {
        let Some(session) = self.member_session(id) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        let from = self.nick_here(session);
        self.submit(Request::Append {
            conn: id,
            session,
            msg_id,
            kind: EventKind::Message { from, text },
            audience: Audience::Room { except: session },
        });
    }

    fn private(&mut self, id: ConnId, msg_id: u64, to: String, text: String) {
        let Some(session) = self.member_session(id) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        // Found by its key, so `/pm Ann` reaches `ann`.
        let Some(target) = self.view.holder_of_key(&unicode::nick_key(&to)) else {
            self.reply(id, Reply::NoSuchUser { nick: to });
            return;
        };
        let limit = self.private_limit;
        let within = self
            .buckets
            .entry(target)
            .or_insert_with(|| TokenBucket::new(limit.rate, limit.burst))
            .check(std::time::Instant::now())
            == Verdict::Allow;
        if !within {
            self.reply(id, Reply::RecipientBusy { nick: to });
            return;
        }
        let from = self.nick_here(session);
        self.submit(Request::Append {
            conn: id,
            session,
            msg_id,
            kind: EventKind::Private { from, text },
            audience: Audience::One(target),
        });
    }

    /// The nick of a session carried here.
    fn nick_here(&self, session: SessionId) -> String {
        self.attached
            .get(&session)
            .map(|a| a.nick.as_str().to_string())
            .unwrap_or_default()
    }

    /// Takes `session` off its connection here and asks the backend to take it out of
    /// the room (announced to the others once the entry comes back). Its nick, or `None`
    /// if it was not a member here; the caller logs it (see [`log_left`]).
    fn depart(&mut self, session: SessionId, reason: LeaveReason) -> Option<String> {
        let attached = self.attached.remove(&session)?;
        self.fed.remove(&session);
        if let Some(connection) = self.connections.get_mut(&attached.conn)
            && connection.session == Some(session)
        {
            connection.session = None;
        }
        let nick = attached.nick.as_str().to_string();
        if !self.shutting_down {
            self.submit(Request::Depart {
                session,
                nick: nick.clone(),
                reason,
            });
        }
        Some(nick)
    }

    /// Applies the room's next entry: the one hot path of every event, on every node.
    fn apply_entry(&mut self, entry: Ordered) {
        let seq = entry.seq;
        if seq <= self.view.applied() {
            return; // Never twice.
        }
        self.view.set_applied(seq);
        match entry.body {
            Body::Event {
                event,
                audience,
                kind,
                origin,
                change,
            } => {
                match change {
                    Some(Change::Joined {
                        session,
                        nick,
                        node,
                    }) => {
                        if !node.is_empty() {
                            tracing::debug!(
                                nick = %unicode::escape_capped(&nick, 64),
                                node = %unicode::escape_capped(&node, 128),
                                "member is on node"
                            );
                        }
                        self.view.insert(session, nick);
                    }
                    Some(Change::Left { session, .. }) => {
                        self.view.remove(session);
                        self.buckets.remove(&session);
                        if !origin.here
                            && let Some(attached) = self.attached.remove(&session)
                        {
                            // Released by another node (ours was thought dead): its
                            // client resumes.
                            self.close_quietly(attached.conn);
                        }
                    }
                    None => {}
                }
                self.history.set_room_size(self.view.len());
                self.history
                    .append(seq, event.native_frame().clone(), audience, kind);
                let mut failed = Vec::new();
                for (&session, &conn) in &self.fed {
                    if !audience.includes(session) {
                        continue;
                    }
                    if let Some(connection) = self.connections.get(&conn)
                        && let Err(e) = connection.peer.deliver(&event)
                    {
                        failed.push((conn, e));
                    }
                }
                for (conn, error) in failed {
                    self.delivery_failed(conn, error);
                }
                if origin.here
                    && origin.msg_id != 0
                    && let Some(attached) = self.attached.get(&origin.session)
                {
                    let conn = attached.conn;
                    self.reply(
                        conn,
                        Reply::Sent {
                            id: origin.msg_id,
                            seq,
                        },
                    );
                }
            }
            Body::TakenOver { session, from_here } => {
                if from_here && let Some(attached) = self.attached.remove(&session) {
                    self.close_quietly(attached.conn);
                }
            }
            Body::Skip => {}
        }
        if let Some(waiter) = self.waiting.remove(&seq) {
            self.finish(waiter, seq);
        }
    }

    /// Entries `from..=to` will never come: every member here misses them, so every
    /// reader is made to fall out of the history (it is dropped as a slow consumer and
    /// its client resumes, learning what it lost).
    fn lost(&mut self, from: u64, to: u64) {
        tracing::warn!(from, to, "room events were lost before this node read them");
        self.history.restart_after(to);
        self.view.set_applied(to.max(self.view.applied()));
        let due: Vec<u64> = self.waiting.range(..=to).map(|(seq, _)| *seq).collect();
        for seq in due {
            if let Some(waiter) = self.waiting.remove(&seq) {
                self.finish(waiter, seq);
            }
        }
    }

    /// The room as this node knew it is gone: every member's connection is closed
    /// (its client resumes), and the members are forgotten.
    fn offline(&mut self) {
        let carried: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.session.is_some() || c.pending.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in carried {
            self.close_quietly(id);
        }
        self.attached.clear();
        self.fed.clear();
        self.waiting.clear();
        self.buckets.clear();
        self.view.clear();
    }

    /// Starts from a snapshot of the room: its last entries become the history, its
    /// members the view.
    fn start(&mut self, snapshot: Snapshot) {
        self.offline();
        let base = snapshot
            .recent
            .first()
            .map_or(snapshot.head, |e| e.seq.saturating_sub(1));
        self.history.restart_after(base);
        for entry in snapshot.recent {
            if entry.seq > snapshot.head {
                break;
            }
            if let Body::Event {
                event,
                audience,
                kind,
                ..
            } = entry.body
            {
                self.history
                    .append(entry.seq, event.native_frame().clone(), audience, kind);
            }
        }
        for (session, nick) in snapshot.members {
            self.view.insert(session, nick);
        }
        self.view.set_applied(snapshot.head);
        tracing::info!(
            head = snapshot.head,
            members = self.view.len(),
            "started from the room's snapshot"
        );
    }

    fn delivery_failed(&mut self, id: ConnId, error: DeliveryError) {
        let reason = match error {
            DeliveryError::QueueFull => LeaveReason::SendQueueExceeded,
            DeliveryError::Closed => LeaveReason::ConnectionLost,
        };
        // A failure can be seen several times (a broadcast about the departure of one
        // slow member may find another still full): close and log only once.
        if let Some(connection) = self.connections.get(&id).filter(|c| !c.closed) {
            tracing::debug!(node = %connection.peer.node(), %error, "dropping connection");
        }
        self.drop_connection(id, reason);
    }

    fn reply(&mut self, id: ConnId, reply: Reply) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if let Err(e) = connection.peer.reply(reply) {
            self.delivery_failed(id, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use protocol::codec::{MAX_FRAME_LEN, decode, encode_frame};
    use protocol::{Event, NodeName, ServerMessage};

    use super::*;
    use crate::peer::RoomEvent;

    /// A fed peer that records what it is handed.
    struct Recorder {
        node: NodeName,
        replies: Mutex<Vec<Reply>>,
        events: Mutex<Vec<Event>>,
    }

    impl Recorder {
        fn new() -> Arc<Self> {
            Arc::new(Recorder {
                node: NodeName::parse_long("client@localhost").unwrap(),
                replies: Mutex::default(),
                events: Mutex::default(),
            })
        }
    }

    impl Peer for Recorder {
        fn deliver(&self, event: &RoomEvent) -> Result<(), DeliveryError> {
            if let ServerMessage::Event(event) = event.message() {
                self.events.lock().unwrap().push(event.clone());
            }
            Ok(())
        }
        fn reply(&self, reply: Reply) -> Result<(), DeliveryError> {
            self.replies.lock().unwrap().push(reply);
            Ok(())
        }
        fn close(&self, _reason: LeaveReason) {}
        fn node(&self) -> &NodeName {
            &self.node
        }
        fn tick(&self, _silence_limit: Duration) -> bool {
            true
        }
    }

    /// A peer that reads the history (so the registry hands it nothing per event) and
    /// ignores everything: room filler.
    struct Quiet(NodeName);

    impl Peer for Quiet {
        fn deliver(&self, _event: &RoomEvent) -> Result<(), DeliveryError> {
            Ok(())
        }
        fn reply(&self, _reply: Reply) -> Result<(), DeliveryError> {
            Ok(())
        }
        fn close(&self, _reason: LeaveReason) {}
        fn node(&self) -> &NodeName {
            &self.0
        }
        fn tick(&self, _silence_limit: Duration) -> bool {
            true
        }
        fn reads_history(&self) -> bool {
            true
        }
    }

    fn registry() -> Registry {
        let rules = RoomRules::default();
        let backend = local_backend(&rules);
        Registry::new(Arc::new(History::new(10_000, 1 << 24, 1)), rules, backend)
    }

    /// Joins `members` peers with nicks made by `nick` (all but the last quiet); returns
    /// the last one's replies.
    fn fill_room(members: u64, nick: impl Fn(u64) -> String) -> (Registry, Vec<Reply>) {
        let mut registry = registry();
        let last = Recorder::new();
        for id in 0..members {
            let peer: Arc<dyn Peer> = if id + 1 == members {
                last.clone()
            } else {
                Arc::new(Quiet(NodeName::parse_long("filler@localhost").unwrap()))
            };
            registry.handle(Command::Attach { id, peer });
            let nick = nick(id);
            registry.handle(Command::Join {
                id,
                nick,
                backlog: 0,
            });
        }
        let replies = last.replies.lock().unwrap().clone();
        (registry, replies)
    }

    /// A fed peer that takes everything until `dead` is set, then reports itself closed.
    struct Mortal {
        node: NodeName,
        dead: Arc<AtomicBool>,
    }

    impl Peer for Mortal {
        fn deliver(&self, _event: &RoomEvent) -> Result<(), DeliveryError> {
            self.reply(Reply::Left)
        }
        fn reply(&self, _reply: Reply) -> Result<(), DeliveryError> {
            if self.dead.load(Ordering::Relaxed) {
                Err(DeliveryError::Closed)
            } else {
                Ok(())
            }
        }
        fn close(&self, _reason: LeaveReason) {}
        fn node(&self) -> &NodeName {
            &self.node
        }
        fn tick(&self, _silence_limit: Duration) -> bool {
            true
        }
    }

    #[test]
    fn a_broadcast_that_finds_every_member_dead_does_not_recurse() {
        // Issue 8: each dead member found by a broadcast used to broadcast its departure
        // from inside the broadcast, one stack frame deeper per member. On a 256 KiB
        // stack, 5,000 members overflowed it that way.
        let members = 5_000;
        let survived = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let dead = Arc::new(AtomicBool::new(false));
                let mut registry = registry();
                for id in 0..members {
                    let peer = Arc::new(Mortal {
                        node: NodeName::parse_long("client@localhost").unwrap(),
                        dead: dead.clone(),
                    });
                    registry.handle(Command::Attach { id, peer });
                    let nick = format!("n{id}");
                    registry.handle(Command::Join {
                        id,
                        nick,
                        backlog: 0,
                    });
                }
                dead.store(true, Ordering::Relaxed);
                let text = "anyone?".to_string();
                registry.handle(Command::Say {
                    id: 0,
                    msg_id: 0,
                    text,
                });
                registry.view.len()
            })
            .unwrap()
            .join()
            .expect("the registry survives");
        assert_eq!(survived, 0, "every dead member is removed");
    }

    #[test]
    fn user_lists_of_a_big_room_fit_in_a_frame_and_count_the_rest() {
        // The longest nicks make the biggest frame; the shortest the most list entries,
        // which the decoder's limit counts as memory.
        for (members, nick) in [
            (
                3000,
                Box::new(|id| format!("{id:0>32}")) as Box<dyn Fn(u64) -> String>,
            ),
            (10_000, Box::new(|id| format!("{id}"))),
        ] {
            let (mut registry, _) = fill_room(members, nick);
            let asker = Recorder::new();
            registry.handle(Command::Attach {
                id: u64::MAX,
                peer: asker.clone(),
            });
            registry.handle(Command::ListUsers { id: u64::MAX });
            let replies = asker.replies.lock().unwrap().clone();
            let Some(Reply::Users { users, more }) = replies.first() else {
                panic!("expected a user list, got {replies:?}");
            };
            assert_eq!(users.len() + *more as usize, members as usize);
            assert!(*more > 0, "{members} nicks cannot all be listed");
            assert!(users.windows(2).all(|w| w[0] < w[1]), "sorted");
            let frame = encode_frame(&ServerMessage::Reply(replies[0].clone())).unwrap();
            assert!(frame.len() <= MAX_FRAME_LEN / 2, "{} bytes", frame.len());
            // Clients must be able to decode it: the decoder's limit counts memory too.
            let decoded: ServerMessage = decode(&frame[4..]).expect("the answer decodes");
            assert_eq!(decoded, ServerMessage::Reply(replies[0].clone()));
        }
    }

    #[test]
    fn a_join_answer_lists_a_bounded_number_of_nicks_whatever_the_room() {
        let (_, replies) = fill_room(5_000, |id| format!("m{id}"));
        let Some(Reply::Joined { users, more, .. }) = replies.first() else {
            panic!("expected a join answer, got {replies:?}");
        };
        assert_eq!(users.len(), limits::MAX_JOIN_LISTED_USERS);
        assert_eq!(users.len() + *more as usize, 5_000);
    }

    #[test]
    fn a_message_sent_again_is_acknowledged_but_not_repeated() {
        let mut registry = registry();
        let (speaker, listener) = (Recorder::new(), Recorder::new());
        for (id, peer, nick) in [(1, &speaker, "ann"), (2, &listener, "bob")] {
            registry.handle(Command::Attach {
                id,
                peer: peer.clone(),
            });
            registry.handle(Command::Join {
                id,
                nick: nick.into(),
                backlog: 0,
            });
        }
        for _ in 0..2 {
            registry.handle(Command::Say {
                id: 1,
                msg_id: 7,
                text: "once".into(),
            });
        }
        let said: Vec<Event> = listener
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Message { .. }))
            .cloned()
            .collect();
        assert_eq!(said.len(), 1, "the room hears it once: {said:?}");
        let acks: Vec<Reply> = speaker
            .replies
            .lock()
            .unwrap()
            .iter()
            .filter(|r| matches!(r, Reply::Sent { .. }))
            .cloned()
            .collect();
        let seq = said[0].seq;
        assert_eq!(
            acks,
            [Reply::Sent { id: 7, seq }, Reply::Sent { id: 7, seq }]
        );
    }

    #[test]
    fn a_session_resumes_with_its_ticket_only() {
        let mut registry = registry();
        let first = Recorder::new();
        registry.handle(Command::Attach {
            id: 1,
            peer: first.clone(),
        });
        registry.handle(Command::Join {
            id: 1,
            nick: "ann".into(),
            backlog: 0,
        });
        let Some(Reply::Joined { ticket, epoch, .. }) =
            first.replies.lock().unwrap().first().cloned()
        else {
            panic!("not joined");
        };
        registry.handle(Command::Detach {
            id: 1,
            reason: LeaveReason::ConnectionLost,
        });
        let thief = Recorder::new();
        registry.handle(Command::Attach {
            id: 2,
            peer: thief.clone(),
        });
        let forged = SessionTicket {
            id: ticket.id,
            secret: [0; 16],
        };
        registry.handle(Command::Resume {
            id: 2,
            ticket: forged,
            epoch,
            last_seq: 0,
        });
        assert_eq!(
            thief.replies.lock().unwrap().as_slice(),
            [Reply::ResumeFailed {
                reason: ResumeFailure::UnknownSession
            }]
        );
        let back = Recorder::new();
        registry.handle(Command::Attach {
            id: 3,
            peer: back.clone(),
        });
        registry.handle(Command::Resume {
            id: 3,
            ticket,
            epoch,
            last_seq: 0,
        });
        let replies = back.replies.lock().unwrap().clone();
        assert!(
            matches!(replies.as_slice(), [Reply::Resumed { rejoined: true, .. }]),
            "{replies:?}"
        );
        assert!(registry.view.contains_nick("ann"));
    }
}
