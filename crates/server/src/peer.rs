//! Room members as the registry sees them.
//!
//! A [`Peer`] is anything that can be handed what is meant for it without waiting. There
//! are two ways to receive the room's events:
//! - a native connection ([`NativePeer`]) *reads the history*: its writer task copies the
//!   events for its session from the room's history ([`crate::history`]) once subscribed,
//!   so the registry never touches it per event;
//! - any other peer (a BEAM node, say) is *fed*: the registry calls [`Peer::deliver`]
//!   with each event meant for it.
//!
//! Either way, replies and the like go through the peer's own queue, in order with the
//! events around them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::codec::{self, CodecError};
use protocol::{Event, LeaveReason, NodeName, Reply, ServerMessage};
use tokio_util::sync::CancellationToken;

use crate::history::{History, SessionId};
pub use crate::outbox::DeliveryError;

/// Identifies one connection for its whole life.
pub type ConnId = u64;
use crate::outbox::{Action, Item};
use crate::writer::{NOT_READING, Pipe};

/// A room event, encoded once for every native recipient (and, on first use, once for
/// every BEAM recipient).
#[derive(Debug)]
pub struct RoomEvent {
    message: ServerMessage,
    frame: Bytes,
    beam: OnceLock<Bytes>,
}

impl RoomEvent {
    /// Wraps and encodes `event`.
    pub fn new(event: Event) -> Result<Self, CodecError> {
        let message = ServerMessage::Event(event);
        let frame = codec::encode_frame(&message)?;
        Ok(Self {
            message,
            frame,
            beam: OnceLock::new(),
        })
    }

    /// Wraps `event` and encodes it into `arena`'s current chunk.
    pub fn new_in(event: Event, arena: &mut FrameArena) -> Result<Self, CodecError> {
        let message = ServerMessage::Event(event);
        let frame = arena.encode(&message)?;
        Ok(Self {
            message,
            frame,
            beam: OnceLock::new(),
        })
    }

    /// The event itself, for peers that speak another encoding.
    pub fn message(&self) -> &ServerMessage {
        &self.message
    }

    /// The whole native frame; cloning it only bumps a reference count.
    pub fn native_frame(&self) -> &Bytes {
        &self.frame
    }

    /// The event's Erlang distribution frame, filled by the first BEAM recipient.
    pub fn beam_frame_cache(&self) -> &OnceLock<Bytes> {
        &self.beam
    }
}

/// Encodes frames side by side into large shared chunks rather than one small
/// allocation each.
///
/// The history keeps thousands of small frames for a long time; allocated one by one they
/// end up scattered among the short-lived allocations of connections, and pin the
/// allocator's pages long after a crowd has left. Frames cut from a chunk share it, and
/// the chunk goes back to the allocator whole once the last of them is dropped.
#[derive(Debug, Default)]
pub struct FrameArena {
    chunk: BytesMut,
}

/// Bytes per chunk: many frames, yet large enough that the allocator maps it on its own.
const ARENA_CHUNK: usize = 256 * 1024;

impl FrameArena {
    /// Encodes `message` as one whole frame, cut from the current chunk.
    pub fn encode(&mut self, message: &ServerMessage) -> Result<Bytes, CodecError> {
        if self.chunk.capacity() - self.chunk.len() < protocol::limits::MAX_FRAME_LEN + 4 {
            self.chunk = BytesMut::with_capacity(ARENA_CHUNK);
        }
        codec::encode_into(message, &mut self.chunk)?;
        Ok(self.chunk.split().freeze())
    }
}

/// Something that can be a member of the room. Every method returns at once: the registry
/// never waits for a peer.
pub trait Peer: Send + Sync {
    /// Queues a room event. Called only for peers that do not read the history
    /// themselves ([`Peer::reads_history`] false).
    fn deliver(&self, event: &RoomEvent) -> Result<(), DeliveryError>;
    /// Queues the answer to one of this peer's calls.
    fn reply(&self, reply: Reply) -> Result<(), DeliveryError>;
    /// Ends the peer's connection for `reason`, telling it why when it can.
    fn close(&self, reason: LeaveReason);
    /// The peer's node name, for logs.
    fn node(&self) -> &NodeName;
    /// Called once per liveness tick: probe the peer, and say whether it has been heard
    /// from within `silence_limit`. A peer that has not is dropped (`timed out`).
    fn tick(&self, silence_limit: Duration) -> bool;
    /// Whether this peer's writer reads the room's history itself (then the registry
    /// subscribes it instead of delivering events one by one).
    fn reads_history(&self) -> bool {
        false
    }
    /// Starts writing the history's events for `session` from number `from`, after
    /// everything queued so far. Only for peers that read the history.
    fn subscribe(&self, session: SessionId, from: u64) -> Result<(), DeliveryError> {
        let _ = (session, from);
        Ok(())
    }
    /// Stops writing history events, after the events up to now and everything queued.
    fn unsubscribe(&self) -> Result<(), DeliveryError> {
        Ok(())
    }
    /// Queues already encoded event frames (the backlog after a join). Only for peers
    /// that read the history.
    fn send_frames(&self, frames: Bytes) -> Result<(), DeliveryError> {
        let _ = frames;
        Ok(())
    }
    /// The number of the next history event this peer's writer will look at, while it
    /// reads the history; for finding slow consumers.
    fn cursor(&self) -> Option<u64> {
        None
    }
}

