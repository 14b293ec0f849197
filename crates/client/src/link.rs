//! One connection's worth of session: its message handler and its writer.
//!
//! [`start`] runs two tasks on an authenticated [`Connection`]:
//!
//! - the *message handler* reads every server message, answers pings, prints everything
//!   else through the session's [`Output`] as it arrives, and keeps the session's join
//!   state and member list;
//! - the *writer* drains a queue of outgoing messages into the socket, flushing once per
//!   batch.
//!
//! When the connection ends, the link records why, once (its *lost reason*), and stops.
//! The front end ([`crate::session`]) sends and waits for answers through the [`Link`];
//! the reconnect task ([`crate::reconnect`]) keeps a [`LinkWatch`] to learn of the loss
//! and stop what is left of the link. A reconnecting session goes through many links; the
//! join state, member list and output are the session's and outlive them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use protocol::{ClientMessage, Reply, ServerMessage};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use crate::connect::{Connection, SessionStream};
use crate::render;
use crate::shared::{CALL_TIMEOUT, Output, Shared};

/// After a failed write, how long the message handler gets to read what the server sent
/// before closing (typically the reason it closed) before the write error is reported.
const WRITE_FAILURE_GRACE: Duration = Duration::from_secs(2);

/// Added to four server ticks before a silent server counts as gone.
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// Outgoing messages queued for the writer before senders wait.
const OUTGOING_QUEUE: usize = 64;

/// What every link of a session shares: where lines go and the session's state.
#[derive(Clone)]
pub(crate) struct Context {
    /// The server's node name, as shown in front of its lines.
    pub(crate) server: String,
    /// Where lines go.
    pub(crate) output: Arc<dyn Output>,
    /// The session's join state and member list.
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

/// The front end's side of a link.
pub(crate) struct Link {
    /// `None` once closing.
    outgoing: Option<mpsc::Sender<ClientMessage>>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    lost: watch::Receiver<Option<String>>,
    handler: AbortHandle,
    writer: Option<JoinHandle<()>>,
}

/// The reconnect task's side of a link.
pub(crate) struct LinkWatch {
    lost: watch::Receiver<Option<String>>,
    handler: JoinHandle<()>,
    writer: AbortHandle,
    started: Instant,
}

/// Starts the handler and the writer on `connection`.
pub(crate) fn start(connection: Connection, context: &Context) -> (Link, LinkWatch) {
    let (sink, stream) = connection.stream.split();
    let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
    let (outcome_tx, outcomes) = mpsc::unbounded_channel();
    let (lost_tx, lost) = watch::channel(None);
    let lost_tx = Arc::new(LostReason(lost_tx));
    let writer = tokio::spawn(write_loop(sink, queue, Arc::clone(&lost_tx)));
    let handler = Handler {
        context: context.clone(),
        pongs: outgoing.downgrade(),
        outcomes: outcome_tx,
        lost: lost_tx,
        // The server pings us every tick and gives up on a peer after four silent
        // ticks; we do the same, with some grace for a busy machine.
        idle_limit: connection.tick.map(|tick| tick * 4 + IDLE_GRACE),
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

    /// A receiver that holds the lost reason once there is one.
    pub(crate) fn lost_receiver(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Queues `msg` for the writer, waiting while the queue is full.
    pub(crate) async fn send(&self, msg: ClientMessage) -> Result<(), Closed> {
        let outgoing = self.outgoing.as_ref().ok_or(Closed)?;
        outgoing.send(msg).await.map_err(|_| Closed)
    }

    /// Queues `msg` for the writer if there is room, without waiting.
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
            Ok(Ok(why)) => why.clone().unwrap_or_default(),
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
    pub(crate) async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => "the connection handler stopped".to_string(),
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
struct LostReason(watch::Sender<Option<String>>);

impl LostReason {
    fn report(&self, why: String) {
        self.0.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(why);
                true
            } else {
                false
            }
        });
    }
}

/// The message handler task's state.
struct Handler {
    context: Context,
    /// Weak, so the writer ends (and closes the socket) when the front end lets go.
    pongs: mpsc::WeakSender<ClientMessage>,
    outcomes: mpsc::UnboundedSender<Outcome>,
    lost: Arc<LostReason>,
    idle_limit: Option<Duration>,
}

impl Handler {
    /// Handles messages until the connection ends, then reports why. Dropping `self`
    /// afterwards wakes a front end waiting for an answer.
    async fn run(self, mut stream: SplitStream<SessionStream>) {
        let why = self.read_loop(&mut stream).await;
        debug!(why, "message handler stopped");
        self.lost.report(why);
    }

