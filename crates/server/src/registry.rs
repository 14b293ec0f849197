//! The registry actor: the one task that owns the room.
//!
//! It holds the members (`nick -> session`), every attached connection and the
//! resumable sessions, and is the only place that changes them; connections talk to it
//! through [`RegistryHandle`]. It never awaits a peer. Every room event gets the next
//! sequence number and is appended once to the room's [`History`], which native members'
//! writers read by themselves; peers that do not read the history are handed each event
//! ([`Peer::deliver`]).
//!
//! Sessions: a join creates a session with a secret ticket. When a connection drops
//! without leaving, its member leaves the room as before, but the session stays
//! resumable for a while: a client that comes back with the ticket gets its nick again
//! (and a stale connection of the same session is replaced at once) and its writer
//! replays, from the history, everything after the last event the client saw. Says and
//! private messages carry the client's ids, acknowledged with their sequence numbers,
//! and a repeated id is acknowledged again but not repeated in the room.
//!
//! No recursion: a broadcast that finds dead members does not broadcast their departures
//! from inside itself (one stack frame deeper per dead member, which overflowed the stack
//! when thousands dropped at once). Departures go on a work list, [`Registry::departures`],
//! that [`Registry::handle`] drains in a loop after every command.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::limits::{self, NickError};
use protocol::unicode::{self, escape_capped};
use protocol::{Event, EventKind, FloodLimits, LeaveReason, Reply, ResumeFailure, SessionTicket};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};

use crate::connection::LOG_CAP;
use crate::history::{Audience, EntryKind, History, SERVER_SESSION, SessionId};
use crate::log_limit::LogLimiter;
use crate::memory::MemoryKeeper;
use crate::peer::{DeliveryError, FrameArena, Peer, RoomEvent};
use crate::rate_limit::{TokenBucket, Verdict};

/// Identifies one connection for its whole life.
pub type ConnId = u64;

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
    /// have the notice queued.
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

