//! The registry's narrow interface to the room's state: one trait, two backends.
//!
//! The registry ([`crate::registry`]) owns the connections and decides what a request
//! means; a [`Backend`] owns what makes the room one room: the order of its events,
//! who is in it and which nicks are taken, the sessions that can be resumed, and the
//! history beyond this node. The registry never awaits, so a backend never answers
//! by returning: every call pushes [`Effect`]s onto a queue that the registry drains
//! in a loop after each command.
//!
//! - [`local::LocalBackend`] (the default, one node) decides at once: a call pushes its
//!   answer and the ordered entry it caused before it returns.
//! - [`redis::RedisBackend`] (`--cluster`) runs each call as a task against Redis
//!   ([`crate::cluster`]); the task's result comes back into the registry's mailbox as
//!   [`Mail`], which the registry hands, unopened, to [`Backend::on_mail`], which
//!   pushes the effects then. Room events reach the node only through its reader of
//!   the Redis stream, in Redis's order, as [`Effect::Entry`].
//!
//! Either way the registry applies [`Ordered`] entries one after another, in sequence:
//! it updates its view of the members, appends the event to the local history (which
//! its members' writers read), hands it to fed peers, and acknowledges the sender if
//! the sender is here. Nothing else changes the room, so both backends go through the
//! same hot path and every node's members see the same events in the same order.

pub mod local;
pub mod redis;

use std::any::Any;
use std::collections::{BTreeMap, HashMap, VecDeque};

use protocol::limits;
use protocol::{EventKind, LeaveReason, Reply, SessionTicket};

use crate::history::{Audience, EntryKind, SessionId};
use crate::peer::{ConnId, RoomEvent};

/// What the registry asks of the room. Requests are validated by the registry first
/// (a normalised nick, a member's session); the backend decides what only it can.
#[derive(Debug)]
pub enum Request {
    /// Join connection `conn` as a new session named `nick`.
    Join {
        /// The connection.
        conn: ConnId,
        /// The nick, normalised.
        nick: String,
        /// Its uniqueness key ([`protocol::unicode::nick_key`]).
        key: String,
    },
    /// Give connection `conn` back the session of `ticket`.
    Resume {
        /// The new connection.
        conn: ConnId,
        /// The session's ticket.
        ticket: SessionTicket,
        /// The epoch the ticket is from.
        epoch: u64,
        /// The last event the client saw.
        last_seq: u64,
        /// The oldest event the local history still holds: what the client missed
        /// before it, a backend that has it hands over with the answer.
        oldest_local: u64,
    },
    /// Number and add an event from a member (or the server).
    Append {
        /// The connection that sent it (for refusals).
        conn: ConnId,
        /// The sender's session.
        session: SessionId,
        /// The client's id of the message (0: none).
        msg_id: u64,
        /// The event, without its number.
        kind: EventKind,
        /// Who receives it.
        audience: Audience,
    },
    /// Take `session` out of the room (it stays resumable unless it left on purpose).
    Depart {
        /// The session.
        session: SessionId,
        /// Its nick.
        nick: String,
        /// Why.
        reason: LeaveReason,
    },
}

/// What a backend decided, for the registry to carry out, in order.
#[derive(Debug)]
pub enum Effect {
    /// Answer connection `conn`.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The answer.
        reply: Reply,
    },
    /// The join or resume connection `conn` asked for was refused with `reply`.
    Refused {
        /// The connection.
        conn: ConnId,
        /// The refusal.
        reply: Reply,
    },
    /// A join was accepted: connection `conn` carries `session` now, and the room
    /// hears of it at number `seq` (the registry answers once it has applied `seq`).
    Joined {
        /// The connection that asked.
        conn: ConnId,
        /// The new session.
        session: SessionId,
        /// Its ticket.
        ticket: SessionTicket,
        /// Its nick.
        nick: String,
        /// The join's number.
        seq: u64,
    },
    /// A resume was accepted.
    Resumed(Box<Resumed>),
    /// The room's next entry, in order.
    Entry(Ordered),
    /// Entries `from..=to` will never be applied on this node (a reader that fell
    /// behind the stream's trimming): members that had not read them lose them.
    Lost {
        /// The first number lost.
        from: u64,
        /// The last number lost.
        to: u64,
    },
    /// The room as this node knew it is gone (the store lost it, or this node's lease
    /// lapsed): close every member's connection (their clients resume) and forget the
    /// members until [`Effect::Start`].
    Offline,
    /// Start (again) from a snapshot of the room.
    Start(Box<Snapshot>),
}