/// The tick probe, encoded once for every native peer.
static PING_FRAME: LazyLock<Bytes> =
    LazyLock::new(|| codec::encode_frame(&ServerMessage::Ping).expect("a ping encodes"));

/// Milliseconds since the first call: a clock cheap enough to stamp on every frame read.
fn clock_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection of our native protocol: its own queue and the room's history, both
/// drained by its writer task, and a token that stops both of its tasks at once. When
/// the last handle goes (the reader has ended and the registry has forgotten it), the
/// writer writes what is queued and closes.
#[derive(Debug)]
pub struct NativePeer {
    node: NodeName,
    addr: SocketAddr,
    /// What this peer shares with its writer task.
    pipe: Arc<Pipe>,
    history: Arc<History>,
    stop: CancellationToken,
    /// When the reader last got a frame ([`clock_ms`]).
    last_heard: AtomicU64,
}

impl NativePeer {
    /// A peer for the connection from `addr`, authenticated as `node`, whose writer
    /// drains `pipe` and reads `history`.
    pub fn new(
        node: NodeName,
        addr: SocketAddr,
        pipe: Arc<Pipe>,
        history: Arc<History>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            node,
            addr,
            pipe,
            history,
            stop,
            last_heard: AtomicU64::new(clock_ms()),
        }
    }

    /// Records that a frame arrived: the peer is alive.
    pub fn heard(&self) {
        self.last_heard.store(clock_ms(), Ordering::Relaxed);
    }

    /// The remote address, for logs.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues an already encoded frame, after the history's events up to now.
    pub fn push(&self, frame: Bytes) -> Result<(), DeliveryError> {
        self.queue(Action::Frame(frame))
    }

    fn queue(&self, action: Action) -> Result<(), DeliveryError> {
        let after = self.history.head();
        self.pipe.outbox.push(Item { after, action })
    }

    /// Queues any server message (encoding it for this peer alone).
    pub fn send(&self, message: &ServerMessage) -> Result<(), DeliveryError> {
        match codec::encode_frame(message) {
            Ok(frame) => self.push(frame),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a server message");
                Ok(())
            }
        }
    }

    /// Stops the connection now, dropping whatever is queued.
    pub fn abort(&self) {
        self.stop.cancel();
    }

    /// Ends the connection from the server's side for `reason` (remembered for
    /// [`NativePeer::ended_for`]), dropping whatever is queued.
    pub fn abort_for(&self, reason: LeaveReason) {
        self.pipe.end_for(reason);
        self.stop.cancel();
    }

    /// Why the server (or the writer) ended this connection, if it did.
    pub fn ended_for(&self) -> Option<LeaveReason> {
        self.pipe.ended_for()
    }
}

impl Peer for NativePeer {
    fn deliver(&self, event: &RoomEvent) -> Result<(), DeliveryError> {
        // Native peers read the history; this is only for events outside it.
        self.push(event.native_frame().clone())
    }

    fn reply(&self, reply: Reply) -> Result<(), DeliveryError> {
        self.send(&ServerMessage::Reply(reply))
    }

    fn close(&self, reason: LeaveReason) {
        self.pipe.end_for(reason);
        // A slow consumer cannot take more frames; anyone else is told why, then closed
        // once its queue is written.
        let told = reason != LeaveReason::SendQueueExceeded
            && self.send(&ServerMessage::Closing { reason }).is_ok();
        if told {
            self.pipe.outbox.finish();
        } else {
            self.stop.cancel();
        }
    }

    fn node(&self) -> &NodeName {
        &self.node
    }

    fn tick(&self, silence_limit: Duration) -> bool {
        let silent_ms = clock_ms().saturating_sub(self.last_heard.load(Ordering::Relaxed));
        if u128::from(silent_ms) >= silence_limit.as_millis() {
            return false;
        }
        // A full queue is noticed by the registry's next reply or sweep.
        let _ = self.push(PING_FRAME.clone());
        true
    }

    fn reads_history(&self) -> bool {
        true
    }

    fn subscribe(&self, session: SessionId, from: u64) -> Result<(), DeliveryError> {
        self.queue(Action::Subscribe { session, from })
    }

    fn unsubscribe(&self) -> Result<(), DeliveryError> {
        self.queue(Action::Unsubscribe)
    }

    fn send_frames(&self, frames: Bytes) -> Result<(), DeliveryError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.push(frames)
    }

    fn cursor(&self) -> Option<u64> {
        match self.pipe.cursor.load(Ordering::Relaxed) {
            NOT_READING => None,
            next => Some(next),
        }
    }
}

impl Drop for NativePeer {
    fn drop(&mut self) {
        self.pipe.outbox.finish();
    }
}
