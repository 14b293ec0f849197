//! The messages of an established session, one enum per direction.
//!
//! Calls (join, leave, list users, and failed says or private messages) are answered with
//! a [`ServerMessage::Reply`]; everything that happens in the room arrives as a
//! [`ServerMessage::Event`] carrying the room's sequence number. Both share one stream, so
//! the two are separate variants and a client never confuses an answer with an event.

use serde::{Deserialize, Serialize};

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// Join the room under `nick` (the original's `connect(nick)`).
    Join {
        /// The nick wanted.
        nick: String,
    },
    /// Leave the room, keeping the connection (the original's `disconnect(nick)`).
    Leave,
    /// Say `text` to everyone else in the room.
    Say {
        /// The message.
        text: String,
    },
    /// Say `text` to `to` alone.
    Private {
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
    /// Joined; `users` is everyone in the room, this client included, as far as fits
    /// in one reply (see [`crate::limits::MAX_LISTED_NICK_BYTES`]); `more` counts the
    /// rest.
    Joined {
        /// Nicks in the room, sorted.
        #[serde(deserialize_with = "bounded_users::deserialize")]
        users: Vec<String>,
        /// Members left out of `users` to keep the reply small.
        more: u32,
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
    /// `nick` is being sent more private messages than it may receive; this one was
    /// dropped (so that others cannot push it past its send queue).
    RecipientBusy {
        /// The recipient.
        nick: String,
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
