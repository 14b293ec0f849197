//! A nick joined from a BEAM node: a [`Peer`] of its own (its own registry `ConnId`)
//! that speaks through its node's [`Link`].
//!
//! Room events become `{'$gen_cast', {message, Nick, Body}}` casts to the node's
//! `message_handler`. The frame is the same for every BEAM recipient (the REG_SEND
//! control names `message_handler`, and the sender is our one server pid), so it is
//! encoded once per event and cached on the [`RoomEvent`]. Answers from the registry
//! are matched with the calls waiting for them and sent as `{Tag, Reply}`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use protocol::erlang::dist;
use protocol::erlang::exmessenger::{self, HANDLER_PROCESS, PRIVATE_SUFFIX, SERVER_NICK};
use protocol::erlang::term::{Pid, Term};
use protocol::{EventKind, LeaveReason, NodeName, Reply, ServerMessage};

use crate::erlang::link::Link;
use crate::peer::{DeliveryError, Peer, RoomEvent};
use crate::registry::ConnId;

/// A call (or a cast with an answer) waiting for the registry's reply.
#[derive(Debug)]
pub enum Pending {
    /// `{connect, Nick}`: answered by the join's reply.
    Connect {
        /// The caller.
        from: Pid,
        /// The tag to echo.
        tag: Term,
        /// The nick asked for.
        nick: String,
    },
    /// `{disconnect, Nick}` for this member's nick: answered by the leave's reply.
    Disconnect {
        /// The caller.
        from: Pid,
        /// The tag to echo.
        tag: Term,
    },
    /// `{disconnect, Nick}` for a nick this node does not own: the user list says
    /// whether someone else has it (`not_allowed`) or nobody does (`user_not_found`).
    DisconnectOther {
        /// The caller.
        from: Pid,
        /// The tag to echo.
        tag: Term,
        /// The nick named.
        nick: String,
    },
    /// `{list_users, Nick}`: the answer is a line from `server`.
    ListUsers,
}

impl Pending {
    /// Whether `reply` is the answer to this.
    fn answered_by(&self, reply: &Reply) -> bool {
        match self {
            Self::Connect { .. } => matches!(
                reply,
                Reply::Joined { .. }
                    | Reply::NickInUse
                    | Reply::NickNotAllowed
                    | Reply::InvalidNick { .. }
                    | Reply::AlreadyJoined { .. }
                    // A join refused while a cluster's Redis is unreachable.
                    | Reply::Unavailable { id: 0, .. }
            ),
            Self::Disconnect { .. } => matches!(reply, Reply::Left | Reply::NotJoined),
            Self::DisconnectOther { .. } | Self::ListUsers => {
                matches!(reply, Reply::Users { .. })
            }
        }
    }
}

/// What the reader knows about a member, kept up to date by the registry's answers.
#[derive(Debug, Default)]
pub struct MemberState {
    /// The nick, once the registry said it joined.
    pub nick: Option<String>,
    /// The nick a join is under way for.
    pub joining: Option<String>,
    /// Calls waiting for the registry, oldest first.
    pub pending: VecDeque<Pending>,
}

impl MemberState {
    /// Free for a new join: no nick, nothing under way.
    pub fn is_idle(&self) -> bool {
        self.nick.is_none() && self.joining.is_none() && self.pending.is_empty()
    }

    /// Whether this member holds (or is joining as) `nick`.
    pub fn speaks_as(&self, nick: &str) -> bool {
        self.nick.as_deref() == Some(nick) || self.joining.as_deref() == Some(nick)
    }
}

/// One nick of a BEAM node.
#[derive(Debug)]
pub struct BeamMember {
    id: ConnId,
    link: Arc<Link>,
    state: Mutex<MemberState>,
}

impl BeamMember {
    /// A member with registry id `id`, speaking through `link`.
    pub fn new(id: ConnId, link: Arc<Link>) -> Self {
        Self {
            id,
            link,
            state: Mutex::default(),
        }
    }

    /// Its registry id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Its state, locked.
    pub fn state(&self) -> MutexGuard<'_, MemberState> {
        // Every critical section is a few field updates; a poisoned state is still whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Tells the node's user a line from `server`.
    fn tell_server_line(&self, body: &str) -> Result<(), DeliveryError> {
        self.link.tell(SERVER_NICK, body)
    }
}

/// The `{message, Nick, Body}` a BEAM user sees for a room event.
pub fn event_line(kind: &EventKind) -> (String, String) {
    match kind {
        EventKind::Message { from, text } => (from.clone(), text.clone()),
        EventKind::Private { from, text } => (format!("{from}{PRIVATE_SUFFIX}"), text.clone()),
        EventKind::Joined { nick } => (nick.clone(), exmessenger::joined_body(nick)),
        EventKind::Left { nick, reason } => {
            let why = match reason {
                LeaveReason::Left | LeaveReason::Quit => None,
                other => Some(other.describe()),
            };
            (nick.clone(), exmessenger::left_body(nick, why))
        }
        EventKind::Notice { text } => (SERVER_NICK.to_string(), text.clone()),
    }
}

