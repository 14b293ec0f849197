//! [`RedisBackend`]: the room kept in Redis, for a node of a cluster (`--cluster`).
//!
//! Redis decides: the order of events (one stream per room, numbered by a script),
//! nicks across the cluster, sessions that can be resumed on any node, leases
//! ([`crate::cluster`]). This backend turns the registry's requests into calls run by
//! tasks ([`tasks`]) and their results, posted back as mail, into effects. Room events
//! reach the node only through its reader of the stream, in Redis's order: a say is
//! acknowledged when its entry comes back, a join or resume answered when its own
//! entry is applied.
//!
//! **Order per session.** A session's calls (its says, its departure, a resume of it)
//! run one after another, in the order asked, so a sender's messages keep their order
//! and a departure never overtakes them. Different sessions' calls run side by side
//! (pipelined on one connection).
//!
//! **When Redis cannot be reached** (see README, "Cluster"): connections stay. A say
//! or private message that Redis did not take (or may not have) is *held*: it stays at
//! the head of its session's queue, the sender is told once per outage
//! ([`Reply::Unavailable`] with `held`), and when a probe finds Redis back every held
//! call is sent again, in order, with the same message id, which Redis deduplicates; so
//! nothing is lost or doubled and its `Sent` follows then. What does not fit (a
//! session's queue, or all held bytes) is refused with a notice. Joins and resumes are
//! refused (try again later). If Redis lost the room (a new epoch), or this node's lease
//! expired, the node closes its members' connections (their clients resume, here or
//! elsewhere) and starts again from a snapshot.

mod tasks;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;
use protocol::{EventKind, LeaveReason, Reply, ResumeFailure, SessionTicket};
use tokio_util::sync::CancellationToken;

use self::tasks::{Older, Outcome};
use super::{Backend, Effect, Effects, Mail, Ordered, Request, Resumed, Snapshot, View};
use crate::cluster::{
    AppendKind, Appended, Cluster, ClusterConfig, ClusterError, Departed, Joined, NewEvent, Resume,
};
use crate::history::{Audience, SessionId};
use crate::peer::ConnId;
use crate::registry::MailSender;

/// Most calls one session may have waiting; more are refused.
const MAX_QUEUED: usize = 256;

/// Most bytes of messages held for Redis on one node; more are refused.
const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// What the backend's tasks post back.
#[derive(Debug)]
enum Note {
    /// Connected, with the room's snapshot; the stream follows.
    Connected {
        generation: u64,
        cluster: Cluster,
        snapshot: Box<Snapshot>,
    },
    /// The next entries of the stream.
    Entries {
        generation: u64,
        entries: Vec<Ordered>,
    },
    /// Entries trimmed before this node read them.
    Lost { generation: u64, from: u64, to: u64 },
    /// The reader could not read (it tries again by itself).
    Interrupted {
        generation: u64,
        error: ClusterError,
    },
    /// The room as this node knew it is gone (a new epoch).
    Gone {
        generation: u64,
        error: ClusterError,
    },
    /// Redis answers again.
    Up { generation: u64 },
    /// A lease renewal and reaping round ended.
    Ticked {
        generation: u64,
        result: Result<(), ClusterError>,
    },
    /// A join ended.
    JoinDone {
        generation: u64,
        conn: ConnId,
        nick: String,
        secret: [u8; 16],
        result: Result<Joined, ClusterError>,
    },
    /// A session's call ended.
    Done {
        generation: u64,
        session: SessionId,
        outcome: Outcome,
    },
}

/// A call waiting in a session's queue.
#[derive(Debug)]
enum Op {
    Append {
        conn: ConnId,
        event: NewEvent,
        /// Sent before (it may have been appended: a repeat is no news).
        retried: bool,
    },
    Depart {
        reason: LeaveReason,
    },
    Resume {
        conn: ConnId,
        secret: [u8; 16],
        last_seq: u64,
        oldest_local: u64,
    },
}

