//! [`LocalBackend`]: the room kept in this process, for one node (the default).
//!
//! It numbers events itself and decides every request at once: a call pushes its
//! answer and the entry it caused onto the effects before it returns, so the registry
//! applies them in the same turn. It keeps the sessions (ticket secrets, the last
//! message id of each, the departed ones still resumable); the members and their
//! nicks' keys are the registry's [`View`], which is exact here because every entry is
//! applied as soon as it is made.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use protocol::{Event, EventKind, LeaveReason, Reply, ResumeFailure, SessionTicket};
use subtle::ConstantTimeEq;

use super::{
    Backend, Body, Change, Effect, Effects, InlineNick, Mail, Ordered, Request, Resumed, View,
    entry_kind,
};
use crate::history::{Audience, SERVER_SESSION, SessionId};
use crate::peer::{ConnId, FrameArena, RoomEvent};

/// A session as this node keeps it.
struct Record {
    nick: InlineNick,
    secret: [u8; 16],
    /// In the room (else departed, and resumable until forgotten).
    in_room: bool,
    /// When it departed, if it did.
    departed_at: Option<Instant>,
    /// The last message id the client used, and the sequence number it got.
    last_msg: (u64, u64),
}

/// The room in this process.
pub struct LocalBackend {
    epoch: u64,
    /// The last room sequence number handed out.
    seq: u64,
    /// The last session number handed out.
    last_session: SessionId,
    sessions: HashMap<SessionId, Record>,
    /// Sessions that left the room without leaving on purpose, oldest first.
    departed: VecDeque<SessionId>,
    /// Most sessions kept resumable.
    max_departed: usize,
    /// How long a departed session stays resumable.
    resume_window: Duration,
    /// Where room events are encoded, side by side.
    frames: FrameArena,
}

impl LocalBackend {
    /// A new room with a fresh random epoch, keeping at most `max_departed` sessions
    /// resumable for `resume_window` each.
    pub fn new(max_departed: usize, resume_window: Duration) -> Self {
        Self {
            epoch: rand::random::<u64>() | 1,
            seq: 0,
            last_session: SERVER_SESSION,
            sessions: HashMap::new(),
            departed: VecDeque::new(),
            max_departed,
            resume_window,
            frames: FrameArena::default(),
        }
    }