/// The frame every BEAM recipient of `event` gets, sent by `server_pid`.
fn event_frame(server_pid: &Pid, event: &RoomEvent) -> Bytes {
    let (nick, body) = match event.message() {
        ServerMessage::Event(event) => event_line(&event.kind),
        other => {
            tracing::error!(?other, "a room event that is not an event");
            (SERVER_NICK.to_string(), String::new())
        }
    };
    let message = exmessenger::handler_message(&nick, &body);
    dist::reg_send(server_pid, HANDLER_PROCESS, &message)
}

/// `users: a, b` (and how many more a big room left out).
fn users_line(users: &[String], more: u32) -> String {
    let line = exmessenger::users_body(users);
    if more == 0 {
        line
    } else {
        format!("{line} and {more} more")
    }
}

impl Peer for BeamMember {
    fn deliver(&self, event: &RoomEvent) -> Result<(), DeliveryError> {
        let frame = event
            .beam_frame_cache()
            .get_or_init(|| event_frame(self.link.server_pid(), event));
        self.link.push(frame.clone())
    }

    fn reply(&self, reply: Reply) -> Result<(), DeliveryError> {
        let pending = {
            let mut state = self.state();
            let index = state.pending.iter().position(|p| p.answered_by(&reply));
            let pending = index.and_then(|i| state.pending.remove(i));
            match (&pending, &reply) {
                (Some(Pending::Connect { nick, .. }), Reply::Joined { .. }) => {
                    state.nick = Some(nick.clone());
                    state.joining = None;
                }
                (Some(Pending::Connect { .. }), _) => state.joining = None,
                (Some(Pending::Disconnect { .. }), _) => state.nick = None,
                _ => {}
            }
            pending
        };
        let link = &self.link;
        match (pending, reply) {
            (Some(Pending::Connect { from, tag, .. }), reply) => {
                let answer = match reply {
                    Reply::Joined { users, .. } => exmessenger::connected_reply(&users),
                    Reply::NickNotAllowed | Reply::InvalidNick { .. } => {
                        Term::atom("nick_not_allowed")
                    }
                    _ => Term::atom("nick_in_use"),
                };
                link.answer(&from, tag, answer)
            }
            (Some(Pending::Disconnect { from, tag }), reply) => {
                let answer = match reply {
                    Reply::Left => "ok",
                    _ => "user_not_found",
                };
                link.answer(&from, tag, Term::atom(answer))
            }
            (Some(Pending::DisconnectOther { from, tag, nick }), Reply::Users { users, more }) => {
                // The list may be cut short in a very big room: unless the nick is
                // surely absent, say it is someone else's.
                let taken = more > 0 || users.contains(&nick);
                let answer = if taken {
                    "not_allowed"
                } else {
                    "user_not_found"
                };
                link.answer(&from, tag, Term::atom(answer))
            }
            (Some(Pending::ListUsers), Reply::Users { users, more }) => {
                self.tell_server_line(&users_line(&users, more))
            }
            (_, Reply::NoSuchUser { nick }) => self.tell_server_line(&format!(
                "no user named {nick} in the room; message not sent"
            )),
            (_, Reply::InvalidText { reason }) => {
                self.tell_server_line(&format!("message not sent ({reason})"))
            }
            (_, Reply::SlowDown) => {
                self.tell_server_line("slow down, message dropped (flood limit)")
            }
            (_, other) => {
                tracing::debug!(node = %link.node(), reply = ?other, "an answer nobody waits for");
                Ok(())
            }
        }
    }

    fn close(&self, reason: LeaveReason) {
        // Every failure the registry acts on (a full queue, a shutdown, a closed socket)
        // is the node's connection's, not this nick's.
        self.link.close(reason);
    }

    fn node(&self) -> &NodeName {
        self.link.node()
    }

    fn tick(&self, _silence_limit: Duration) -> bool {
        // The link keeps its own liveness (Erlang's ticks), for all its nicks at once.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_the_original_words_them() {
        let line = |kind| event_line(&kind);
        assert_eq!(
            line(EventKind::Joined { nick: "ann".into() }),
            ("ann".into(), "* ann has joined *".into())
        );
        assert_eq!(
            line(EventKind::Left {
                nick: "ann".into(),
                reason: LeaveReason::Quit
            }),
            ("ann".into(), "* ann has left *".into())
        );
        assert_eq!(
            line(EventKind::Left {
                nick: "ann".into(),
                reason: LeaveReason::Timeout
            }),
            ("ann".into(), "* ann has left * (timed out)".into())
        );
        assert_eq!(
            line(EventKind::Private {
                from: "bob".into(),
                text: "psst".into()
            }),
            ("bob (private)".into(), "psst".into())
        );
        assert_eq!(
            users_line(&["a".into(), "b".into()], 3),
            "users: a, b and 3 more"
        );
    }
}
