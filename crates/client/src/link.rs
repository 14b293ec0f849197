//! One connection's worth of session: its message handler and its writer.
//!
//! [`start`] runs two tasks on an authenticated [`Connection`]:
//!
//! - the *message handler* reads every server message, answers pings, prints everything
//!   else through the session's [`Output`] as it arrives (backlog lines marked as
//!   earlier, events already printed skipped), and keeps the session's state: join
//!   state, member list, place in the room's history, acknowledgements of sends. When a
//!   resume is refused it joins afresh by itself;
//! - the *writer* writes calls (join, resume, `/users`, leave, pongs) as they come, and
//!   the session's queued says and private messages once the handler has found the
//!   session in the room, paced within the server's flood limit ([`crate::pacing`]),
//!   flushing once per batch.
//!
//! When the connection ends, the link records why, once (its [`Loss`]), and stops. The
//! front end ([`crate::session`]) sends and waits for answers through the [`Link`]; the
//! reconnect task ([`crate::reconnect`]) keeps a [`LinkWatch`] to learn of the loss and
//! stop what is left of the link. A reconnecting session goes through many links; the
//! state in [`Shared`] and the output are the session's and outlive them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::{
    ClientMessage, Event, FloodLimits, LeaveReason, Reply, ResumeFailure, ServerMessage,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tracing::debug;

use crate::connect::{Connection, SessionStream};
use crate::pacing::Pacer;
use crate::position::Arrival;
use crate::render;
use crate::shared::{CALL_TIMEOUT, Output, Shared};

/// After a failed write, how long the message handler gets to read what the server sent
/// before closing (typically the reason it closed) before the write error is reported.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(2);

/// Added to two server ticks before a silent server counts as gone.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Calls queued for the writer before senders wait.
const OUTGOING_QUEUE: usize = 64;

/// What every link of a session shares: where lines go and the session's state.
#[derive(Clone)]
pub(crate) struct Context {
    /// The server's node name, as shown in front of its lines.
    pub(crate) server: String,
    /// Where lines go.
    pub(crate) output: Arc<dyn Output>,
    /// The session's state.
    pub(crate) shared: Arc<Shared>,
}

/// Replies the front end waits for, passed on by the handler after printing them.
#[derive(Debug)]
pub(crate) enum Outcome {
    Joined,
    JoinRefused(String),
    Left,
}

/// How waiting for an answer ended.
#[derive(Debug)]
pub(crate) enum Waited {
    /// The answer.
    Got(Outcome),
    /// No answer in time.
    TimedOut,
    /// The handler stopped: the connection is gone.
    Closed,
}

/// The queue to the writer is closed: the connection is gone (or being closed).
#[derive(Debug)]
pub(crate) struct Closed;

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Loss {
    /// For the user: the `<why>` of `Connection to <server> lost: <why>`.
    pub(crate) why: String,
    /// The reason the server gave when it closed the connection, if it did.
    pub(crate) closing: Option<LeaveReason>,
    /// Given up by the client: the node cannot serve the room just now (a cluster node
    /// whose store is away turned the join or resume away).
    pub(crate) turned_away: bool,
}

impl Loss {
    fn new(why: impl Into<String>) -> Self {
        Self {
            why: why.into(),
            closing: None,
            turned_away: false,
        }
    }
}

/// What the handler tells the writer: whether the session is in the room on this
/// connection (then queued says go out), and the flood limit told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Gate {
    in_room: bool,
    limits: Option<FloodLimits>,
}

/// The front end's side of a link.
pub(crate) struct Link {
    /// `None` once closing.
    outgoing: Option<mpsc::Sender<ClientMessage>>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    lost: watch::Receiver<Option<Loss>>,
    handler: AbortHandle,
    writer: Option<JoinHandle<()>>,
}

/// The reconnect task's side of a link.
pub(crate) struct LinkWatch {
    lost: watch::Receiver<Option<Loss>>,
    handler: JoinHandle<()>,
    writer: AbortHandle,
    started: Instant,
}

