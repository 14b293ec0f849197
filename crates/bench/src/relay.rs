//! The baseline relay: the least a chat server must do, as a yardstick for `chat-server`.
//!
//! Same framing and messages as the real protocol (4-byte big-endian length + bincode, read
//! and written by [`crate::wire`] without a `String` per field), and nothing else:
//! - no preamble and no handshake: a connection's first bytes are its first frame;
//! - no registry and no validation: no nick rules, no rate limit, no liveness ticks;
//! - a `Join` is answered with `Reply::Joined` listing the joiner alone (no member list),
//!   and `Joined` is broadcast to everyone already in the room;
//! - a `Say` is encoded once as a `ServerMessage::Event` and appended to every other
//!   member's bounded queue, which is that member's pending output: one contiguous buffer
//!   behind a mutex, as a server's per-client output buffer is (Redis' client output
//!   buffer; a server that encrypts records must batch its writes that way anyway). A
//!   delivery costs an uncontended lock and a copy of the frame, with no reference count
//!   shared between cores; a queue holding `--queue` frames closes that member;
//! - each connection has a reader task and a writer task; the writer takes the whole
//!   pending buffer and writes it with one syscall;
//! - an idle connection holds no buffers: the reader reads into a stack buffer and keeps
//!   only an incomplete frame's bytes, the writer frees each batch once written.
//!
//! It runs as its own process (`chat-bench relay`, started by the bench) so that its CPU
//! and memory are measured exactly as the server's are.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::sync::Mutex;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, ClientFrame};

/// Capacity a queue starts a batch with, so that a batch of small frames grows by few
/// reallocations.
const BATCH_START: usize = 1024;

/// Bytes read per `read` syscall (on the reader's stack, never kept).
const READ_CHUNK: usize = 16 * 1024;

/// One connected member of the relay's room.
struct Member {
    id: u64,
    queue: Arc<Queue>,
    stop: CancellationToken,
}

/// A connection's bounded send queue: its pending output bytes.
struct Queue {
    pending: Mutex<Pending>,
    ready: Notify,
    limit: usize,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    frames: usize,
}

impl Queue {
    fn new(limit: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            ready: Notify::new(),
            limit: limit.max(1),
        }
    }

    /// Appends one frame; false when the queue is full (a slow consumer).
    fn push(&self, frame: &[u8]) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.frames >= self.limit {
            return false;
        }
        let was_empty = pending.frames == 0;
        if was_empty {
            pending.bytes.reserve(BATCH_START.max(frame.len()));
        }
        pending.bytes.extend_from_slice(frame);
        pending.frames += 1;
        drop(pending);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Takes everything queued (empty if nothing is).
    fn take(&self) -> Vec<u8> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.frames = 0;
        std::mem::take(&mut pending.bytes)
    }
}

/// The room: the members' queues, and a sequence number for events.
#[derive(Default)]
struct Room {
    members: RwLock<Vec<Member>>,
    seq: AtomicU64,
}

impl Room {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Pushes `frame` to every member but `from`; members whose queue is full are closed.
    fn broadcast(&self, from: u64, frame: &[u8]) {
        let mut failed = Vec::new();
        {
            let members = self.members.read().unwrap_or_else(|p| p.into_inner());
            for member in members.iter().filter(|m| m.id != from) {
                if !member.queue.push(frame) {
                    failed.push(member.id);
                }
            }
        }
        for id in failed {
            self.remove(id);
        }
    }

    /// Tells everyone already in the room about `member`, then adds it; one lock, so each
    /// join reaches exactly the members who joined before it.
    fn join(&self, member: Member, frame: &[u8]) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        for other in members.iter() {
            if !other.queue.push(frame) {
                other.stop.cancel();
            }
        }
        members.retain(|m| !m.stop.is_cancelled());
        members.push(member);
    }

    /// Takes `id` out of the room and stops its tasks.
    fn remove(&self, id: u64) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = members.iter().position(|m| m.id == id) {
            members.swap_remove(at).stop.cancel();
        }
    }
}

/// Accepts connections on `listener` forever; each member's queue holds `queue` frames.
pub async fn serve(listener: TcpListener, queue: usize) {
    let room = Arc::new(Room::default());
    let mut next_id = 0;
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        tokio::spawn(connection(stream, addr, next_id, Arc::clone(&room), queue));
    }
}