    /// Numbers `kind` and pushes it as the next entry.
    fn publish(
        &mut self,
        kind: EventKind,
        audience: Audience,
        session: SessionId,
        msg_id: u64,
        change: Option<Change>,
        fx: &mut Effects,
    ) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let entry = entry_kind(&kind);
        let body = match RoomEvent::new_in(Event { seq, kind }, &mut self.frames) {
            Ok(event) => Body::Event {
                event,
                audience,
                kind: entry,
                origin: super::Origin {
                    here: true,
                    session,
                    msg_id,
                },
                change,
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a room event");
                Body::Skip
            }
        };
        fx.push_back(Effect::Entry(Ordered { seq, body }));
        seq
    }

    fn join(&mut self, conn: ConnId, nick: String, key: &str, view: &View, fx: &mut Effects) {
        let inline = match InlineNick::new(&nick) {
            Some(inline) if view.holder_of_key(key).is_none() => inline,
            Some(_) => {
                fx.push_back(Effect::Refused {
                    conn,
                    reply: Reply::NickInUse,
                });
                return;
            }
            None => {
                fx.push_back(Effect::Refused {
                    conn,
                    reply: Reply::InvalidNick {
                        reason: format!(
                            "nick is longer than {} bytes",
                            protocol::limits::MAX_NICK_LEN
                        ),
                    },
                });
                return;
            }
        };
        self.last_session += 1;
        let session = self.last_session;
        let secret: [u8; 16] = rand::random();
        self.sessions.insert(
            session,
            Record {
                nick: inline,
                secret,
                in_room: true,
                departed_at: None,
                last_msg: (0, 0),
            },
        );
        fx.push_back(Effect::Joined {
            conn,
            session,
            ticket: SessionTicket {
                id: session,
                secret,
            },
            nick: nick.clone(),
            seq: self.seq + 1,
        });
        self.announce_joined(session, nick, fx);
    }

    /// Tells the room that `session` joined (or came back) as `nick`.
    fn announce_joined(&mut self, session: SessionId, nick: String, fx: &mut Effects) {
        let change = Change::Joined {
            session,
            nick: nick.clone(),
            node: String::new(),
        };
        self.publish(
            EventKind::Joined { nick },
            Audience::Room { except: session },
            session,
            0,
            Some(change),
            fx,
        );
    }

    fn resume(
        &mut self,
        conn: ConnId,
        ticket: SessionTicket,
        epoch: u64,
        last_seq: u64,
        view: &View,
        fx: &mut Effects,
    ) {
        let failure = if epoch != self.epoch {
            Some(ResumeFailure::EpochChanged)
        } else {
            match self.sessions.get(&ticket.id) {
                Some(s) if bool::from(s.secret.ct_eq(&ticket.secret)) => {
                    let key = protocol::unicode::nick_key(s.nick.as_str());
                    let taken = !s.in_room && view.holder_of_key(&key).is_some();
                    taken.then_some(ResumeFailure::NickInUse)
                }
                _ => Some(ResumeFailure::UnknownSession),
            }
        };
        if let Some(reason) = failure {
            fx.push_back(Effect::Refused {
                conn,
                reply: Reply::ResumeFailed { reason },
            });
            return;
        }
        let session = ticket.id;
        let Some(record) = self.sessions.get_mut(&session) else {
            return;
        };
        let rejoined = !record.in_room;
        record.in_room = true;
        record.departed_at = None;
        let nick = record.nick.as_str().to_string();
        if rejoined {
            self.departed.retain(|s| *s != session);
        }
        fx.push_back(Effect::Resumed(Box::new(Resumed {
            conn,
            session,
            nick: nick.clone(),
            rejoined,
            seq: if rejoined { self.seq + 1 } else { 0 },
            last_seq,
            older: Vec::new(),
            older_upto: last_seq,
            older_lost: 0,
        })));
        if rejoined {
            self.announce_joined(session, nick, fx);
        }
    }

    fn append(
        &mut self,
        conn: ConnId,
        session: SessionId,
        msg_id: u64,
        kind: EventKind,
        audience: Audience,
        fx: &mut Effects,
    ) {
        if session != SERVER_SESSION {
            let Some(record) = self.sessions.get(&session).filter(|r| r.in_room) else {
                fx.push_back(Effect::Reply {
                    conn,
                    reply: Reply::NotJoined,
                });
                return;
            };
            let (last, seq) = record.last_msg;
            if msg_id != 0 && msg_id <= last {
                let seq = if msg_id == last { seq } else { 0 };
                fx.push_back(Effect::Reply {
                    conn,
                    reply: Reply::Sent { id: msg_id, seq },
                });
                return;
            }
        }
        let seq = self.publish(kind, audience, session, msg_id, None, fx);
        if msg_id != 0
            && let Some(record) = self.sessions.get_mut(&session)
        {
            record.last_msg = (msg_id, seq);
        }
    }

    fn depart(&mut self, session: SessionId, nick: String, reason: LeaveReason, fx: &mut Effects) {
        let Some(record) = self.sessions.get_mut(&session).filter(|r| r.in_room) else {
            return;
        };
        record.in_room = false;
        record.departed_at = Some(Instant::now());
        if reason == LeaveReason::Left {
            self.sessions.remove(&session);
        } else {
            self.departed.push_back(session);
            while self.departed.len() > self.max_departed {
                if let Some(oldest) = self.departed.pop_front() {
                    self.forget(oldest);
                }
            }
        }
        let change = Change::Left {
            session,
            nick: nick.clone(),
        };
        self.publish(
            EventKind::Left { nick, reason },
            Audience::Room { except: session },
            session,
            0,
            Some(change),
            fx,
        );
    }

    /// Forgets a session that is not in the room.
    fn forget(&mut self, session: SessionId) {
        if self.sessions.get(&session).is_some_and(|s| !s.in_room) {
            self.sessions.remove(&session);
        }
    }
}

impl Backend for LocalBackend {
    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn submit(&mut self, request: Request, view: &View, fx: &mut Effects) {
        match request {
            Request::Join { conn, nick, key } => self.join(conn, nick, &key, view, fx),
            Request::Resume {
                conn,
                ticket,
                epoch,
                last_seq,
                oldest_local: _,
            } => self.resume(conn, ticket, epoch, last_seq, view, fx),
            Request::Append {
                conn,
                session,
                msg_id,
                kind,
                audience,
            } => self.append(conn, session, msg_id, kind, audience, fx),
            Request::Depart {
                session,
                nick,
                reason,
            } => self.depart(session, nick, reason, fx),
        }
    }

    fn on_mail(&mut self, _mail: Mail, _view: &View, _fx: &mut Effects) {
        // It sends none.
    }

    fn tick(&mut self, _fx: &mut Effects) {}

    fn sweep(&mut self) {
        let window = self.resume_window;
        while let Some(&oldest) = self.departed.front() {
            let expired = self.sessions.get(&oldest).is_none_or(|s| {
                s.in_room || s.departed_at.is_some_and(|at| at.elapsed() >= window)
            });
            if !expired {
                break;
            }
            self.departed.pop_front();
            self.forget(oldest);
        }
        if self.sessions.capacity() > 4 * self.sessions.len().max(64) {
            self.sessions.shrink_to_fit();
            self.departed.shrink_to_fit();
        }
    }

    fn shutdown(&mut self, done: tokio::sync::oneshot::Sender<()>) {
        let _ = done.send(());
    }

    fn kept_sessions(&self) -> usize {
        self.sessions.len()
    }
}
