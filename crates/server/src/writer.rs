//! A connection's writer task: merges the connection's own queue ([`Outbox`]) with the
//! room's history ([`History`]) onto the socket, in one order.
//!
//! Each round it notes the history's newest event, takes everything queued for the
//! connection, and copies into one contiguous buffer: the history's events for its
//! session up to each queued item's stamp, the item, and then the rest of the history up
//! to the noted event. Then it writes the buffer with one call. Copying small frames into
//! one buffer costs less than handing the kernel one slice per frame. A native
//! connection's buffer is then sealed into as few records as the record limit allows
//! ([`protocol::secure::Sealer`]: many frames per record, a frame may span two) before
//! the write; a BEAM node's is written as it is. A busy connection fills up to
//! [`ROUND_BUDGET`] bytes per write; an idle one holds no buffer at all.
//!
//! A connection whose position falls out of the history has lost events: it is a slow
//! consumer, and the writer ends it (`send queue exceeded`). It stops at once when the
//! connection's stop token fires, even in the middle of a write to a peer that does not
//! read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use bytes::{BufMut, BytesMut};
use protocol::LeaveReason;
use protocol::secure::Sealer;
use protocol::secure::record::sealed_len;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::history::{Copied, History, SessionId};
use crate::outbox::{Action, Item, Outbox};

/// Most bytes gathered for one write.
pub const ROUND_BUDGET: usize = 64 * 1024;

/// [`Pipe::cursor`] when the writer is not reading the history.
pub const NOT_READING: u64 = u64::MAX;

/// What a native connection's peer and its writer share: the own queue, the writer's
/// position in the history (published for the registry's slow-consumer sweep), and why
/// the connection was ended from the server's side.
#[derive(Debug)]
pub struct Pipe {
    /// The connection's own queue.
    pub outbox: Outbox,
    /// The next history event the writer will look at, or [`NOT_READING`].
    pub cursor: AtomicU64,
    /// The first reason the server gave for ending the connection, as an index into
    /// [`REASONS`] plus one (0: none).
    ended: AtomicU8,
}

/// Leave reasons as stored in [`Pipe`].
const REASONS: [LeaveReason; 8] = [
    LeaveReason::Left,
    LeaveReason::Quit,
    LeaveReason::ConnectionLost,
    LeaveReason::Timeout,
    LeaveReason::SendQueueExceeded,
    LeaveReason::Flooding,
    LeaveReason::ProtocolError,
    LeaveReason::ServerShutdown,
];