/// Starts the handler and the writer on `connection`.
pub(crate) fn start(connection: Connection, context: &Context) -> (Link, LinkWatch) {
    let id = context.shared.next_link();
    let (sink, stream) = connection.stream.split();
    let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
    let (outcome_tx, outcomes) = mpsc::unbounded_channel();
    let (lost_tx, lost) = watch::channel(None);
    let lost_tx = Arc::new(LostReason(lost_tx));
    let (gate_tx, gate) = watch::channel(Gate::default());
    let writer = Writer {
        id,
        shared: Arc::clone(&context.shared),
        gate,
        lost: Arc::clone(&lost_tx),
    };
    let writer = tokio::spawn(writer.run(sink, queue));
    let handler = Handler {
        id,
        context: context.clone(),
        calls: outgoing.downgrade(),
        outcomes: outcome_tx,
        lost: lost_tx,
        gate: gate_tx,
        // The server pings us every tick and gives up on a peer after four silent
        // ticks. We give up after two (and some grace for a busy machine), so that after
        // a silent cut we are usually back before the server has given up on us, and
        // the room never sees us leave.
        idle_limit: connection.tick.map(|tick| tick * 2 + IDLE_GRACE),
    };
    let handler = tokio::spawn(handler.run(stream));
    let watch = LinkWatch {
        lost: lost.clone(),
        writer: writer.abort_handle(),
        started: Instant::now(),
        handler,
    };
    let link = Link {
        outgoing: Some(outgoing),
        outcomes,
        lost,
        handler: watch.handler.abort_handle(),
        writer: Some(writer),
    };
    (link, watch)
}

impl Link {
    /// Whether the connection is known to be gone.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// A receiver that holds the loss once there is one.
    pub(crate) fn lost_receiver(&self) -> watch::Receiver<Option<Loss>> {
        self.lost.clone()
    }

    /// Queues the call `msg` for the writer, waiting while the queue is full.
    pub(crate) async fn send(&self, msg: ClientMessage) -> Result<(), Closed> {
        let outgoing = self.outgoing.as_ref().ok_or(Closed)?;
        outgoing.send(msg).await.map_err(|_| Closed)
    }

    /// Queues the call `msg` for the writer if there is room, without waiting.
    pub(crate) fn try_send(&self, msg: ClientMessage) -> Result<(), Closed> {
        let outgoing = self.outgoing.as_ref().ok_or(Closed)?;
        outgoing.try_send(msg).map_err(|_| Closed)
    }

    /// Forgets answers that arrived after their waiter gave up (or that nobody asked
    /// for, like the answer to a rejoin).
    pub(crate) fn drain_outcomes(&mut self) {
        while let Ok(stale) = self.outcomes.try_recv() {
            debug!(?stale, "discarding a late answer");
        }
    }

    /// Waits at most [`CALL_TIMEOUT`] for the first answer that `wanted` accepts.
    pub(crate) async fn wait_for(&mut self, wanted: impl Fn(&Outcome) -> bool) -> Waited {
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            match timeout_at(deadline, self.outcomes.recv()).await {
                Err(_) => return Waited::TimedOut,
                Ok(None) => return Waited::Closed,
                Ok(Some(outcome)) if wanted(&outcome) => return Waited::Got(outcome),
                Ok(Some(other)) => debug!(?other, "ignoring an answer nobody waits for"),
            }
        }
    }

    /// Why the connection is gone, once the handler (or the writer) has said so.
    pub(crate) async fn lost_reason(&self) -> String {
        let mut lost = self.lost.clone();
        let why = timeout(WRITE_FAILURE_GRACE * 2, lost.wait_for(Option::is_some)).await;
        match why {
            Ok(Ok(loss)) => loss.as_ref().map(|l| l.why.clone()).unwrap_or_default(),
            _ => "the connection closed".to_string(),
        }
    }

    /// Stops reading and closes the connection, waiting (at most [`CALL_TIMEOUT`]) for
    /// what is queued to be written.
    pub(crate) async fn close(&mut self) {
        // We are done reading: what the server does once we hang up is not news.
        self.handler.abort();
        // Dropping the queue's sender lets the writer flush and shut the socket down.
        self.outgoing = None;
        if let Some(writer) = self.writer.take()
            && timeout(CALL_TIMEOUT, writer).await.is_err()
        {
            debug!("the writer did not finish closing the connection in time");
        }
    }

    /// Stops the message handler at once.
    pub(crate) fn abort(&self) {
        self.handler.abort();
    }
}

