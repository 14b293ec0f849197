//! The messages of an established session, one enum per direction.
//!
//! Calls (join, leave, list users, and failed says or private messages) are answered with
//! a [`ServerMessage::Reply`]; everything that happens in the room arrives as a
//! [`ServerMessage::Event`] carrying the room's sequence number. Both share one stream, so
//! the two are separate variants and a client never confuses an answer with an event.
//!
//! Nothing said is lost across a dropped link: a join gives the client a
//! [`SessionTicket`] and the room's epoch; a reconnecting client presents them with the
//! last sequence number it printed ([`ClientMessage::Resume`]) and the server replays
//! what it missed. Says and private messages carry a client-chosen id and are
//! acknowledged ([`Reply::Sent`]), so a client can send again what was not acknowledged
//! and the server drops the duplicates.

use serde::{Deserialize, Serialize};

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Join the room under `nick` (the original's `connect(nick)`).
    Join {
        /// The nick wanted.
        nick: String,
        /// How many of the room's last messages to receive after the join answer (the
        /// backlog, sent as events older than the join); the server caps it.
        backlog: u16,
    },
    /// Leave the room, keeping the connection (the original's `disconnect(nick)`).
    Leave,
    /// Say `text` to everyone else in the room.
    Say {
        /// The client's id for this message: strictly increasing within a session, so
        /// a message sent again after a reconnect is recognised and not repeated; 0
        /// asks for no acknowledgement and no deduplication.
        id: u64,
        /// The message.
        text: String,
    },
    /// Say `text` to `to` alone.
    Private {
        /// As for [`ClientMessage::Say`].
        id: u64,
        /// The recipient's nick.
        to: String,
        /// The message.
        text: String,
    },
    /// Ask for the nicks in the room.
    ListUsers,
    /// Liveness probe; answered with [`ServerMessage::Pong`].
    Ping,
    /// Answer to a [`ServerMessage::Ping`].
    Pong,
    /// Take back a session after a dropped link: its nick, and every event after
    /// `last_seq` that this session has not seen (answered with [`Reply::Resumed`] or
    /// [`Reply::ResumeFailed`]).
    Resume {
        /// The ticket the join answer gave.
        ticket: SessionTicket,
        /// The room epoch the ticket belongs to.
        epoch: u64,
        /// The sequence number of the last event the client received.
        last_seq: u64,
    },
}

/// Identifies a session across connections; the secret makes it unguessable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTicket {
    /// The session's number.
    pub id: u64,
    /// Random bytes known only to the server and the client.
    pub secret: [u8; 16],
}

/// The server's flood limit, told at join so a client can pace itself within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloodLimits {
    /// Average time between two messages, in microseconds (100,000 for 10 per second).
    pub interval_us: u64,
    /// Messages allowed at once before the average applies.
    pub burst: u32,
}

/// Why a resume was refused; the client then joins afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResumeFailure {
    /// The server does not know the session (it expired, or the ticket is wrong).
    UnknownSession,
    /// The room has another epoch: the server restarted, and what was said while it
    /// was down is not available.
    EpochChanged,
    /// The session had left the room and its nick has been taken since.
    NickInUse,
    /// This connection is in the room already.
    AlreadyJoined,
    /// The room's store (a cluster's Redis) cannot be reached just now; the session is
    /// kept: try again later, here or on another node of the cluster.
    Unavailable,
}

/// What the server sends a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to one of this client's calls.
    Reply(Reply),
    /// Something that happened in the room.
    Event(Event),
    /// Liveness probe (a *tick*); answer with [`ClientMessage::Pong`].
    Ping,
    /// Answer to a [`ClientMessage::Ping`].
    Pong,
    /// The server is closing this connection, for `reason` (shutdown, flooding, silence,
    /// a protocol error); nothing follows.
    Closing {
        /// Why.
        reason: LeaveReason,
    },
}

