//! The translation between our session's messages and the original ExMessenger's terms,
//! as pure functions over a small state (who we are in the room, which calls wait).
//!
//! - [`ClientMessage`] -> a call or cast to `message_server` (`Join` = `{connect, Nick}`,
//!   `Leave` = `{disconnect, Nick}`, `Say`, `Private`, `ListUsers`), or an answer made
//!   here when the original has no such thing (saying while not joined).
//! - Call replies -> [`Reply`]s (`{ok, "a:b"}` = `Joined`, `nick_in_use`, ...).
//! - `{message, Nick, Body}` casts -> [`Event`]s: `* Nick has joined *` is a join,
//!   `* Nick has left *` a departure, `Nick (private)` a private message, a line from
//!   `server` a notice, or the answer to `/users` when one is awaited.

use std::collections::VecDeque;

use protocol::erlang::exmessenger::{PRIVATE_SUFFIX, Request, SERVER_NICK};
use protocol::erlang::term::Term;
use protocol::{
    ClientMessage, Event, EventKind, FloodLimits, LeaveReason, Reply, ResumeFailure, ServerMessage,
    SessionTicket,
};

/// The original has no flood limit to tell; the client need not pace itself.
const NO_FLOOD_LIMIT: FloodLimits = FloodLimits {
    interval_us: 0,
    burst: u32::MAX,
};

/// The acknowledgement of message `id` once it is handed to the socket (none for id 0).
fn sent(id: u64) -> Option<ServerMessage> {
    (id != 0).then_some(ServerMessage::Reply(Reply::Sent { id, seq: 0 }))
}

/// Most calls remembered while their answers are outstanding; older ones are forgotten
/// (the session gives up on an answer after a few seconds anyway).
pub const MAX_PENDING_CALLS: usize = 64;

/// Which call an answer is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallKind {
    /// `{connect, Nick}`.
    Connect(String),
    /// `{disconnect, Nick}`.
    Disconnect,
}

/// What to do for one [`ClientMessage`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// Call `message_server` with this request.
    Call(CallKind, Request),
    /// Cast this request to `message_server`, then hand the session the answer, if any
    /// (the acknowledgement of a say: the original has none of its own).
    Cast(Request, Option<ServerMessage>),
    /// Nothing to send; hand the session this answer instead.
    Answer(ServerMessage),
    /// Nothing at all (pings and pongs: the link ticks by itself).
    Nothing,
}

/// The adapter's state.
#[derive(Debug, Default)]
pub struct Adapter {
    /// Our nick once the server accepted it.
    nick: Option<String>,
    /// `/users` asked and not yet answered.
    users_asked: usize,
    /// Events numbered locally (the original has no sequence numbers).
    seq: u64,
}

impl Adapter {
    /// What to send for `message`.
    pub fn outgoing(&mut self, message: ClientMessage) -> Outgoing {
        let not_joined = || Outgoing::Answer(ServerMessage::Reply(Reply::NotJoined));
        match message {
            ClientMessage::Join { nick, .. } => match &self.nick {
                Some(current) => Outgoing::Answer(ServerMessage::Reply(Reply::AlreadyJoined {
                    nick: current.clone(),
                })),
                None => Outgoing::Call(CallKind::Connect(nick.clone()), Request::Connect(nick)),
            },
            ClientMessage::Leave => match &self.nick {
                Some(nick) => {
                    Outgoing::Call(CallKind::Disconnect, Request::Disconnect(nick.clone()))
                }
                None => not_joined(),
            },
            // The original acknowledges nothing; a cast handed to the socket is as far
            // as anyone can tell, so it counts as sent (no room number).
            ClientMessage::Say { id, text } => match &self.nick {
                Some(nick) => Outgoing::Cast(
                    Request::Say {
                        nick: nick.clone(),
                        text,
                    },
                    sent(id),
                ),
                None => not_joined(),
            },
            ClientMessage::Private { id, to, text } => match &self.nick {
                Some(nick) => Outgoing::Cast(
                    Request::PrivateMessage {
                        from: nick.clone(),
                        to,
                        text,
                    },
                    sent(id),
                ),
                None => not_joined(),
            },
            // The original keeps no sessions: a reconnecting client joins afresh.
            ClientMessage::Resume { .. } => {
                Outgoing::Answer(ServerMessage::Reply(Reply::ResumeFailed {
                    reason: ResumeFailure::UnknownSession,
                }))
            }
            ClientMessage::ListUsers => match &self.nick {
                Some(nick) => {
                    self.users_asked += 1;
                    Outgoing::Cast(Request::ListUsers(nick.clone()), None)
                }
                None => not_joined(),
            },
            ClientMessage::Ping | ClientMessage::Pong => Outgoing::Nothing,
        }
    }

