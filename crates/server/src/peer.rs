//! Room members as the registry sees them: a [`Peer`] is anything that can be handed an
//! event without waiting. [`NativePeer`] is a connection of our own protocol; a BEAM node
//! or a remote cluster node can later be a peer too, and the registry will not care.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::codec::{self, CodecError};
use protocol::{Event, LeaveReason, NodeName, Reply, ServerMessage};
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;

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

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The peer's send queue is full: it does not read fast enough.
    #[error("send queue exceeded")]
    QueueFull,
    /// The peer is gone.
    #[error("peer closed")]
    Closed,
}

/// Something that can be a member of the room. Every method returns at once: the registry
/// never waits for a peer.
pub trait Peer: Send + Sync {
    /// Queues a room event.
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
}

/// The tick probe, encoded once for every native peer.
static PING_FRAME: LazyLock<Bytes> =
    LazyLock::new(|| codec::encode_frame(&ServerMessage::Ping).expect("a ping encodes"));

/// Milliseconds since the first call: a clock cheap enough to stamp on every frame read.
fn clock_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(START.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A connection of our native protocol: a bounded queue drained by its writer task, and a
/// token that stops both of its tasks at once. When the last handle goes (the reader has
/// ended and the registry has forgotten it), the writer writes what is queued and closes.
#[derive(Debug)]
pub struct NativePeer {
    node: NodeName,
    addr: SocketAddr,
    outbox: Arc<Outbox>,
    stop: CancellationToken,
    /// When the reader last got a frame ([`clock_ms`]).
    last_heard: AtomicU64,
}

impl NativePeer {
    /// A peer for the connection from `addr`, authenticated as `node`.
    pub fn new(
        node: NodeName,
        addr: SocketAddr,
        outbox: Arc<Outbox>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            node,
            addr,
            outbox,
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

    /// Queues an already encoded frame.
    pub fn push(&self, frame: Bytes) -> Result<(), DeliveryError> {
        self.outbox.push(frame)
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
}

impl Peer for NativePeer {
    fn deliver(&self, event: &RoomEvent) -> Result<(), DeliveryError> {
        self.push(event.native_frame().clone())
    }

    fn reply(&self, reply: Reply) -> Result<(), DeliveryError> {
        self.send(&ServerMessage::Reply(reply))
    }

    fn close(&self, reason: LeaveReason) {
        // A slow consumer cannot take more frames; anyone else is told why, then closed
        // once its queue is written.
        let told = reason != LeaveReason::SendQueueExceeded
            && self.send(&ServerMessage::Closing { reason }).is_ok();
        if told {
            self.outbox.finish();
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
        // A full queue is noticed by the registry's next delivery.
        let _ = self.push(PING_FRAME.clone());
        true
    }
}

impl Drop for NativePeer {
    fn drop(&mut self) {
        self.outbox.finish();
    }
}