/// A resume the backend accepted.
#[derive(Debug)]
pub struct Resumed {
    /// The connection that asked.
    pub conn: ConnId,
    /// The session.
    pub session: SessionId,
    /// Its nick.
    pub nick: String,
    /// It had left the room and comes back (the room hears of it at `seq`).
    pub rejoined: bool,
    /// The number of what the resume appended (its join, or a note to the node that
    /// held it), 0 if nothing: the registry answers once it has applied it.
    pub seq: u64,
    /// The last event the client saw.
    pub last_seq: u64,
    /// Events the client missed that are older than the local history: those
    /// numbered after `last_seq` up to `older_upto`, as far as the backend had them.
    pub older: Vec<Ordered>,
    /// The last number `older` covers (`last_seq` when it covers nothing).
    pub older_upto: u64,
    /// Numbers the client missed that neither the local history nor the backend has.
    pub older_lost: u64,
}

/// The room at one number, for a node that starts.
#[derive(Debug)]
pub struct Snapshot {
    /// The number it is at.
    pub head: u64,
    /// Everyone in the room at `head`.
    pub members: Vec<(SessionId, String)>,
    /// The last entries up to `head`, oldest first: the start of the local history.
    pub recent: Vec<Ordered>,
}

/// One entry of the room's order.
#[derive(Debug)]
pub struct Ordered {
    /// Its sequence number.
    pub seq: u64,
    /// What it holds.
    pub body: Body,
}

/// What an ordered entry holds.
// Nearly every entry is an event: boxing it would cost an allocation per event for
// the sake of the rare others.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Body {
    /// A room event.
    Event {
        /// The event, numbered and encoded.
        event: RoomEvent,
        /// Who receives it.
        audience: Audience,
        /// What it is.
        kind: EntryKind,
        /// Where it came from.
        origin: Origin,
        /// The membership change it announces.
        change: Option<Change>,
    },
    /// `session` moved to another node; `from_here`: it was this node's, whose
    /// connection of it is stale now.
    TakenOver {
        /// The session.
        session: SessionId,
        /// It was held here.
        from_here: bool,
    },
    /// A number used by something this node cannot read: nothing to deliver.
    Skip,
}

/// Who appended an event.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// This node did (so it acknowledges the sender).
    pub here: bool,
    /// The sender's session (0: the server).
    pub session: SessionId,
    /// The client's message id (0: none).
    pub msg_id: u64,
}

/// A change of membership, applied with its entry.
#[derive(Debug, Clone)]
pub enum Change {
    /// `session` joined as `nick`, on node `node`.
    Joined {
        /// The session.
        session: SessionId,
        /// Its nick.
        nick: String,
        /// The node it is on (for logs).
        node: String,
    },
    /// `session`, known as `nick`, left.
    Left {
        /// The session.
        session: SessionId,
        /// Its nick.
        nick: String,
    },
}

/// A message from a backend's task back to the backend, through the registry's
/// mailbox; only the backend that sent it can open it.
pub struct Mail(Box<dyn Any + Send>);

impl Mail {
    /// Wraps a backend's own message.
    pub fn new<T: Any + Send>(message: T) -> Self {
        Self(Box::new(message))
    }

    /// The message, if it is a `T`.
    pub fn open<T: Any>(self) -> Option<T> {
        self.0.downcast::<T>().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mail")
    }
}

/// Effects decided but not yet carried out, oldest first.
pub type Effects = VecDeque<Effect>;

/// The room's state behind the registry. Every method returns at once; answers are
/// [`Effect`]s pushed onto `fx`, now or after [`Mail`] comes back.
pub trait Backend: Send {
    /// The room's epoch as clients see it (0 while there is none, before a cluster
    /// node has reached its store).
    fn epoch(&self) -> u64;
    /// Handles a request; `view` is the room as the registry has applied it so far.
    fn submit(&mut self, request: Request, view: &View, fx: &mut Effects);
    /// Opens mail from this backend's own tasks.
    fn on_mail(&mut self, mail: Mail, view: &View, fx: &mut Effects);
    /// A liveness tick (leases, dead nodes).
    fn tick(&mut self, fx: &mut Effects);
    /// The periodic sweep (forgets sessions past the resume window).
    fn sweep(&mut self);
    /// The server is stopping: let go of the room; `done` is sent once that is done.
    fn shutdown(&mut self, done: tokio::sync::oneshot::Sender<()>);
    /// Sessions it keeps in memory (for the allocator's bookkeeping).
    fn kept_sessions(&self) -> usize;
}