impl LinkWatch {
    /// Waits until the connection is lost and returns why.
    pub(crate) async fn lost(&mut self) -> Loss {
        match self.lost.wait_for(Option::is_some).await {
            Ok(loss) => loss
                .clone()
                .unwrap_or_else(|| Loss::new("the connection closed")),
            Err(_) => Loss::new("the connection handler stopped"),
        }
    }

    /// How long ago the link started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops both tasks; once this returns, the handler prints and changes nothing more.
    pub(crate) async fn stop(self) {
        self.writer.abort();
        self.handler.abort();
        // A cancelled task reports an error; either way it has stopped.
        let _ = self.handler.await;
    }
}

/// Where a link's tasks record why the connection ended; the first reason wins.
struct LostReason(watch::Sender<Option<Loss>>);

impl LostReason {
    fn report(&self, loss: Loss) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(loss);
                true
            } else {
                false
            }
        });
    }
}

/// The message handler task's state.
struct Handler {
    /// This connection's number in the session.
    id: u64,
    context: Context,
    /// Weak, so the writer ends (and closes the socket) when the front end lets go.
    calls: mpsc::WeakSender<ClientMessage>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    lost: Arc<LostReason>,
    gate: watch::Sender<Gate>,
    idle_limit: Option<Duration>,
}

impl Handler {
    /// Handles messages until the connection ends, then reports why. Dropping `self`
    /// afterwards wakes a front end waiting for an answer.
    async fn run(self, mut stream: SplitStream<SessionStream>) {
        let loss = self.read_loop(&mut stream).await;
        debug!(why = loss.why, "message handler stopped");
        self.lost.report(loss);
    }