/// Answers to calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Joined; `users` is the first of everyone in the room, this client included
    /// (see [`crate::limits::MAX_JOIN_LISTED_USERS`]); `more` counts the rest. The
    /// backlog, if asked for, follows as events numbered before `seq`.
    Joined {
        /// Nicks in the room, sorted.
        #[serde(deserialize_with = "bounded_users::deserialize")]
        users: Vec<String>,
        /// Members left out of `users` to keep the reply small.
        more: u32,
        /// The session's ticket, for resuming after a dropped link.
        ticket: SessionTicket,
        /// The room's epoch (changes when the server restarts).
        epoch: u64,
        /// The room's sequence number at the join: later events are live.
        seq: u64,
        /// The flood limit in force for this connection.
        limits: FloodLimits,
    },
    /// Another member has this nick.
    NickInUse,
    /// The nick is reserved (`server`).
    NickNotAllowed,
    /// The nick breaks a rule; `reason` says which.
    InvalidNick {
        /// Human-readable rule.
        reason: String,
    },
    /// This connection is already in the room (as `nick`).
    AlreadyJoined {
        /// The nick this connection holds.
        nick: String,
    },
    /// Left the room; the connection stays open and may join again.
    Left,
    /// The call needs a joined connection and this one is not in the room.
    NotJoined,
    /// The nicks in the room, sorted, as far as fits in one reply; `more` counts the rest.
    Users {
        /// Nicks in the room.
        #[serde(deserialize_with = "bounded_users::deserialize")]
        users: Vec<String>,
        /// Members left out of `users` to keep the reply small.
        more: u32,
    },
    /// A private message was addressed to a nick that is not in the room.
    NoSuchUser {
        /// The nick asked for.
        nick: String,
    },
    /// A message text was refused; `reason` says why. Nothing was sent.
    InvalidText {
        /// Human-readable rule.
        reason: String,
    },
    /// The client sends faster than the flood limit; this message was dropped.
    SlowDown,
    /// The say or private message with this id is in the room's order as `seq` (0 when
    /// it was a duplicate of one already sent, whose number is not kept).
    Sent {
        /// The client's id of the message.
        id: u64,
        /// Its room sequence number.
        seq: u64,
    },
    /// The session is back: the missed events follow, oldest first, then live ones.
    Resumed {
        /// Events that follow as missed (room events and private messages).
        missed: u32,
        /// Events that were missed but are no longer in the history.
        lost: u64,
        /// The session had left the room (its departure was announced) and has joined
        /// again; the others saw it come back.
        rejoined: bool,
        /// Nicks in the room, as in [`Reply::Joined`].
        #[serde(deserialize_with = "bounded_users::deserialize")]
        users: Vec<String>,
        /// Members left out of `users`.
        more: u32,
        /// The room's sequence number at the resume: the missed events are those up to
        /// it, later ones are live.
        seq: u64,
        /// The flood limit in force.
        limits: FloodLimits,
    },
    /// The session could not be resumed; join again.
    ResumeFailed {
        /// Why.
        reason: ResumeFailure,
    },
    /// `nick` is being sent more private messages than it may receive; this one was
    /// dropped (so that others cannot push it past its send queue).
    RecipientBusy {
        /// The recipient.
        nick: String,
    },
    /// The room's store (a cluster's Redis) cannot be reached just now. For a say or
    /// private message with id `id`: `held` means the server keeps it and sends it, in
    /// order, when the store is back (its [`Reply::Sent`] follows then); otherwise it
    /// was refused and nothing was sent. For a join (`id` 0, not held): join again later.
    Unavailable {
        /// The client's id of the message (0: not a message, or one without an id).
        id: u64,
        /// Kept by the server and sent later (else refused).
        held: bool,
    },
}

/// A room event and its place in the room's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The room's sequence number: strictly increasing per room, so a client can tell
    /// what it missed.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of room event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// `from` said `text` to the room.
    Message {
        /// Sender's nick.
        from: String,
        /// The message.
        text: String,
    },
    /// `from` said `text` to this client alone.
    Private {
        /// Sender's nick.
        from: String,
        /// The message.
        text: String,
    },
    /// `nick` joined the room.
    Joined {
        /// The new member.
        nick: String,
    },
    /// `nick` left the room, for `reason`.
    Left {
        /// The former member.
        nick: String,
        /// Why.
        reason: LeaveReason,
    },
    /// A notice from the server to the whole room.
    Notice {
        /// The notice.
        text: String,
    },
}

/// Why a member left the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// Left with `/leave`.
    Left,
    /// Quit (closed the connection cleanly).
    Quit,
    /// The connection broke or was closed without leaving.
    ConnectionLost,
    /// Silent for too long (no answer to ticks).
    Timeout,
    /// Did not read fast enough: the send queue filled up.
    SendQueueExceeded,
    /// Kept sending over the flood limit.
    Flooding,
    /// Sent something the protocol does not allow.
    ProtocolError,
    /// The server shut down.
    ServerShutdown,
}

impl LeaveReason {
    /// A few words for users.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Quit => "quit",
            Self::ConnectionLost => "connection lost",
            Self::Timeout => "timed out",
            Self::SendQueueExceeded => "send queue exceeded",
            Self::Flooding => "excess flood",
            Self::ProtocolError => "protocol error",
            Self::ServerShutdown => "server shutting down",
        }
    }
}

/// Decoding of user lists that never trusts the claimed length.
///
/// serde's `Vec` preallocates from the length a peer claims (up to 1 MiB), before a single
/// entry is read; a hostile server could make every client allocate that from a 10-byte
/// frame. Here the list grows only with entries actually decoded, and stops at
/// [`MAX_LISTED_USERS`], more than any list the server sends.
mod bounded_users {
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{Error, SeqAccess, Visitor};

    use crate::limits::MAX_LISTED_USERS;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<String>, D::Error> {
        deserializer.deserialize_seq(UserList)
    }

    struct UserList;

    impl<'de> Visitor<'de> for UserList {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_LISTED_USERS} nicks")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut users = Vec::new();
            while let Some(nick) = seq.next_element::<String>()? {
                if users.len() == MAX_LISTED_USERS {
                    return Err(A::Error::custom("user list too long"));
                }
                users.push(nick);
            }
            Ok(users)
        }
    }
}