/// Starts the registry actor over `history` with a mailbox of `mailbox` commands; each
/// member may receive private messages within `private_limit`.
pub fn spawn(
    mailbox: usize,
    history: Arc<History>,
    rules: RoomRules,
    private_limit: PrivateLimit,
) -> RegistryHandle {
    let (tx, rx) = mpsc::channel(mailbox);
    let mut registry = Registry::new(history, rules);
    registry.private_limit = private_limit;
    tokio::spawn(registry.run(rx));
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

struct Connection {
    peer: Arc<dyn Peer>,
    /// The session this connection carries, once joined or resumed.
    session: Option<SessionId>,
    /// Set once the registry has closed this connection; its own `Detach` follows.
    closed: bool,
    /// The nick this connection took out of the room with a leave, not logged yet, and
    /// when: a quit is a leave and then the end of the connection, logged as one line
    /// (`left reason=quit`). Logged as `left` when the connection goes on instead.
    unlogged_leave: Option<(String, Instant)>,
}

/// A nick stored inside its session rather than in an allocation of its own: departed
/// sessions are kept by the thousand, and small allocations that outlive the
/// connections around them would keep the allocator from returning those connections'
/// memory after a crowd leaves.
#[derive(Clone, Copy)]
struct InlineNick {
    bytes: [u8; limits::MAX_NICK_LEN],
    len: u8,
}

impl InlineNick {
    /// `None` for a nick longer than any valid one.
    fn new(nick: &str) -> Option<Self> {
        let mut bytes = [0; limits::MAX_NICK_LEN];
        bytes
            .get_mut(..nick.len())?
            .copy_from_slice(nick.as_bytes());
        Some(Self {
            bytes,
            len: u8::try_from(nick.len()).ok()?,
        })
    }

    fn as_str(&self) -> &str {
        // Built from a `&str` cut at its own length, so always valid UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// A member's session: what survives a dropped connection.
struct Session {
    nick: InlineNick,
    secret: [u8; 16],
    /// The connection carrying it, if any.
    conn: Option<ConnId>,
    /// In the room (else departed, and resumable until forgotten).
    in_room: bool,
    /// When it departed, if it did.
    departed_at: Option<Instant>,
    /// The last message id the client used, and the sequence number it got.
    last_msg: (u64, u64),
    /// Private messages this member may still receive.
    private_bucket: TokenBucket,
}

struct Registry {
    history: Arc<History>,
    rules: RoomRules,
    connections: HashMap<ConnId, Connection>,
    sessions: HashMap<SessionId, Session>,
    /// Members by nick, sorted so user lists come out in order.
    members: BTreeMap<String, SessionId>,
    /// The uniqueness keys of the members' nicks ([`protocol::unicode::nick_key`]): no
    /// two members' nicks differ only in case, accents or look-alike letters.
    nick_keys: HashMap<String, SessionId>,
    /// What each member may receive of private messages.
    private_limit: PrivateLimit,
    /// Members that do not read the history: handed every event meant for them.
    fed: BTreeMap<SessionId, ConnId>,
    /// Sessions that left the room without leaving on purpose, oldest first.
    departed: VecDeque<SessionId>,
    /// The last room sequence number handed out.
    seq: u64,
    /// The last session number handed out.
    last_session: SessionId,
    /// Set by [`Command::Shutdown`]: everyone has been told, so departures are no
    /// longer broadcast.
    shutting_down: bool,
    /// Departures still to be told to the room, oldest first. Filled while handling a
    /// command (a broadcast that finds dead members adds theirs) and drained by
    /// [`Registry::handle`] in a loop, so telling the room never recurses.
    departures: VecDeque<(String, SessionId, LeaveReason)>,
    /// Returns memory to the system after a crowd leaves.
    memory: MemoryKeeper,
    /// Where room events are encoded, side by side.
    frames: FrameArena,
    /// Bounds the log lines about refused joins.
    refusal_log: LogLimiter,
}

impl Registry {
    fn new(history: Arc<History>, rules: RoomRules) -> Self {
        Self {
            seq: history.head(),
            history,
            rules,
            connections: HashMap::new(),
            sessions: HashMap::new(),
            members: BTreeMap::new(),
            nick_keys: HashMap::new(),
            private_limit: PrivateLimit::default(),
            fed: BTreeMap::new(),
            departed: VecDeque::new(),
            last_session: SERVER_SESSION,
            shutting_down: false,
            departures: VecDeque::new(),
            memory: MemoryKeeper::default(),
            frames: FrameArena::default(),
            refusal_log: LogLimiter::new(REFUSAL_LOG_RATE, REFUSAL_LOG_BURST),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.recv().await {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: Command) {
        self.apply(command);
        // Each announcement may find more dead members, which join the end of the list;
        // every member leaves at most once, so this ends.
        while let Some((nick, session, reason)) = self.departures.pop_front() {
            self.broadcast(EventKind::Left { nick, reason }, session);
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Attach { id, peer } => {
                let connection = Connection {
                    peer,
                    session: None,
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
                    Some(c) => (c.peer.node().to_string(), c.closed, c.unlogged_leave.take()),
                    None => (String::new(), true, None),
                };
                if let Some(session) = self.session_of(id) {
                    if let Some(nick) = self.remove_member(session, reason) {
                        log_left(&nick, &node, reason);
                        told = true;
                    }
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.conn = None;
                    }
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
                let (users, more) = self.user_list(usize::MAX);
                self.reply(id, Reply::Users { users, more });
            }
            Command::Tick => self.tick(),
            Command::Sweep => self.sweep(),
            Command::Shutdown { done } => {
                tracing::info!(
                    members = self.members.len(),
                    connections = self.connections.len(),
                    "server shutting down"
                );
                self.shutting_down = true;
                // Everyone leaves now, so that every `left` is logged before `bye`.
                let ids: Vec<ConnId> = self.connections.keys().copied().collect();
                for id in ids {
                    self.drop_connection(id, LeaveReason::ServerShutdown);
                }
                let _ = done.send(());
            }
        }
    }

    /// The session a connection carries, if it is in the room.
    fn member_session(&self, id: ConnId) -> Option<SessionId> {
        self.session_of(id)
            .filter(|s| self.sessions.get(s).is_some_and(|s| s.in_room))
    }

    fn session_of(&self, id: ConnId) -> Option<SessionId> {
        self.connections.get(&id)?.session
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
                .is_some_and(|(_, at)| now.duration_since(*at) >= QUIT_WINDOW)
                && let Some((nick, _)) = connection.unlogged_leave.take()
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
        let window = self.rules.resume_window;
        while let Some(&oldest) = self.departed.front() {
            let expired = self.sessions.get(&oldest).is_none_or(|s| {
                s.in_room || s.departed_at.is_some_and(|at| at.elapsed() >= window)
            });
            if !expired {
                break;
            }
            self.departed.pop_front();
            if self.sessions.get(&oldest).is_some_and(|s| !s.in_room) {
                self.forget(oldest);
            }
        }
        self.memory
            .observe(self.connections.len() + self.sessions.len());
        if self.connections.capacity() > 4 * self.connections.len().max(64) {
            self.connections.shrink_to_fit();
        }
        if self.sessions.capacity() > 4 * self.sessions.len().max(64) {
            self.sessions.shrink_to_fit();
            self.departed.shrink_to_fit();
        }
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
            && let Some((nick, _)) = connection.unlogged_leave.take()
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
        let leave = connection.unlogged_leave.take();
        if let Some((nick, _)) = leave {
            log_left(&nick, &node, LeaveReason::Left);
        }
        let session = connection.session;
        match session.and_then(|session| self.remove_member(session, reason)) {
            Some(nick) => log_left(&nick, &node, reason),
            None => tracing::info!(%node, reason = reason.describe(), "disconnected"),
        }
    }

    /// The members' nicks, at most `most` of them and as far as
    /// [`limits::MAX_LISTED_NICK_BYTES`] allows, and how many were left out.
    fn user_list(&self, most: usize) -> (Vec<String>, u32) {
        let mut budget = limits::MAX_LISTED_NICK_BYTES;
        let users: Vec<String> = self
            .members
            .keys()
            .take(most)
            .take_while(|nick| {
                let cost = limits::listed_nick_cost(nick);
                let fits = cost <= budget;
                budget = budget.saturating_sub(cost);
                fits
            })
            .cloned()
            .collect();
        let more = self.members.len() - users.len();
        (users, u32::try_from(more).unwrap_or(u32::MAX))
    }

    fn new_session(&mut self, nick: InlineNick, conn: ConnId) -> (SessionId, SessionTicket) {
        self.last_session += 1;
        let id = self.last_session;
        let secret: [u8; 16] = rand::random();
        self.sessions.insert(
            id,
            Session {
                nick,
                secret,
                conn: Some(conn),
                in_room: true,
                departed_at: None,
                last_msg: (0, 0),
                private_bucket: TokenBucket::new(self.private_limit.rate, self.private_limit.burst),
            },
        );
        (id, SessionTicket { id, secret })
    }

    fn join(&mut self, id: ConnId, nick: String, backlog: u16) {
        self.log_leave(id);
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if let Some(session) = connection.session.and_then(|s| self.sessions.get(&s)) {
            let nick = session.nick.as_str().to_string();
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
            Ok(nick) if self.nick_keys.contains_key(&unicode::nick_key(&nick)) => {
                Err(Reply::NickInUse)
            }
            Ok(nick) => {
                InlineNick::new(&nick)
                    .map(|inline| (nick, inline))
                    .ok_or(Reply::InvalidNick {
                        reason: format!("nick is longer than {} bytes", limits::MAX_NICK_LEN),
                    })
            }
        };
        let (nick, inline) = match checked {
            Ok(checked) => checked,
            Err(reply) => {
                self.log_join_refused(id, &nick, &reply);
                self.reply(id, reply);
                return;
            }
        };
        let peer = Arc::clone(&connection.peer);
        tracing::info!(%nick, node = %peer.node(), "joined");
        let (session, ticket) = self.new_session(inline, id);
        self.nick_keys.insert(unicode::nick_key(&nick), session);
        self.members.insert(nick.clone(), session);
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.session = Some(session);
        }
        let (users, more) = self.user_list(limits::MAX_JOIN_LISTED_USERS);
        let head = self.history.head();
        let joined = Reply::Joined {
            users,
            more,
            ticket,
            epoch: self.history.epoch(),
            seq: head,
            limits: self.rules.flood,
        };
        let backlog = usize::from(backlog.min(limits::MAX_BACKLOG));
        let result = peer
            .reply(joined)
            .and_then(|()| self.start_reading(&peer, id, session, head + 1, backlog));
        if let Err(e) = result {
            self.delivery_failed(id, e);
        }
        self.broadcast(EventKind::Joined { nick }, session);
    }

    /// Starts the room's events for a member: the backlog, then the history from `from`
    /// (or, for a peer that does not read it, event by event).
    fn start_reading(
        &mut self,
        peer: &Arc<dyn Peer>,
        id: ConnId,
        session: SessionId,
        from: u64,
        backlog: usize,
    ) -> Result<(), DeliveryError> {
        if peer.reads_history() {
            peer.send_frames(self.history.backlog(backlog))?;
            peer.subscribe(session, from)
        } else {
            self.fed.insert(session, id);
            Ok(())
        }
    }

    fn resume(&mut self, id: ConnId, ticket: SessionTicket, epoch: u64, last_seq: u64) {
        self.log_leave(id);
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        let failure = if connection.session.is_some() {
            Some(ResumeFailure::AlreadyJoined)
        } else if epoch != self.history.epoch() {
            Some(ResumeFailure::EpochChanged)
        } else {
            match self.sessions.get(&ticket.id) {
                Some(s) if bool::from(s.secret.ct_eq(&ticket.secret)) => {
                    let key = unicode::nick_key(s.nick.as_str());
                    let nick_taken = !s.in_room && self.nick_keys.contains_key(&key);
                    nick_taken.then_some(ResumeFailure::NickInUse)
                }
                _ => Some(ResumeFailure::UnknownSession),
            }
        };
        if let Some(reason) = failure {
            tracing::debug!(?reason, "resume refused");
            self.reply(id, Reply::ResumeFailed { reason });
            return;
        }
        let session_id = ticket.id;
        let peer = Arc::clone(&connection.peer);
        // A stale connection of the same session (its client is gone but the server has
        // not noticed yet) is replaced at once, without telling the room.
        let stale = self.sessions.get(&session_id).and_then(|s| s.conn);
        if let Some(old) = stale
            && let Some(old_connection) = self.connections.get_mut(&old)
        {
            old_connection.session = None;
            if !old_connection.closed {
                old_connection.closed = true;
                old_connection.peer.close(LeaveReason::ConnectionLost);
            }
            self.fed.remove(&session_id);
        }
        let Some(session) = self.sessions.get_mut(&session_id) else {
            return;
        };
        session.conn = Some(id);
        let rejoined = !session.in_room;
        session.in_room = true;
        session.departed_at = None;
        let nick = session.nick.as_str().to_string();
        if rejoined {
            self.departed.retain(|s| *s != session_id);
            self.nick_keys.insert(unicode::nick_key(&nick), session_id);
            self.members.insert(nick.clone(), session_id);
        }
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.session = Some(session_id);
        }
        tracing::info!(%nick, node = %peer.node(), rejoined, "resumed");
        let missed = self
            .history
            .missed(session_id, last_seq.min(self.history.head()));
        let (users, more) = self.user_list(limits::MAX_JOIN_LISTED_USERS);
        let resumed = Reply::Resumed {
            missed: missed.kept,
            lost: missed.lost,
            rejoined,
            users,
            more,
            seq: missed.head,
            limits: self.rules.flood,
        };
        let result = peer
            .reply(resumed)
            .and_then(|()| self.start_reading(&peer, id, session_id, missed.from, 0));
        if let Err(e) = result {
            self.delivery_failed(id, e);
        }
        if rejoined {
            self.broadcast(EventKind::Joined { nick }, session_id);
        }
    }

    fn leave(&mut self, id: ConnId) {
        let Some(session) = self.member_session(id) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        if let Some(nick) = self.remove_member(session, LeaveReason::Left)
            && let Some(connection) = self.connections.get_mut(&id)
        {
            connection.unlogged_leave = Some((nick, Instant::now()));
        }
        self.reply(id, Reply::Left);
        if let Some(connection) = self.connections.get(&id)
            && let Err(e) = connection.peer.unsubscribe()
        {
            self.delivery_failed(id, e);
        }
    }

    /// For a message with the client's id `msg_id` from `session`: `None` to go ahead, or
    /// the acknowledgement of a message already sent.
    fn repeated(&self, session: SessionId, msg_id: u64) -> Option<Reply> {
        let (last, seq) = self.sessions.get(&session)?.last_msg;
        let seq = if msg_id == last { seq } else { 0 };
        (msg_id != 0 && msg_id <= last).then_some(Reply::Sent { id: msg_id, seq })
    }

    /// Records that `msg_id` became `seq` and acknowledges it.
    fn sent(&mut self, id: ConnId, session: SessionId, msg_id: u64, seq: u64) {
        if msg_id == 0 {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.last_msg = (msg_id, seq);
        }
        self.reply(id, Reply::Sent { id: msg_id, seq });
    }

    fn say(&mut self, id: ConnId, msg_id: u64, text: String) {
        let Some(session) = self.member_session(id) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        if let Some(ack) = self.repeated(session, msg_id) {
            self.reply(id, ack);
            return;
        }
        let from = self.sessions[&session].nick.as_str().to_string();
        let seq = self.broadcast(EventKind::Message { from, text }, session);
        self.sent(id, session, msg_id, seq);
    }

    fn private(&mut self, id: ConnId, msg_id: u64, to: String, text: String) {
        let Some(session) = self.member_session(id) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        if let Some(ack) = self.repeated(session, msg_id) {
            self.reply(id, ack);
            return;
        }
        // Found by its key, so `/pm Ann` reaches `ann`.
        let Some(&target) = self.nick_keys.get(&unicode::nick_key(&to)) else {
            self.reply(id, Reply::NoSuchUser { nick: to });
            return;
        };
        let within = self
            .sessions
            .get_mut(&target)
            .is_none_or(|s| s.private_bucket.check(std::time::Instant::now()) == Verdict::Allow);
        if !within {
            self.reply(id, Reply::RecipientBusy { nick: to });
            return;
        }
        let from = self.sessions[&session].nick.as_str().to_string();
        let seq = self.publish(
            EventKind::Private { from, text },
            Audience::One(target),
            EntryKind::Private,
        );
        self.sent(id, session, msg_id, seq);
    }

    /// Sends `kind` to every member but the session `except`. Returns its sequence
    /// number.
    fn broadcast(&mut self, kind: EventKind, except: SessionId) -> u64 {
        let entry = match kind {
            EventKind::Message { .. } => EntryKind::Message,
            EventKind::Joined { .. } | EventKind::Left { .. } => EntryKind::Presence,
            EventKind::Private { .. } => EntryKind::Private,
            EventKind::Notice { .. } => EntryKind::Notice,
        };
        self.publish(kind, Audience::Room { except }, entry)
    }

    /// Numbers `kind`, appends it to the history (where native members' writers find it)
    /// and hands it to the fed members it is for. Members whose delivery fails are
    /// dropped; their departures are queued, not broadcast from here.
    fn publish(&mut self, kind: EventKind, audience: Audience, entry: EntryKind) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let event = match RoomEvent::new_in(Event { seq, kind }, &mut self.frames) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a room event");
                return seq;
            }
        };
        self.history
            .append(seq, event.native_frame().clone(), audience, entry);
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
        seq
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

    /// Takes `session` out of the room and queues the announcement to the others (see
    /// [`Registry::departures`]); its nick, or `None` if it was not in the room. A
    /// session that left on purpose is forgotten; any other stays resumable for a while.
    /// The caller logs it (see [`log_left`]).
    fn remove_member(&mut self, session: SessionId, reason: LeaveReason) -> Option<String> {
        let s = self.sessions.get_mut(&session).filter(|s| s.in_room)?;
        s.in_room = false;
        s.departed_at = Some(Instant::now());
        let nick = s.nick.as_str().to_string();
        self.members.remove(&nick);
        self.nick_keys.remove(&unicode::nick_key(&nick));
        self.fed.remove(&session);
        if reason == LeaveReason::Left {
            self.forget(session);
        } else {
            self.departed.push_back(session);
            while self.departed.len() > self.rules.max_departed {
                if let Some(oldest) = self.departed.pop_front() {
                    self.forget(oldest);
                }
            }
        }
        if !self.shutting_down {
            self.departures.push_back((nick.clone(), session, reason));
        }
        Some(nick)
    }

    /// Forgets a session that is not in the room.
    fn forget(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.remove(&session)
            && let Some(conn) = s.conn
            && let Some(connection) = self.connections.get_mut(&conn)
        {
            connection.session = None;
        }
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
    use protocol::{NodeName, ServerMessage};

    use super::*;

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
        Registry::new(
            Arc::new(History::new(10_000, 1 << 24, 1)),
            RoomRules::default(),
        )
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
                registry.members.len()
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
        assert!(registry.members.contains_key("ann"));
    }
}