    async fn read_loop(&self, stream: &mut SplitStream<SessionStream>) -> Loss {
        loop {
            let next = match self.idle_limit {
                Some(limit) => match timeout(limit, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return Loss::new(format!(
                            "timed out (nothing heard from the server for {} s)",
                            limit.as_secs_f64()
                        ));
                    }
                },
                None => stream.next().await,
            };
            let msg = match next {
                None => return Loss::new("the server closed the connection"),
                Some(Err(e)) => return Loss::new(e.to_string()),
                Some(Ok(msg)) => msg,
            };
            match msg {
                ServerMessage::Ping => self.call(ClientMessage::Pong),
                ServerMessage::Pong => {}
                ServerMessage::Closing { reason } => {
                    return Loss {
                        closing: Some(reason),
                        ..Loss::new(render::closed_by_server(reason))
                    };
                }
                ServerMessage::Event(event) => self.on_event(event),
                // A cluster node that cannot reach its store refuses joins and resumes
                // for now: give this link up, so the session reconnects (to another
                // node if it has several) and resumes, keeping what waits to be said.
                ServerMessage::Reply(
                    Reply::Unavailable { id: 0, .. }
                    | Reply::ResumeFailed {
                        reason: ResumeFailure::Unavailable,
                    },
                ) => {
                    return Loss {
                        turned_away: true,
                        ..Loss::new(render::room_unavailable())
                    };
                }
                ServerMessage::Reply(reply) => self.on_reply(reply),
            }
        }
    }

    /// Queues a call of our own (a pong, a join after a refused resume). Never waits: if
    /// the queue is full we are sending anyway, which keeps the connection alive just as
    /// well as a pong.
    fn call(&self, msg: ClientMessage) {
        if let Some(calls) = self.calls.upgrade()
            && let Err(e) = calls.try_send(msg)
        {
            debug!(error = %e, "outgoing queue full or closed; a call of ours was not sent");
        }
    }

    fn output(&self) -> &dyn Output {
        self.context.output.as_ref()
    }

    /// Prints an event unless it was printed already; backlog events are marked.
    fn on_event(&self, event: Event) {
        let shared = &self.context.shared;
        let arrival = shared.position().arrive(event.seq);
        let line = render::event(&self.context.server, &event.kind);
        match arrival {
            Arrival::Repeat => debug!(seq = event.seq, "skipping an event printed already"),
            // Presence from before the join says nothing about the room now.
            Arrival::Earlier => self.output().line(&render::earlier(&line)),
            Arrival::Live | Arrival::Missed => {
                shared.members.follow(&event.kind);
                self.output()
                    .incoming(render::event_kind(&event.kind), &line);
            }
        }
    }

    /// Prints a reply, keeps the session's state, and tells a waiting front end.
    fn on_reply(&self, reply: Reply) {
        let shared = &self.context.shared;
        let view = render::ReplyView {
            nick: &shared.nick,
            quitting: shared.quitting.load(Ordering::SeqCst),
            // The banner points to /help once, not after every reconnect or /join.
            first_join: matches!(reply, Reply::Joined { .. })
                && !shared.hinted.swap(true, Ordering::SeqCst),
        };
        let kind = render::reply_kind(&reply);
        for line in render::reply(&self.context.server, &reply, &view) {
            self.output().incoming(kind, &line);
        }
        let outcome = match reply {
            Reply::Joined {
                users,
                ticket,
                epoch,
                seq,
                limits,
                ..
            } => {
                shared.members.replace(&users);
                shared.position().joined(ticket, epoch, seq);
                shared.joined.store(true, Ordering::SeqCst);
                shared.wants_room.store(true, Ordering::SeqCst);
                shared.auto_join.store(false, Ordering::SeqCst);
                let given_up = shared.sends.start_on(self.id);
                if given_up > 0 {
                    self.output().status(&render::given_up(given_up));
                }
                self.open_gate(limits);
                Outcome::Joined
            }
            Reply::Resumed {
                missed,
                lost,
                users,
                seq,
                limits,
                ..
            } => {
                for line in render::resumed(lost, missed) {
                    self.output().status(&line);
                }
                shared.members.replace(&users);
                shared.position().resumed(seq);
                shared.joined.store(true, Ordering::SeqCst);
                shared.sends.resume_on(self.id);
                self.open_gate(limits);
                return;
            }
            Reply::ResumeFailed { reason } => {
                self.resume_failed(reason);
                return;
            }
            Reply::Sent { id, .. } => {
                if let Some(sent) = shared.sends.acknowledged(id) {
                    self.output().status(&render::pending_sent(sent));
                }
                return;
            }
            Reply::NoSuchUser { nick } => {
                shared.sends.no_such_user(&nick);
                return;
            }
            // Refused: the cluster's store is unreachable and the node could not hold it.
            Reply::InvalidText { .. } | Reply::Unavailable { held: false, .. } => {
                shared.sends.explained_refusal();
                return;
            }
            Reply::Left => {
                // A later /join starts a new session: what happens while out of the room
                // is not missed.
                shared.position().forget_session();
                shared.members.replace(&[]);
                shared.joined.store(false, Ordering::SeqCst);
                shared.wants_room.store(false, Ordering::SeqCst);
                self.gate.send_modify(|gate| gate.in_room = false);
                // Everything written before the leave has been answered by now.
                shared.sends.settle_after_leaving();
                Outcome::Left
            }
            other => match render::join_refusal_reason(&other, &shared.nick) {
                Some(reason) => {
                    // Refused: we want to be where we are (`already_joined`: in the room).
                    let joined = shared.joined.load(Ordering::SeqCst);
                    shared.wants_room.store(joined, Ordering::SeqCst);
                    if shared.auto_join.swap(false, Ordering::SeqCst) && !joined {
                        self.not_in_room();
                    }
                    Outcome::JoinRefused(reason)
                }
                None => return,
            },
        };
        // Nobody may be waiting (the front end gave up); that is fine.
        let _ = self.outcomes.send(outcome);
    }

    /// Lets the writer send queued says, within `limits`.
    fn open_gate(&self, limits: FloodLimits) {
        self.gate.send_replace(Gate {
            in_room: true,
            limits: Some(limits),
        });
    }

    /// A refused resume: tells the user, then joins afresh, or says where the user
    /// stands when the nick is gone.
    fn resume_failed(&self, reason: ResumeFailure) {
        let shared = &self.context.shared;
        if let Some(line) = render::resume_failed(reason, &shared.nick) {
            self.output().status(&line);
        }
        match reason {
            ResumeFailure::EpochChanged | ResumeFailure::UnknownSession => {
                shared.position().forget_session();
                shared.auto_join.store(true, Ordering::SeqCst);
                self.call(shared.join_message());
            }
            ResumeFailure::NickInUse => {
                shared.position().forget_session();
                shared.joined.store(false, Ordering::SeqCst);
                shared.wants_room.store(false, Ordering::SeqCst);
                self.not_in_room();
            }
            ResumeFailure::AlreadyJoined => debug!("resumed a session that is already in"),
            // Ends the link before it gets here (see `read_loop`).
            ResumeFailure::Unavailable => debug!("this node cannot serve the room just now"),
        }
    }

    /// After a reconnect that did not get back into the room: drops what waits to be
    /// said and says where the user stands.
    fn not_in_room(&self) {
        let dropped = self.context.shared.sends.abandon();
        if dropped > 0 {
            self.output().status(&render::dropped_not_in_room(dropped));
        }
        self.output().status(&render::not_in_room_after_reconnect());
    }
}