    async fn read_loop(&self, stream: &mut SplitStream<SessionStream>) -> String {
        loop {
            let next = match self.idle_limit {
                Some(limit) => match timeout(limit, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        return format!(
                            "timed out (nothing heard from the server for {} s)",
                            limit.as_secs_f64()
                        );
                    }
                },
                None => stream.next().await,
            };
            let msg = match next {
                None => return "the server closed the connection".to_string(),
                Some(Err(e)) => return e.to_string(),
                Some(Ok(msg)) => msg,
            };
            match msg {
                ServerMessage::Ping => self.pong(),
                ServerMessage::Pong => {}
                ServerMessage::Closing { reason } => return reason.describe().to_string(),
                ServerMessage::Event(event) => {
                    self.context.shared.members.follow(&event.kind);
                    let line = render::event(&self.context.server, &event.kind);
                    self.context
                        .output
                        .incoming(render::event_kind(&event.kind), &line);
                }
                ServerMessage::Reply(reply) => self.on_reply(reply),
            }
        }
    }

    /// Answers a tick. Never waits: if the queue is full, we are sending anyway, and
    /// that keeps the connection alive just as well.
    fn pong(&self) {
        if let Some(outgoing) = self.pongs.upgrade()
            && outgoing.try_send(ClientMessage::Pong).is_err()
        {
            debug!("outgoing queue full; skipping a pong");
        }
    }

    /// Prints a reply, updates the join state, and tells a waiting front end.
    fn on_reply(&self, reply: Reply) {
        let shared = &self.context.shared;
        let quitting = shared.quitting.load(Ordering::SeqCst);
        let kind = render::reply_kind(&reply);
        for line in render::reply(&self.context.server, &reply, quitting) {
            self.context.output.incoming(kind, &line);
        }
        match &reply {
            Reply::Joined { users, .. } | Reply::Users { users, .. } => {
                shared.members.replace(users)
            }
            Reply::Left => shared.members.replace(&[]),
            _ => {}
        }
        let outcome = match &reply {
            Reply::Joined { .. } => {
                shared.joined.store(true, Ordering::SeqCst);
                shared.wants_room.store(true, Ordering::SeqCst);
                Outcome::Joined
            }
            Reply::Left => {
                shared.joined.store(false, Ordering::SeqCst);
                shared.wants_room.store(false, Ordering::SeqCst);
                Outcome::Left
            }
            other => match render::join_refusal_reason(other) {
                Some(reason) => {
                    // Refused: we want to be where we are (`already_joined`: in the room).
                    let joined = shared.joined.load(Ordering::SeqCst);
                    shared.wants_room.store(joined, Ordering::SeqCst);
                    Outcome::JoinRefused(reason)
                }
                None => return,
            },
        };
        // Nobody may be waiting (the front end gave up); that is fine.
        let _ = self.outcomes.send(outcome);
    }
}

/// The writer task: sends queued messages, flushing once per batch, until the front end
/// drops the queue; then closes the socket. A failed write is reported as the reason
/// the connection was lost only if the handler has not found a better one in time.
async fn write_loop(
    mut sink: SplitSink<SessionStream, ClientMessage>,
    mut queue: mpsc::Receiver<ClientMessage>,
    lost: Arc<LostReason>,
) {
    let sent = async {
        while let Some(msg) = queue.recv().await {
            sink.feed(msg).await?;
            while let Ok(more) = queue.try_recv() {
                sink.feed(more).await?;
            }
            sink.flush().await?;
        }
        Ok::<_, protocol::CodecError>(())
    }
    .await;
    match sent {
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
            lost.report(e.to_string());
        }
    }
}