    /// The reply for the answer `reply` to the call `kind`.
    pub fn call_answered(&mut self, kind: CallKind, reply: &Term) -> Reply {
        match kind {
            CallKind::Connect(nick) => {
                if let Some([ok, users]) = reply.as_tuple().map(<[Term]>::as_ref)
                    && ok.is_atom("ok")
                {
                    self.nick = Some(nick);
                    let users = users.as_text().unwrap_or_default();
                    return Reply::Joined {
                        users: users
                            .split(':')
                            .filter(|n| !n.is_empty())
                            .map(str::to_string)
                            .collect(),
                        more: 0,
                        ticket: SessionTicket {
                            id: 0,
                            secret: [0; 16],
                        },
                        epoch: 0,
                        seq: self.seq,
                        limits: NO_FLOOD_LIMIT,
                    };
                }
                match reply.as_atom() {
                    Some("nick_in_use") => Reply::NickInUse,
                    Some("nick_not_allowed") => Reply::NickNotAllowed,
                    Some(other) => Reply::InvalidNick {
                        reason: other.to_string(),
                    },
                    None => Reply::InvalidNick {
                        reason: "unexpected answer".to_string(),
                    },
                }
            }
            CallKind::Disconnect => {
                if reply.is_atom("ok") {
                    self.nick = None;
                    Reply::Left
                } else {
                    Reply::NotJoined
                }
            }
        }
    }

    /// The session message for a `{message, Nick, Body}` cast.
    pub fn handler_message(&mut self, nick: &str, body: &str) -> ServerMessage {
        if nick == SERVER_NICK {
            if let Some(list) = body.strip_prefix("users: ")
                && self.users_asked > 0
            {
                self.users_asked -= 1;
                let users = list
                    .split(", ")
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
                return ServerMessage::Reply(Reply::Users { users, more: 0 });
            }
            return self.event(EventKind::Notice {
                text: body.to_string(),
            });
        }
        if let Some(from) = nick.strip_suffix(PRIVATE_SUFFIX) {
            return self.event(EventKind::Private {
                from: from.to_string(),
                text: body.to_string(),
            });
        }
        if body == format!("* {nick} has joined *") {
            return self.event(EventKind::Joined {
                nick: nick.to_string(),
            });
        }
        if let Some(rest) = body.strip_prefix(&format!("* {nick} has left *")) {
            let reason = match rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
            {
                None => LeaveReason::Left,
                Some(why) => leave_reason(why),
            };
            return self.event(EventKind::Left {
                nick: nick.to_string(),
                reason,
            });
        }
        self.event(EventKind::Message {
            from: nick.to_string(),
            text: body.to_string(),
        })
    }

    fn event(&mut self, kind: EventKind) -> ServerMessage {
        self.seq += 1;
        ServerMessage::Event(Event {
            seq: self.seq,
            kind,
        })
    }

    /// Forgets the room (the connection is gone).
    pub fn reset(&mut self) {
        self.nick = None;
        self.users_asked = 0;
    }
}

/// The leave reason a `(why)` names, as [`LeaveReason::describe`] words it.
fn leave_reason(why: &str) -> LeaveReason {
    [
        LeaveReason::Quit,
        LeaveReason::Timeout,
        LeaveReason::SendQueueExceeded,
        LeaveReason::Flooding,
        LeaveReason::ProtocolError,
        LeaveReason::ServerShutdown,
        LeaveReason::ConnectionLost,
    ]
    .into_iter()
    .find(|reason| reason.describe() == why)
    .unwrap_or(LeaveReason::ConnectionLost)
}

/// Keeps the calls waiting for answers, by tag, oldest first.
#[derive(Debug, Default)]
pub struct PendingCalls {
    calls: VecDeque<(Term, CallKind)>,
}

impl PendingCalls {
    /// Remembers a call made with `tag`.
    pub fn push(&mut self, tag: Term, kind: CallKind) {
        if self.calls.len() == MAX_PENDING_CALLS {
            self.calls.pop_front();
        }
        self.calls.push_back((tag, kind));
    }

    /// Whether a join waits for its answer.
    pub fn has_connect(&self) -> bool {
        self.calls
            .iter()
            .any(|(_, kind)| matches!(kind, CallKind::Connect(_)))
    }

