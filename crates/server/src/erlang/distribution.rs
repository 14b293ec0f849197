//! One BEAM node's distribution connection, from its `send_name` to its last byte.
//!
//! 1. Handshake: [`protocol::erlang::handshake::Acceptor`] driven over the socket, under
//!    the handshake timeout; a wrong cookie logs `handshake refused` and closes.
//! 2. Session: a writer task drains the node's queue ([`crate::writer`], as for native
//!    connections); this task reads frames (at most the frame limit each), hands
//!    messages to the [`MessageServer`], and keeps Erlang's liveness: a tick after a
//!    tick period without anything sent, and the node dropped after `silent_ticks`
//!    periods without anything heard.
//! 3. End: every nick of the node leaves the room at once, with the reason.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use protocol::erlang::dist::{self, DistError};
use protocol::erlang::handshake::{self, AcceptStep, Acceptor};
use protocol::erlang::term::{Atom, Pid};
use protocol::{LeaveReason, NodeName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::connection::Shared;
use crate::erlang::link::Link;
use crate::erlang::message_server::{MessageServer, Stop};
use crate::linger;
use crate::writer::{self, Encoding, Pipe};

/// Bytes reserved for each read.
const READ_CHUNK: usize = 4096;

/// The process number of our `message_server` pid (any will do: it names the sender).
const SERVER_PID_ID: u32 = 1;

/// Runs a distribution connection whose first four bytes (`first`) are already read.
pub async fn run(mut stream: TcpStream, addr: SocketAddr, first: [u8; 4], shared: &Shared) {
    let config = &shared.config;
    if !config.erlang {
        tracing::info!(%addr, "Erlang distribution refused (--no-erlang); closing");
        return;
    }
    let opened = tokio::select! {
        () = shared.stopping.cancelled() => None,
        opened = tokio::time::timeout(
            config.handshake_timeout,
            accept(&mut stream, addr, first, config),
        ) => opened.unwrap_or_else(|_| {
            tracing::info!(%addr, "Erlang handshake timed out; closing");
            None
        }),
    };
    let Some((node, leftover)) = opened else {
        return;
    };
    tracing::info!(%addr, %node, "Erlang node connected");
    session(stream, addr, node, leftover, shared).await;
}

/// Runs the handshake; returns the peer's name and any bytes read past it.
async fn accept(
    stream: &mut TcpStream,
    addr: SocketAddr,
    first: [u8; 4],
    config: &ServerConfig,
) -> Option<(NodeName, BytesMut)> {
    let mut buf = BytesMut::from(&first[..]);
    let mut machine = Acceptor::new(&config.name, config.cookie.clone(), config.creation);
    loop {
        loop {
            let body = match handshake::split_message(&mut buf) {
                Ok(Some(body)) => body,
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(%addr, error = %e, "bad Erlang handshake; closing");
                    return None;
                }
            };
            match machine.on_message(&body) {
                Ok(AcceptStep::Send(bytes)) => stream.write_all(&bytes).await.ok()?,
                Ok(AcceptStep::Done { ack, peer }) => {
                    stream.write_all(&ack).await.ok()?;
                    let node = NodeName::parse_long(&peer.name).ok()?;
                    return Some((node, buf));
                }
                Err(error) => {
                    let claimed = machine.claimed_name().unwrap_or("(none)").to_string();
                    tracing::warn!(%addr, claimed_node = %claimed, %error, "handshake refused");
                    let _ = stream.shutdown().await;
                    return None;
                }
            }
        }
        buf.reserve(256);
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                tracing::debug!(%addr, "closed during the Erlang handshake");
                return None;
            }
            Ok(_) => {}
        }
    }
}

/// Our `message_server`'s pid on this node.
fn server_pid(config: &ServerConfig) -> Pid {
    Pid {
        node: Atom::lossy(&config.name.to_string()),
        id: SERVER_PID_ID,
        serial: 0,
        creation: config.creation,
    }
}