impl Op {
    fn held_bytes(&self) -> usize {
        match self {
            Op::Append { event, .. } => event.payload.len(),
            _ => 0,
        }
    }
}

/// What a task is to run for the head of a queue.
enum Call {
    Append(NewEvent),
    Depart(LeaveReason),
    Resume([u8; 16], u64, u64),
}

#[derive(Debug, Default)]
struct Queue {
    ops: VecDeque<Op>,
    /// Its head is being run by a task.
    busy: bool,
}

enum Phase {
    /// Connecting (at start, or after the room was lost); `stop` ends the attempt.
    Connecting { stop: CancellationToken },
    /// Serving the room; `stop` ends the reader and the probes.
    Ready {
        cluster: Cluster,
        stop: CancellationToken,
    },
    /// Shut down.
    Stopped,
}

/// The room in Redis, from one node.
pub struct RedisBackend {
    config: ClusterConfig,
    /// This node's name (its id in Redis is this plus a random part).
    name: String,
    /// Entries to read into the local history at start.
    recent: usize,
    mail: MailSender,
    /// Counts starts; mail from an earlier one is dropped.
    generation: u64,
    phase: Phase,
    queues: HashMap<SessionId, Queue>,
    held_bytes: usize,
    /// Redis did not answer a call: calls wait for [`Note::Up`].
    down: bool,
    probing: bool,
    ticking: bool,
    /// Sessions told, in this outage, that their messages are held.
    told: HashSet<SessionId>,
    /// Reader interruptions in a row (logged once).
    interrupted: u32,
    /// Told once, when the room is first served.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
}

impl RedisBackend {
    /// Starts connecting to the room in Redis as node `name`, reading up to `recent`
    /// entries into the local history; tasks post to `mail`; `ready` is told when the
    /// room is first served.
    pub fn start(
        config: ClusterConfig,
        name: String,
        recent: usize,
        mail: MailSender,
        ready: tokio::sync::oneshot::Sender<()>,
    ) -> Self {
        let mut backend = Self {
            config,
            name,
            recent: recent.min(crate::cluster::MAX_RANGE),
            mail,
            generation: 0,
            phase: Phase::Stopped,
            queues: HashMap::new(),
            held_bytes: 0,
            down: false,
            probing: false,
            ticking: false,
            told: HashSet::new(),
            interrupted: 0,
            ready: Some(ready),
        };
        backend.connect();
        backend
    }

    fn cluster(&self) -> Option<&Cluster> {
        match &self.phase {
            Phase::Ready { cluster, .. } => Some(cluster),
            _ => None,
        }
    }

    /// Starts (again) connecting, as a new generation.
    fn connect(&mut self) {
        self.generation += 1;
        let stop = CancellationToken::new();
        tokio::spawn(tasks::connect_and_follow(
            self.config.clone(),
            self.name.clone(),
            self.recent,
            self.mail.clone(),
            self.generation,
            stop.clone(),
        ));
        self.phase = Phase::Connecting { stop };
    }

    /// The room as this node knew it is gone: drop everything and start again.
    fn restart(&mut self, why: &ClusterError, fx: &mut Effects) {
        tracing::warn!(error = %why, "the cluster's room is lost to this node; starting again");
        self.stop_phase();
        for (_, queue) in self.queues.drain() {
            for op in queue.ops {
                if let Op::Resume { conn, .. } = op {
                    fx.push_back(refused_resume(conn, ResumeFailure::Unavailable));
                }
            }
        }
        self.held_bytes = 0;
        self.down = false;
        self.probing = false;
        self.ticking = false;
        self.told.clear();
        fx.push_back(Effect::Offline);
        self.connect();
    }