async fn connection(stream: TcpStream, addr: SocketAddr, id: u64, room: Arc<Room>, queue: usize) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
    }
    let (read_half, write_half) = stream.into_split();
    let queue = Arc::new(Queue::new(queue));
    let stop = CancellationToken::new();
    tokio::spawn(write_loop(write_half, Arc::clone(&queue), stop.clone()));
    let mut session = Session {
        id,
        room: &room,
        queue,
        stop: stop.clone(),
        nick: None,
        pending: BytesMut::new(),
    };
    // One cancellation future for the whole loop: making a new one per read costs a lock.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            () = &mut stopped => break,
            ready = read_half.readable() => {
                if ready.is_err() {
                    break;
                }
            }
        }
        if !session.read_ready(&read_half) {
            break;
        }
    }
    if session.nick.is_some() {
        room.remove(id);
    }
    stop.cancel();
}

/// A connection's reader state.
struct Session<'a> {
    id: u64,
    room: &'a Room,
    queue: Arc<Queue>,
    stop: CancellationToken,
    nick: Option<Vec<u8>>,
    /// Bytes of an incomplete frame, kept between reads.
    pending: BytesMut,
}

impl Session<'_> {
    /// Reads until the socket would block, handling every whole frame. False when the
    /// connection must close.
    fn read_ready(&mut self, socket: &OwnedReadHalf) -> bool {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match socket.try_read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    if !self.received(&chunk[..n]) {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::debug!(error = %e, "read failed");
                    return false;
                }
            }
        }
    }

    /// Handles the whole frames in `data` (after any pending bytes) and keeps the rest.
    fn received(&mut self, data: &[u8]) -> bool {
        if self.pending.is_empty() {
            let Some(used) = self.frames(data) else {
                return false;
            };
            if used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(data);
            let Some(used) = self.frames(&pending) else {
                return false;
            };
            pending.advance(used);
            if !pending.is_empty() {
                self.pending = pending;
            }
        }
        true
    }

    /// Handles every whole frame at the start of `data`; returns the bytes used, or
    /// `None` on a protocol error.
    fn frames(&mut self, data: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            match wire::split_frame(&data[at..]) {
                Ok(Some((payload, used))) => {
                    match wire::parse_client(payload) {
                        Ok(message) => self.on_message(message),
                        Err(e) => {
                            tracing::debug!(error = %e, "bad frame; closing");
                            return None;
                        }
                    }
                    at += used;
                }
                Ok(None) => return Some(at),
                Err(e) => {
                    tracing::debug!(error = %e, "bad frame; closing");
                    return None;
                }
            }
        }
    }

    fn on_message(&mut self, message: ClientFrame<'_>) {
        match message {
            ClientFrame::Say(text) => {
                let Some(from) = &self.nick else {
                    return;
                };
                let mut frame = Vec::with_capacity(16 + from.len() + text.len());
                wire::event_message(&mut frame, self.room.next_seq(), from, text);
                self.room.broadcast(self.id, &frame);
            }
            ClientFrame::Join(nick) => {
                if self.nick.is_some() {
                    return;
                }
                let mut reply = Vec::new();
                let seq = self.room.seq.load(Ordering::Relaxed);
                wire::reply_joined_alone(&mut reply, nick, self.id, seq);
                self.push(reply);
                let mut frame = Vec::new();
                wire::event_joined(&mut frame, self.room.next_seq(), nick);
                let member = Member {
                    id: self.id,
                    queue: Arc::clone(&self.queue),
                    stop: self.stop.clone(),
                };
                self.room.join(member, &frame);
                self.nick = Some(nick.to_vec());
            }
            ClientFrame::Leave => {
                if self.nick.take().is_some() {
                    self.room.remove_keeping(self.id);
                    let mut reply = Vec::new();
                    wire::reply_left(&mut reply);
                    self.push(reply);
                }
            }
            ClientFrame::Ping => {
                let mut pong = Vec::new();
                wire::server_pong(&mut pong);
                self.push(pong);
            }
            ClientFrame::Ignored => {}
        }
    }

    /// Queues a frame for this connection alone.
    fn push(&self, frame: Vec<u8>) {
        if !self.queue.push(&frame) {
            self.stop.cancel();
        }
    }
}

impl Room {
    /// Takes `id` out of the room without stopping its connection (`Leave`).
    fn remove_keeping(&self, id: u64) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        members.retain(|m| m.id != id);
    }
}

/// Drains a connection's queue onto its socket: everything queued, in one write.
async fn write_loop(mut socket: OwnedWriteHalf, queue: Arc<Queue>, stop: CancellationToken) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            () = &mut stopped => return,
            () = queue.ready.notified() => {}
        }
        let batch = queue.take();
        if batch.is_empty() {
            continue;
        }
        let written = tokio::select! {
            biased;
            () = &mut stopped => return,
            written = socket.write_all(&batch) => written,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "write failed");
            stop.cancel();
            return;
        }
    }
}