/// The writer task's state.
struct Writer {
    /// This connection's number in the session.
    id: u64,
    shared: Arc<Shared>,
    gate: watch::Receiver<Gate>,
    lost: Arc<LostReason>,
}

impl Writer {
    /// Writes calls and queued says until the front end drops the call queue (then it
    /// closes the socket) or the handler stops. A failed write is reported as the
    /// reason the connection was lost only if the handler has not found a better one in
    /// time.
    async fn run(
        mut self,
        mut sink: SplitSink<SessionStream, ClientMessage>,
        mut calls: mpsc::Receiver<ClientMessage>,
    ) {
        match self.write_loop(&mut sink, &mut calls).await {
            Ok(()) => {
                if let Err(e) = sink.close().await {
                    debug!(error = %e, "closing the connection failed");
                }
            }
            Err(e) => {
                // The server may have closed the connection on purpose and said why; that
                // reason, and everything before it, is still to be read by the handler.
                debug!(error = %e, "writing to the server failed");
                tokio::time::sleep(WRITE_FAILURE_GRACE).await;
                self.lost.report(Loss::new(e.to_string()));
            }
        }
    }

    async fn write_loop(
        &mut self,
        sink: &mut SplitSink<SessionStream, ClientMessage>,
        calls: &mut mpsc::Receiver<ClientMessage>,
    ) -> Result<(), protocol::CodecError> {
        let mut pacer = Pacer::new(Instant::now());
        let mut limits = None;
        let mut versions = self.shared.sends.subscribe();
        loop {
            versions.borrow_and_update();
            let gate = *self.gate.borrow_and_update();
            if gate.limits != limits {
                limits = gate.limits;
                if let Some(told) = limits {
                    pacer.set_limits(told);
                }
            }
            let mut wrote = false;
            // Calls first, as they come: they are few and the user waits for them.
            loop {
                match calls.try_recv() {
                    Ok(msg) => {
                        write_call(sink, &mut pacer, msg).await?;
                        wrote = true;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        sink.flush().await?;
                        return Ok(());
                    }
                }
            }
            // Then queued says, as fast as the flood limit allows.
            if gate.in_room {
                while pacer.is_ready(Instant::now()) {
                    let Some(msg) = self.shared.sends.take_next(self.id) else {
                        break;
                    };
                    pacer.sent(Instant::now());
                    sink.feed(msg).await?;
                    wrote = true;
                }
            }
            if wrote {
                sink.flush().await?;
            }
            let due =
                (gate.in_room && self.shared.sends.has_unsent(self.id)).then(|| pacer.ready_at());
            tokio::select! {
                msg = calls.recv() => match msg {
                    Some(msg) => {
                        write_call(sink, &mut pacer, msg).await?;
                        sink.flush().await?;
                    }
                    None => return Ok(()),
                },
                changed = versions.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                changed = self.gate.changed() => {
                    // The handler stopped: the connection is over.
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            }
        }
    }
}

/// Writes one call (without flushing); the ones the server's flood limit counts use up
/// the pacer's allowance, but go at once.
async fn write_call(
    sink: &mut SplitSink<SessionStream, ClientMessage>,
    pacer: &mut Pacer,
    msg: ClientMessage,
) -> Result<(), protocol::CodecError> {
    let counted = !matches!(
        msg,
        ClientMessage::Leave | ClientMessage::Ping | ClientMessage::Pong
    );
    if counted {
        pacer.sent(Instant::now());
    }
    sink.feed(msg).await
}