    fn stop_phase(&mut self) {
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Connecting { stop } | Phase::Ready { stop, .. } => stop.cancel(),
            Phase::Stopped => {}
        }
    }

    /// Redis did not answer: hold calls until a probe finds it back.
    fn mark_down(&mut self) {
        if !self.down {
            tracing::warn!("Redis cannot be reached; holding messages until it is back");
        }
        self.down = true;
        if self.probing {
            return;
        }
        if let Phase::Ready { cluster, stop } = &self.phase {
            self.probing = true;
            tokio::spawn(tasks::probe(
                cluster.clone(),
                self.mail.clone(),
                self.generation,
                stop.clone(),
            ));
        }
    }

    /// Redis answers again: send everything held, in order.
    fn back_up(&mut self) {
        self.probing = false;
        if self.down {
            tracing::info!("Redis answers again; sending what was held");
        }
        self.down = false;
        self.told.clear();
        let sessions: Vec<SessionId> = self.queues.keys().copied().collect();
        for session in sessions {
            self.run_next(session);
        }
    }

    /// Queues `op` for `session` and runs it when its turn comes.
    fn enqueue(&mut self, session: SessionId, op: Op) {
        self.held_bytes += op.held_bytes();
        self.queues.entry(session).or_default().ops.push_back(op);
        self.run_next(session);
    }

    /// Runs the head of `session`'s queue, unless one is running or Redis is down.
    fn run_next(&mut self, session: SessionId) {
        if self.down {
            return;
        }
        let Some(cluster) = self.cluster().cloned() else {
            return;
        };
        let Some(queue) = self.queues.get_mut(&session) else {
            return;
        };
        if queue.busy {
            return;
        }
        let Some(op) = queue.ops.front() else {
            self.queues.remove(&session);
            return;
        };
        queue.busy = true;
        let (mail, generation) = (self.mail.clone(), self.generation);
        let call = match op {
            Op::Append { event, .. } => Call::Append(event.clone()),
            Op::Depart { reason } => Call::Depart(*reason),
            Op::Resume {
                secret,
                last_seq,
                oldest_local,
                ..
            } => Call::Resume(*secret, *last_seq, *oldest_local),
        };
        tokio::spawn(async move {
            let outcome = match call {
                Call::Append(event) => tasks::append(cluster, event).await,
                Call::Depart(reason) => tasks::depart(cluster, session, reason).await,
                Call::Resume(secret, last_seq, oldest_local) => {
                    tasks::resume(cluster, session, secret, last_seq, oldest_local).await
                }
            };
            let note = Note::Done {
                generation,
                session,
                outcome,
            };
            let _ = mail.send(Mail::new(note)).await;
        });
    }

    /// Takes the head of `session`'s queue off (it is done) and runs the next.
    fn pop(&mut self, session: SessionId) -> Option<Op> {
        let queue = self.queues.get_mut(&session)?;
        queue.busy = false;
        let op = queue.ops.pop_front()?;
        self.held_bytes = self.held_bytes.saturating_sub(op.held_bytes());
        self.run_next(session);
        Some(op)
    }

    /// The head of `session`'s queue failed for a reason that may pass: it stays, to
    /// be sent again once Redis answers.
    fn hold(&mut self, session: SessionId, indeterminate: bool, fx: &mut Effects) {
        let Some(queue) = self.queues.get_mut(&session) else {
            return;
        };
        queue.busy = false;
        if let Some(Op::Append {
            conn,
            event,
            retried,
        }) = queue.ops.front_mut()
        {
            *retried |= indeterminate;
            if self.told.insert(session) {
                fx.push_back(Effect::Reply {
                    conn: *conn,
                    reply: Reply::Unavailable {
                        id: event.msg_id,
                        held: true,
                    },
                });
            }
        }
        self.mark_down();
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
        let refuse = |fx: &mut Effects| {
            fx.push_back(Effect::Reply {
                conn,
                reply: Reply::Unavailable {
                    id: msg_id,
                    held: false,
                },
            });
        };
        if self.cluster().is_none() {
            refuse(fx);
            return;
        }
        let append_kind = match kind {
            EventKind::Message { .. } => AppendKind::Message,
            EventKind::Private { .. } => AppendKind::Private,
            EventKind::Notice { .. } => AppendKind::Notice,
            EventKind::Joined { .. } | EventKind::Left { .. } => return,
        };
        let payload: Bytes = tasks::payload(&kind);
        let queued = self.queues.get(&session).map_or(0, |q| q.ops.len());
        if queued >= MAX_QUEUED || self.held_bytes + payload.len() > MAX_HELD_BYTES {
            tracing::info!(
                queued,
                held_bytes = self.held_bytes,
                "too much held for Redis; refusing a message"
            );
            refuse(fx);
            return;
        }
        if self.down && self.told.insert(session) {
            fx.push_back(Effect::Reply {
                conn,
                reply: Reply::Unavailable {
                    id: msg_id,
                    held: true,
                },
            });
        }
        let event = NewEvent {
            kind: append_kind,
            audience,
            session,
            msg_id,
            payload,
        };
        self.enqueue(
            session,
            Op::Append {
                conn,
                event,
                retried: false,
            },
        );
    }

    fn join(&mut self, conn: ConnId, nick: String, key: String, fx: &mut Effects) {
        let Some(cluster) = self.cluster().cloned() else {
            fx.push_back(Effect::Refused {
                conn,
                reply: Reply::Unavailable { id: 0, held: false },
            });
            return;
        };
        tokio::spawn(tasks::join(
            cluster,
            self.mail.clone(),
            self.generation,
            conn,
            nick,
            key,
            rand::random(),
        ));
    }

    fn joined(
        &mut self,
        conn: ConnId,
        nick: String,
        secret: [u8; 16],
        result: Result<Joined, ClusterError>,
        fx: &mut Effects,
    ) {
        let refuse = |reply| Effect::Refused { conn, reply };
        match result {
            Ok(Joined::Joined { session, seq }) => fx.push_back(Effect::Joined {
                conn,
                session,
                ticket: SessionTicket {
                    id: session,
                    secret,
                },
                nick,
                seq,
            }),
            Ok(Joined::NickInUse { .. }) => fx.push_back(refuse(Reply::NickInUse)),
            Err(e) => {
                fx.push_back(refuse(Reply::Unavailable { id: 0, held: false }));
                self.failed(&e, fx);
            }
        }
    }

    /// A call failed for a reason that concerns the whole node.
    fn failed(&mut self, error: &ClusterError, fx: &mut Effects) {
        match error {
            ClusterError::Unavailable(_) | ClusterError::Indeterminate(_) => self.mark_down(),
            ClusterError::EpochChanged { .. } | ClusterError::LeaseLost => {
                self.restart(error, fx);
            }
            ClusterError::Refused(_) | ClusterError::Malformed(_) => {
                tracing::warn!(error = %error, "Redis refused a call");
            }
        }
    }

    fn resume(
        &mut self,
        conn: ConnId,
        ticket: SessionTicket,
        epoch: u64,
        last_seq: u64,
        oldest_local: u64,
        fx: &mut Effects,
    ) {
        let Some(cluster) = self.cluster() else {
            fx.push_back(refused_resume(conn, ResumeFailure::Unavailable));
            return;
        };
        if epoch != cluster.epoch() {
            fx.push_back(refused_resume(conn, ResumeFailure::EpochChanged));
            return;
        }
        if self.down {
            fx.push_back(refused_resume(conn, ResumeFailure::Unavailable));
            return;
        }
        self.enqueue(
            ticket.id,
            Op::Resume {
                conn,
                secret: ticket.secret,
                last_seq,
                oldest_local,
            },
        );
    }

    fn done(&mut self, session: SessionId, outcome: Outcome, fx: &mut Effects) {
        let transient = match &outcome {
            Outcome::Appended(Err(e)) | Outcome::Departed(Err(e)) => e
                .is_transient()
                .then_some(matches!(e, ClusterError::Indeterminate(_))),
            _ => None,
        };
        // An id-less message that may have been appended cannot be sent again safely.
        let idless = matches!(
            self.queues.get(&session).and_then(|q| q.ops.front()),
            Some(Op::Append { event, .. }) if event.msg_id == 0
        );
        if let Some(indeterminate) = transient
            && !(indeterminate && idless)
        {
            self.hold(session, indeterminate, fx);
            return;
        }
        let Some(op) = self.pop(session) else {
            return;
        };
        match (op, outcome) {
            (
                Op::Append {
                    conn,
                    event,
                    retried,
                },
                Outcome::Appended(result),
            ) => {
                let id = event.msg_id;
                match result {
                    // Acknowledged when the entry comes back through the stream.
                    Ok(Appended::At(_)) => {}
                    Ok(Appended::Repeated(seq)) if !retried => fx.push_back(Effect::Reply {
                        conn,
                        reply: Reply::Sent { id, seq },
                    }),
                    Ok(Appended::Repeated(_)) => {}
                    Ok(Appended::NotHere) => fx.push_back(Effect::Reply {
                        conn,
                        reply: Reply::NotJoined,
                    }),
                    Err(e) => {
                        fx.push_back(Effect::Reply {
                            conn,
                            reply: Reply::Unavailable { id, held: false },
                        });
                        self.failed(&e, fx);
                    }
                }
            }
            (Op::Depart { .. }, Outcome::Departed(result)) => match result {
                Ok(Departed::Left { .. } | Departed::NotHere) => {}
                Err(e) => self.failed(&e, fx),
            },
            (Op::Resume { conn, last_seq, .. }, Outcome::Resumed(result)) => {
                self.resumed(conn, session, last_seq, result, fx);
            }
            (op, outcome) => {
                tracing::error!(?op, ?outcome, "a call's outcome does not match it");
            }
        }
    }

    fn resumed(
        &mut self,
        conn: ConnId,
        session: SessionId,
        last_seq: u64,
        result: Result<(Resume, Older), ClusterError>,
        fx: &mut Effects,
    ) {
        match result {
            Ok((Resume::Resumed(resumed), older)) => {
                if resumed.from.as_str() != self.cluster().map_or("", |c| c.node().as_str()) {
                    tracing::debug!(from = %resumed.from, "took a session over from another node");
                }
                fx.push_back(Effect::Resumed(Box::new(Resumed {
                    conn,
                    session,
                    nick: resumed.nick,
                    rejoined: resumed.rejoined,
                    seq: resumed.seq,
                    last_seq,
                    older: older.entries,
                    older_upto: older.upto,
                    older_lost: older.lost,
                })));
            }
            Ok((Resume::UnknownSession, _)) => {
                fx.push_back(refused_resume(conn, ResumeFailure::UnknownSession));
            }
            Ok((Resume::NickInUse, _)) => {
                fx.push_back(refused_resume(conn, ResumeFailure::NickInUse));
            }
            Err(e) => {
                fx.push_back(refused_resume(conn, ResumeFailure::Unavailable));
                self.failed(&e, fx);
            }
        }
    }
}