async fn session(
    stream: TcpStream,
    addr: SocketAddr,
    node: NodeName,
    leftover: BytesMut,
    shared: &Shared,
) {
    let config = &shared.config;
    let (read_half, write_half) = stream.into_split();
    let pipe = Arc::new(Pipe::new(config.send_queue_frames, config.send_queue_bytes));
    let stop = CancellationToken::new();
    let link = Arc::new(Link::new(
        node,
        addr,
        pipe.clone(),
        stop.clone(),
        server_pid(config),
    ));
    // The writer never subscribes to the history: a BEAM node is fed event by event
    // (`Peer::deliver`), so it only writes the link's own queue, in order.
    let history = Arc::clone(&shared.history);
    shared.tracker.spawn(writer::run(
        write_half,
        pipe,
        history,
        0,
        stop.clone(),
        Encoding::Plain,
    ));
    let mut server = MessageServer::new(link.clone(), shared);
    let mut frames = Frames {
        socket: read_half,
        buffer: leftover,
    };
    let silence_limit = config.tick * config.silent_ticks;
    let mut ticks = tokio::time::interval_at(Instant::now() + config.tick, config.tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut told_stopping = false;
    let reason = loop {
        tokio::select! {
            () = stop.cancelled() => {
                break link.closing_reason().unwrap_or(LeaveReason::ConnectionLost);
            }
            () = shared.stopping.cancelled(), if !told_stopping => {
                told_stopping = true;
                link.close(LeaveReason::ServerShutdown);
            }
            _ = ticks.tick() => {
                if last_heard.elapsed() >= silence_limit {
                    tracing::info!(%addr, node = %link.node(), "silent for too long; dropping");
                    link.close(LeaveReason::Timeout);
                    break LeaveReason::Timeout;
                }
                if !link.wrote_since_last_look() {
                    // Erlang's tick: an empty frame after a period of outbound silence.
                    let _ = link.push(Bytes::from_static(&dist::TICK));
                }
            }
            next = frames.next() => match next {
                None => {
                    link.abort();
                    break link.closing_reason().unwrap_or(LeaveReason::ConnectionLost);
                }
                Some(Err(ReadError::Io(e))) => {
                    tracing::debug!(%addr, error = %e, "read failed");
                    link.abort();
                    break LeaveReason::ConnectionLost;
                }
                Some(Err(ReadError::Dist(e))) => {
                    tracing::info!(%addr, node = %link.node(), error = %e, "protocol error; dropping");
                    link.close(LeaveReason::ProtocolError);
                    break LeaveReason::ProtocolError;
                }
                Some(Ok(payload)) => {
                    last_heard = Instant::now();
                    if payload.is_empty() {
                        continue;
                    }
                    let message = match dist::parse_message(&payload) {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::info!(%addr, node = %link.node(), error = %e, "protocol error; dropping");
                            link.close(LeaveReason::ProtocolError);
                            break LeaveReason::ProtocolError;
                        }
                    };
                    if let Err(Stop(reason)) = server.on_message(message).await {
                        break reason;
                    }
                }
            },
        }
    };
    tracing::info!(%addr, node = %link.node(), reason = reason.describe(), "Erlang node disconnected");
    server.detach_all(reason).await;
    linger::drain_then_stop(frames.socket, config.handshake_timeout, &stop).await;
}

/// Why reading a frame failed.
enum ReadError {
    Io(std::io::Error),
    Dist(DistError),
}

/// Distribution frames from one socket, read into a buffer that exists only while bytes
/// are waiting (as [`crate::inbound::Inbound`] does for native frames).
struct Frames {
    socket: OwnedReadHalf,
    buffer: BytesMut,
}

impl Frames {
    /// The next frame's payload (empty for a tick); `None` at the end of the stream.
    /// Cancel-safe: all state lives in `self`.
    async fn next(&mut self) -> Option<Result<BytesMut, ReadError>> {
        loop {
            match dist::split_frame(&mut self.buffer) {
                Ok(Some(payload)) => return Some(Ok(payload)),
                Ok(None) => {}
                Err(e) => return Some(Err(ReadError::Dist(e))),
            }
            if self.buffer.is_empty() && self.buffer.capacity() > 0 {
                self.buffer = BytesMut::new();
            }
            if let Err(e) = self.socket.readable().await {
                return Some(Err(ReadError::Io(e)));
            }
            self.buffer.reserve(READ_CHUNK);
            match self.socket.try_read_buf(&mut self.buffer) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(ReadError::Io(e))),
            }
        }
    }
}
