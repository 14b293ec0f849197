//! The baseline relay: the least a chat server must do, as a yardstick for `chat-server`.
//!
//! Same framing and messages as the real protocol (4-byte big-endian length + bincode, read
//! and written by [`crate::wire`] without a `String` per field), and nothing else:
//! - no preamble and no handshake: a connection's first bytes are its first frame;
//! - no registry and no validation: no nick rules, no rate limit, no liveness ticks;
//! - a `Join` is answered with `Reply::Joined` listing the joiner alone (no member list),
//!   and `Joined` is broadcast to everyone already in the room;
//! - a `Say` is encoded once as a `ServerMessage::Event` and the same `Bytes` pushed
//!   (`try_send`) to every other member's bounded queue; a full queue closes that member;
//! - each connection has a reader task and a writer task; the writer copies everything
//!   queued into one contiguous buffer and writes it with one syscall (the way a server
//!   that encrypts records must batch anyway);
//! - an idle connection holds no buffers: the reader reads into a stack buffer and keeps
//!   only an incomplete frame's bytes, the writer drops a batch buffer that grew.
//!
//! It runs as its own process (`chat-bench relay`, started by the bench) so that its CPU
//! and memory are measured exactly as the server's are.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::wire::{self, ClientFrame};

/// Largest batch a writer gathers before writing, in bytes.
const MAX_BATCH: usize = 256 * 1024;

/// A writer's batch buffer larger than this is released after use.
const KEEP_BATCH: usize = 16 * 1024;

/// Bytes read per `read` syscall (on the reader's stack, never kept).
const READ_CHUNK: usize = 16 * 1024;

/// One connected member of the relay's room.
struct Member {
    id: u64,
    queue: mpsc::Sender<Bytes>,
    stop: CancellationToken,
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
    fn broadcast(&self, from: u64, frame: &Bytes) {
        let mut failed = Vec::new();
        {
            let members = self.members.read().unwrap_or_else(|p| p.into_inner());
            for member in members.iter().filter(|m| m.id != from) {
                if member.queue.try_send(frame.clone()).is_err() {
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
    fn join(&self, member: Member, frame: &Bytes) {
        let mut members = self.members.write().unwrap_or_else(|p| p.into_inner());
        for other in members.iter() {
            if other.queue.try_send(frame.clone()).is_err() {
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
    let (tx, rx) = mpsc::channel(queue.max(1));
    let stop = CancellationToken::new();
    tokio::spawn(write_loop(write_half, rx, stop.clone()));
    let mut session = Session {
        id,
        room: &room,
        queue: tx,
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
    queue: mpsc::Sender<Bytes>,
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
                self.room.broadcast(self.id, &Bytes::from(frame));
            }
            ClientFrame::Join(nick) => {
                if self.nick.is_some() {
                    return;
                }
                let mut reply = Vec::new();
                wire::reply_joined_alone(&mut reply, nick);
                self.push(reply);
                let mut frame = Vec::new();
                wire::event_joined(&mut frame, self.room.next_seq(), nick);
                let member = Member {
                    id: self.id,
                    queue: self.queue.clone(),
                    stop: self.stop.clone(),
                };
                self.room.join(member, &Bytes::from(frame));
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
        if self.queue.try_send(Bytes::from(frame)).is_err() {
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

/// Drains a connection's queue onto its socket, everything queued in one write.
async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
) {
    let mut batch = BytesMut::new();
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let first = tokio::select! {
            biased;
            () = &mut stopped => return,
            first = queue.recv() => first,
        };
        let Some(first) = first else { return };
        let written = match queue.try_recv() {
            // Only one frame ready: write it as it is, no copy.
            Err(_) => {
                tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    written = socket.write_all(&first) => written,
                }
            }
            Ok(second) => {
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(next) => batch.extend_from_slice(&next),
                        Err(_) => break,
                    }
                }
                let written = tokio::select! {
                    biased;
                    () = &mut stopped => return,
                    written = socket.write_all(&batch) => written,
                };
                batch.clear();
                if batch.capacity() > KEEP_BATCH {
                    batch = BytesMut::new();
                }
                written
            }
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "write failed");
            stop.cancel();
            return;
        }
    }
}