fn refused_resume(conn: ConnId, reason: ResumeFailure) -> Effect {
    Effect::Refused {
        conn,
        reply: Reply::ResumeFailed { reason },
    }
}

impl Backend for RedisBackend {
    fn epoch(&self) -> u64 {
        self.cluster().map_or(0, Cluster::epoch)
    }

    fn submit(&mut self, request: Request, _view: &View, fx: &mut Effects) {
        match request {
            Request::Join { conn, nick, key } => self.join(conn, nick, key, fx),
            Request::Resume {
                conn,
                ticket,
                epoch,
                last_seq,
                oldest_local,
            } => self.resume(conn, ticket, epoch, last_seq, oldest_local, fx),
            Request::Append {
                conn,
                session,
                msg_id,
                kind,
                audience,
            } => self.append(conn, session, msg_id, kind, audience, fx),
            Request::Depart {
                session, reason, ..
            } => {
                if self.cluster().is_some() {
                    self.enqueue(session, Op::Depart { reason });
                }
            }
        }
    }

    fn on_mail(&mut self, mail: Mail, _view: &View, fx: &mut Effects) {
        let Some(note) = mail.open::<Note>() else {
            return;
        };
        let generation = match &note {
            Note::Connected { generation, .. }
            | Note::Entries { generation, .. }
            | Note::Lost { generation, .. }
            | Note::Interrupted { generation, .. }
            | Note::Gone { generation, .. }
            | Note::Up { generation }
            | Note::Ticked { generation, .. }
            | Note::JoinDone { generation, .. }
            | Note::Done { generation, .. } => *generation,
        };
        if generation != self.generation {
            // From before a restart; a join made then is released with the old id.
            if let Note::JoinDone { conn, .. } = note {
                fx.push_back(Effect::Refused {
                    conn,
                    reply: Reply::Unavailable { id: 0, held: false },
                });
            }
            return;
        }
        match note {
            Note::Connected {
                cluster, snapshot, ..
            } => {
                let stop = match std::mem::replace(&mut self.phase, Phase::Stopped) {
                    Phase::Connecting { stop } => stop,
                    other => {
                        self.phase = other;
                        return;
                    }
                };
                tracing::info!(
                    node = %cluster.node(),
                    epoch = cluster.epoch(),
                    head = snapshot.head,
                    "serving the cluster's room"
                );
                self.phase = Phase::Ready { cluster, stop };
                fx.push_back(Effect::Start(snapshot));
                if let Some(ready) = self.ready.take() {
                    let _ = ready.send(());
                }
            }
            Note::Entries { entries, .. } => {
                if self.interrupted > 0 {
                    tracing::info!("reading the room's stream again");
                    self.interrupted = 0;
                }
                fx.extend(entries.into_iter().map(Effect::Entry));
            }
            Note::Lost { from, to, .. } => fx.push_back(Effect::Lost { from, to }),
            Note::Interrupted { error, .. } => {
                if self.interrupted == 0 {
                    tracing::warn!(error = %error, "cannot read the room's stream; retrying");
                }
                self.interrupted = self.interrupted.saturating_add(1);
                self.mark_down();
            }
            Note::Gone { error, .. } => self.restart(&error, fx),
            Note::Up { .. } => self.back_up(),
            Note::Ticked { result, .. } => {
                self.ticking = false;
                if let Err(e) = result {
                    self.failed(&e, fx);
                }
            }
            Note::JoinDone {
                conn,
                nick,
                secret,
                result,
                ..
            } => self.joined(conn, nick, secret, result, fx),
            Note::Done {
                session, outcome, ..
            } => self.done(session, outcome, fx),
        }
    }

    fn tick(&mut self, _fx: &mut Effects) {
        if self.ticking {
            return;
        }
        if let Some(cluster) = self.cluster().cloned() {
            self.ticking = true;
            tokio::spawn(tasks::tick(cluster, self.mail.clone(), self.generation));
        }
    }

    fn sweep(&mut self) {
        if self.queues.capacity() > 4 * self.queues.len().max(64) {
            self.queues.shrink_to_fit();
        }
    }

    fn shutdown(&mut self, done: tokio::sync::oneshot::Sender<()>) {
        let cluster = self.cluster().cloned();
        self.stop_phase();
        match cluster {
            Some(cluster) => {
                tokio::spawn(tasks::leave(cluster, done));
            }
            None => {
                let _ = done.send(());
            }
        }
    }

    fn kept_sessions(&self) -> usize {
        self.queues.len()
    }
}