impl Pipe {
    /// A pipe whose own queue holds at most `max_items` items and `max_bytes` bytes.
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            outbox: Outbox::new(max_items, max_bytes),
            cursor: AtomicU64::new(NOT_READING),
            ended: AtomicU8::new(0),
        }
    }

    /// Records why the server ends the connection; the first reason stays.
    pub fn end_for(&self, reason: LeaveReason) {
        let index = REASONS.iter().position(|r| *r == reason).unwrap_or(2);
        let stored = u8::try_from(index + 1).unwrap_or(3);
        let _ = self
            .ended
            .compare_exchange(0, stored, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Why the server ended the connection, if it did.
    pub fn ended_for(&self) -> Option<LeaveReason> {
        match self.ended.load(Ordering::Relaxed) {
            0 => None,
            n => REASONS.get(usize::from(n) - 1).copied(),
        }
    }
}

/// Where the writer stands in the history: the session whose events it writes, and the
/// next event to look at.
#[derive(Debug, Clone, Copy)]
struct Reading {
    session: SessionId,
    next: u64,
}

/// How a round of gathering ended.
enum Gathered {
    /// Everything available was gathered.
    All,
    /// The buffer is full; more is waiting.
    More,
    /// The connection's position fell out of the history.
    FellOff,
}

/// The writer's state between rounds.
struct Writer {
    pipe: Arc<Pipe>,
    history: Arc<History>,
    reading: Option<Reading>,
    /// Items taken from the outbox and not yet written.
    pending: VecDeque<Item>,
    /// The outbox asked to close after its items.
    last: bool,
}

impl Writer {
    /// Fills `out` with what is due, in order, up to [`ROUND_BUDGET`] bytes.
    fn gather(&mut self, out: &mut BytesMut) -> Gathered {
        // Note the head before taking the queue: an item queued after the take carries a
        // stamp at least this head, so nothing written this round can overtake it.
        let head = self.history.head();
        let batch = self.pipe.outbox.take();
        self.pending.extend(batch.items);
        self.last |= batch.last;
        while let Some(item) = self.pending.front() {
            if let Some(reading) = &mut self.reading {
                match self.history.copy_for(
                    reading.session,
                    &mut reading.next,
                    item.after,
                    out,
                    ROUND_BUDGET,
                ) {
                    Copied::UpTo(_) => {}
                    Copied::Partial(_) => return self.publish(Gathered::More),
                    Copied::FellOff => return Gathered::FellOff,
                }
            }
            let Some(item) = self.pending.pop_front() else {
                break;
            };
            match item.action {
                Action::Frame(frame) => out.put_slice(&frame),
                Action::Subscribe { session, from } => {
                    self.reading = Some(Reading {
                        session,
                        next: from,
                    });
                }
                Action::Unsubscribe => self.reading = None,
            }
            if out.len() >= ROUND_BUDGET {
                return self.publish(Gathered::More);
            }
        }
        if self.last {
            // Closing: nothing after the last queued item.
            return self.publish(Gathered::All);
        }
        let outcome = match &mut self.reading {
            Some(reading) => {
                match self.history.copy_for(
                    reading.session,
                    &mut reading.next,
                    head,
                    out,
                    ROUND_BUDGET,
                ) {
                    Copied::UpTo(_) => Gathered::All,
                    Copied::Partial(_) => Gathered::More,
                    Copied::FellOff => return Gathered::FellOff,
                }
            }
            None => Gathered::All,
        };
        self.publish(outcome)
    }

    /// Publishes the position for the registry's sweep.
    fn publish(&self, outcome: Gathered) -> Gathered {
        let next = self.reading.map_or(NOT_READING, |r| r.next);
        self.pipe.cursor.store(next, Ordering::Relaxed);
        outcome
    }
}

/// How what the writer gathers goes onto the socket.
pub enum Encoding {
    /// As it is (Erlang distribution).
    Plain,
    /// Sealed into records of the secure channel, continuing the stream the handshake
    /// started.
    Sealed(Sealer),
}

/// Runs until the outbox finishes, the socket fails, the connection falls out of the
/// history, or `stop` fires. `group` is the history wake-up group to wait in.
///
/// An `async move` block rather than an `async fn`: an async fn's future keeps its
/// arguments beside the locals made from them for its whole life, and this future lives
/// as long as the connection.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice for the connection's life"
)]
pub fn run<W: AsyncWrite + Unpin>(
    mut socket: W,
    pipe: Arc<Pipe>,
    history: Arc<History>,
    group: usize,
    stop: CancellationToken,
    mut encoding: Encoding,
) -> impl Future<Output = ()> {
    async move {
        let mut writer = Writer {
            pipe: pipe.clone(),
            history: history.clone(),
            reading: None,
            pending: VecDeque::new(),
            last: false,
        };
        let mut buffer = BytesMut::new();
        let mut sealed = BytesMut::new();
        loop {
            // Arm both wake-ups before looking, so that nothing appended or queued while we
            // look is missed.
            let appended = history.changed(group);
            let queued = pipe.outbox.ready();
            tokio::pin!(appended, queued);
            appended.as_mut().enable();
            queued.as_mut().enable();

            let gathered = writer.gather(&mut buffer);
            if let Gathered::FellOff = gathered {
                tracing::debug!("fell out of the history; dropping the slow consumer");
                pipe.end_for(LeaveReason::SendQueueExceeded);
                break;
            }
            if !buffer.is_empty() {
                let out = match &mut encoding {
                    Encoding::Plain => &buffer,
                    Encoding::Sealed(sealer) => {
                        sealed.reserve(sealed_len(buffer.len()));
                        if let Err(e) = sealer.seal_stream([&buffer[..]], &mut sealed) {
                            tracing::error!(error = %e, "cannot seal what is to be sent");
                            break;
                        }
                        &sealed
                    }
                };
                let written = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    result = socket.write_all(out) => result,
                };
                if let Err(e) = written {
                    tracing::debug!(error = %e, "write failed");
                    break;
                }
                buffer.clear();
                sealed.clear();
            }
            if writer.last && writer.pending.is_empty() {
                // Orderly end: everything is written; send FIN.
                let _ = socket.shutdown().await;
                break;
            }
            if let Gathered::More = gathered {
                continue;
            }
            // Idle: hold no buffer while waiting.
            buffer = BytesMut::new();
            sealed = BytesMut::new();
            let reading = writer.reading.is_some();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = &mut queued => {}
                () = &mut appended, if reading => {}
            }
        }
        pipe.outbox.close();
        stop.cancel();
    }
}