/// The room as the registry applied it: the members, their nicks' keys, and the last
/// number applied. Built only from ordered entries (and a starting snapshot).
#[derive(Debug, Default)]
pub struct View {
    /// Members by nick, sorted so user lists come out in order.
    members: BTreeMap<String, SessionId>,
    /// Members' nicks by session.
    nicks: HashMap<SessionId, String>,
    /// The uniqueness keys of the members' nicks: no two members' nicks differ only
    /// in case, accents or look-alike letters.
    keys: HashMap<String, SessionId>,
    /// The last number applied.
    applied: u64,
}

impl View {
    /// The member holding a nick's uniqueness key.
    pub fn holder_of_key(&self, key: &str) -> Option<SessionId> {
        self.keys.get(key).copied()
    }

    /// The nick of a member.
    pub fn nick_of(&self, session: SessionId) -> Option<&str> {
        self.nicks.get(&session).map(String::as_str)
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.nicks.len()
    }

    /// Gives back the maps' room once the crowd that grew them has left (a hash map
    /// keeps its capacity: 10,000 members' worth is about a megabyte).
    pub fn shrink_if_sparse(&mut self) {
        if self.nicks.capacity() > 4 * self.nicks.len().max(64) {
            self.nicks.shrink_to_fit();
            self.keys.shrink_to_fit();
        }
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.nicks.is_empty()
    }

    /// Whether `nick` is a member's nick (exactly).
    pub fn contains_nick(&self, nick: &str) -> bool {
        self.members.contains_key(nick)
    }

    /// The last number applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub(crate) fn set_applied(&mut self, seq: u64) {
        self.applied = seq;
    }

    pub(crate) fn insert(&mut self, session: SessionId, nick: String) {
        self.remove(session);
        // A nick's key held by another session (possible only if the store's members
        // disagree with themselves) goes to the newest join.
        let key = protocol::unicode::nick_key(&nick);
        if let Some(old) = self.keys.insert(key, session) {
            self.remove_nick_of(old);
        }
        self.members.insert(nick.clone(), session);
        self.nicks.insert(session, nick);
    }

    fn remove_nick_of(&mut self, session: SessionId) {
        if let Some(nick) = self.nicks.remove(&session)
            && self.members.get(&nick) == Some(&session)
        {
            self.members.remove(&nick);
        }
    }

    /// Removes a member; returns its nick.
    pub(crate) fn remove(&mut self, session: SessionId) -> Option<String> {
        let nick = self.nicks.remove(&session)?;
        if self.members.get(&nick) == Some(&session) {
            self.members.remove(&nick);
        }
        let key = protocol::unicode::nick_key(&nick);
        if self.keys.get(&key) == Some(&session) {
            self.keys.remove(&key);
        }
        Some(nick)
    }

    pub(crate) fn clear(&mut self) {
        self.members.clear();
        self.nicks.clear();
        self.keys.clear();
    }

    /// The members' nicks, at most `most` of them and as far as
    /// [`limits::MAX_LISTED_NICK_BYTES`] allows, and how many were left out.
    pub fn user_list(&self, most: usize) -> (Vec<String>, u32) {
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
}

/// A nick stored inside its session rather than in an allocation of its own: departed
/// sessions are kept by the thousand, and small allocations that outlive the
/// connections around them would keep the allocator from returning those connections'
/// memory after a crowd leaves.
#[derive(Clone, Copy)]
pub(crate) struct InlineNick {
    bytes: [u8; limits::MAX_NICK_LEN],
    len: u8,
}

impl InlineNick {
    /// `None` for a nick longer than any valid one.
    pub(crate) fn new(nick: &str) -> Option<Self> {
        let mut bytes = [0; limits::MAX_NICK_LEN];
        bytes
            .get_mut(..nick.len())?
            .copy_from_slice(nick.as_bytes());
        Some(Self {
            bytes,
            len: u8::try_from(nick.len()).ok()?,
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        // Built from a `&str` cut at its own length, so always valid UTF-8.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// The kind of history entry an event is.
pub fn entry_kind(kind: &EventKind) -> EntryKind {
    match kind {
        EventKind::Message { .. } => EntryKind::Message,
        EventKind::Joined { .. } | EventKind::Left { .. } => EntryKind::Presence,
        EventKind::Private { .. } => EntryKind::Private,
        EventKind::Notice { .. } => EntryKind::Notice,
    }
}