    /// The call `tag` answers, if one waits.
    pub fn take(&mut self, tag: &Term) -> Option<CallKind> {
        let index = self.calls.iter().position(|(t, _)| t == tag)?;
        self.calls.remove(index).map(|(_, kind)| kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(adapter: &mut Adapter) {
        let Outgoing::Call(kind, request) = adapter.outgoing(ClientMessage::Join {
            nick: "john".into(),
            backlog: 10,
        }) else {
            panic!("a join is a call");
        };
        assert_eq!(request, Request::Connect("john".into()));
        let reply = adapter.call_answered(
            kind,
            &Term::tuple(vec![Term::atom("ok"), Term::binary("ann:john")]),
        );
        let Reply::Joined { users, more, .. } = reply else {
            panic!("not joined: {reply:?}");
        };
        assert_eq!((users, more), (vec!["ann".into(), "john".into()], 0));
    }

    #[test]
    fn commands_become_the_originals_calls_and_casts() {
        let mut adapter = Adapter::default();
        assert_eq!(
            adapter.outgoing(ClientMessage::Say {
                id: 0,
                text: "hi".into()
            }),
            Outgoing::Answer(ServerMessage::Reply(Reply::NotJoined))
        );
        joined(&mut adapter);
        assert_eq!(
            adapter.outgoing(ClientMessage::Say {
                id: 0,
                text: "hi".into()
            }),
            Outgoing::Cast(
                Request::Say {
                    nick: "john".into(),
                    text: "hi".into()
                },
                None
            )
        );
        assert_eq!(
            adapter.outgoing(ClientMessage::Private {
                id: 3,
                to: "ann".into(),
                text: "psst".into()
            }),
            Outgoing::Cast(
                Request::PrivateMessage {
                    from: "john".into(),
                    to: "ann".into(),
                    text: "psst".into()
                },
                Some(ServerMessage::Reply(Reply::Sent { id: 3, seq: 0 }))
            )
        );
        let Outgoing::Call(kind, request) = adapter.outgoing(ClientMessage::Leave) else {
            panic!("a leave is a call");
        };
        assert_eq!(request, Request::Disconnect("john".into()));
        assert_eq!(adapter.call_answered(kind, &Term::atom("ok")), Reply::Left);
        assert_eq!(
            adapter.outgoing(ClientMessage::ListUsers),
            Outgoing::Answer(ServerMessage::Reply(Reply::NotJoined))
        );
    }

    #[test]
    fn refusals_keep_the_originals_reasons() {
        let mut adapter = Adapter::default();
        let kind = CallKind::Connect("x".into());
        assert_eq!(
            adapter.call_answered(kind.clone(), &Term::atom("nick_in_use")),
            Reply::NickInUse
        );
        assert_eq!(
            adapter.call_answered(kind, &Term::atom("nick_not_allowed")),
            Reply::NickNotAllowed
        );
    }

    #[test]
    fn casts_become_events() {
        let mut adapter = Adapter::default();
        let kind = |m: ServerMessage| match m {
            ServerMessage::Event(e) => e.kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(adapter.handler_message("ann", "* ann has joined *")),
            EventKind::Joined { nick: "ann".into() }
        );
        assert_eq!(
            kind(adapter.handler_message("ann", "* ann has left *")),
            EventKind::Left {
                nick: "ann".into(),
                reason: LeaveReason::Left
            }
        );
        assert_eq!(
            kind(adapter.handler_message("ann", "* ann has left * (timed out)")),
            EventKind::Left {
                nick: "ann".into(),
                reason: LeaveReason::Timeout
            }
        );
        assert_eq!(
            kind(adapter.handler_message("ann (private)", "psst")),
            EventKind::Private {
                from: "ann".into(),
                text: "psst".into()
            }
        );
        // Someone quoting a join is a message, not a join.
        assert_eq!(
            kind(adapter.handler_message("bob", "* ann has joined *")),
            EventKind::Message {
                from: "bob".into(),
                text: "* ann has joined *".into()
            }
        );
        assert_eq!(
            kind(adapter.handler_message("server", "users: a, b")),
            EventKind::Notice {
                text: "users: a, b".into()
            }
        );
        joined(&mut adapter);
        adapter.outgoing(ClientMessage::ListUsers);
        assert_eq!(
            adapter.handler_message("server", "users: ann, john"),
            ServerMessage::Reply(Reply::Users {
                users: vec!["ann".into(), "john".into()],
                more: 0
            })
        );
    }

    #[test]
    fn pending_calls_are_bounded() {
        let mut pending = PendingCalls::default();
        for i in 0..(MAX_PENDING_CALLS as i64 + 5) {
            pending.push(Term::Int(i), CallKind::Disconnect);
        }
        assert_eq!(pending.take(&Term::Int(0)), None);
        assert_eq!(pending.take(&Term::Int(10)), Some(CallKind::Disconnect));
        assert_eq!(pending.take(&Term::Int(10)), None);
    }
}
