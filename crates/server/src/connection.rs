//! One client connection, from the first byte to the last.
//!
//! 1. Opening: the 4-byte preamble tells our protocol from Erlang distribution (not served
//!    yet) and from garbage, which is closed at once.
//! 2. Handshake: [`protocol::ServerHandshake`] driven over the socket, the whole of it
//!    (preamble included) bounded by the handshake timeout.
//! 3. Session: this task becomes the *reader* (decode, validate, rate-limit, forward to
//!    the registry, answer pings, notice silence) and a *writer* task drains the
//!    connection's queue ([`crate::writer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use protocol::codec::{self, CodecError, MessageCodec};
use protocol::handshake::{RefuseReason, ServerStep};
use protocol::limits;
use protocol::{
    ClientMessage, HandshakeMessage, LeaveReason, NodeName, Opening, Reply, ServerHandshake,
    ServerMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::history::History;
use crate::inbound::Inbound;
use crate::peer::{NativePeer, Peer};
use crate::rate_limit::{TokenBucket, Verdict};
use crate::registry::{Command, ConnId, RegistryHandle};
use crate::writer::{self, Pipe};

/// What every connection task shares.
pub struct Shared {
    /// The server's settings.
    pub config: ServerConfig,
    /// The room.
    pub registry: RegistryHandle,
    /// The room's history, which every connection's writer reads.
    pub history: Arc<History>,
    /// Fires when the server stops accepting; connections still in their handshake quit.
    pub stopping: CancellationToken,
    /// Tracks writer tasks so shutdown can wait for them to flush.
    pub tracker: TaskTracker,
    pong: Bytes,
}

impl Shared {
    /// Bundles what connections need; pre-encodes the frames every connection sends.
    pub fn new(
        config: ServerConfig,
        registry: RegistryHandle,
        history: Arc<History>,
        stopping: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        let encode = |m: &ServerMessage| codec::encode_frame(m).expect("tiny messages encode");
        Self {
            config,
            registry,
            history,
            stopping,
            tracker,
            pong: encode(&ServerMessage::Pong),
        }
    }
}

/// Runs one connection to its end. `permit` is `None` when the server is full: the client
/// is told so and closed.
pub async fn handle(
    mut stream: TcpStream,
    addr: SocketAddr,
    id: ConnId,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) {
    // Boxed: the opening's state (handshake framing, timers) is large and short-lived;
    // inline, it would size this task for the connection's whole life.
    let Some((node, leftover)) = Box::pin(opening(&mut stream, addr, &shared, &permit)).await
    else {
        return;
    };
    tracing::info!(%addr, %node, "connected");
    session(stream, addr, id, node, leftover, &shared).await;
    drop(permit);
}

/// Everything before the session: the connection limit, the preamble and the handshake,
/// under the handshake timeout and the server's stop signal.
async fn opening(
    stream: &mut TcpStream,
    addr: SocketAddr,
    shared: &Shared,
    permit: &Option<OwnedSemaphorePermit>,
) -> Option<(NodeName, BytesMut)> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
    }
    if permit.is_none() {
        tracing::warn!(%addr, "server full; refusing connection");
        refuse_now(stream, RefuseReason::ServerFull).await;
        return None;
    }
    let limit = shared.config.handshake_timeout;
    tokio::select! {
        () = shared.stopping.cancelled() => None,
        opened = tokio::time::timeout(limit, open(stream, addr, &shared.config)) => {
            opened.unwrap_or_else(|_| {
                tracing::info!(%addr, "handshake timed out; closing");
                None
            })
        }
    }
}

/// How long a refused connection is kept open so that the client can read why.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most bytes read and thrown away from a refused connection while it lingers.
const REFUSAL_DRAIN: usize = 4096;

/// Writes a refusal without reading anything first, then closes.
///
/// The client has usually sent its preamble and hello already; closing a socket with
/// unread bytes makes the kernel send a reset, which can destroy the refusal before the
/// client reads it. So the server sends FIN, then reads and discards what the client
/// sent (a little, for a short while) until the client closes too.
async fn refuse_now(stream: &mut TcpStream, reason: RefuseReason) {
    if let Ok(frame) = codec::encode_frame(&HandshakeMessage::Refused { reason }) {
        let _ = stream.write_all(&frame).await;
    }
    let _ = stream.shutdown().await;
    let drain = async {
        let mut scratch = [0u8; 512];
        let mut left = REFUSAL_DRAIN;
        while left > 0 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}

/// Reads the preamble and runs the handshake. Returns the client's node name and any bytes
/// read past the handshake, or `None` when the connection must close.
async fn open(
    stream: &mut TcpStream,
    addr: SocketAddr,
    config: &ServerConfig,
) -> Option<(NodeName, BytesMut)> {
    let mut first = [0u8; 4];
    if let Err(e) = stream.read_exact(&mut first).await {
        tracing::debug!(%addr, error = %e, "closed before the preamble");
        return None;
    }
    match protocol::classify_opening(first) {
        Opening::Native => {}
        Opening::NativeUnsupportedVersion(v) => {
            tracing::info!(%addr, version = v, "client speaks another protocol version");
            let supported = protocol::PROTOCOL_VERSION;
            refuse_now(stream, RefuseReason::UnsupportedVersion { supported }).await;
            return None;
        }
        Opening::ErlangDistribution => {
            tracing::info!(%addr, "Erlang distribution handshake: not served yet; closing");
            return None;
        }
        Opening::Unknown => {
            tracing::info!(%addr, "not our protocol (bad preamble); closing");
            return None;
        }
    }
    let mut machine = ServerHandshake::new(
        config.name.clone(),
        config.cookie.clone(),
        u64::try_from(config.tick.as_millis()).unwrap_or(u64::MAX),
    );
    let mut framed = Framed::new(&mut *stream, MessageCodec::<HandshakeMessage>::new());
    loop {
        let message = match framed.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::info!(%addr, error = %e, "bad handshake message; closing");
                return None;
            }
            None => {
                tracing::debug!(%addr, "closed during the handshake");
                return None;
            }
        };
        match machine.on_message(message) {
            ServerStep::Send(reply) => {
                framed.send(reply).await.ok()?;
            }
            ServerStep::Accept { reply, peer } => {
                framed.send(reply).await.ok()?;
                let leftover = framed.into_parts().read_buf;
                return Some((peer, leftover));
            }
            ServerStep::Refuse { reply, error } => {
                let claimed = machine
                    .claimed_name()
                    .map_or_else(|| "(none)".to_string(), ToString::to_string);
                tracing::warn!(%addr, claimed_node = %claimed, %error, "handshake refused");
                let _ = framed.send(reply).await;
                let _ = framed.get_mut().shutdown().await;
                return None;
            }
        }
    }
}

/// The established session: spawns the writer, attaches to the registry, and reads until
/// the connection ends; then detaches with the reason.
async fn session(
    stream: TcpStream,
    addr: SocketAddr,
    id: ConnId,
    node: NodeName,
    leftover: BytesMut,
    shared: &Shared,
) {
    let config = &shared.config;
    let (read_half, write_half) = stream.into_split();
    let pipe = Arc::new(Pipe::new(config.send_queue_frames, config.send_queue_bytes));
    let stop = CancellationToken::new();
    let history = Arc::clone(&shared.history);
    let peer = Arc::new(NativePeer::new(
        node,
        addr,
        pipe.clone(),
        history.clone(),
        stop.clone(),
    ));
    let group = history.group_of(id);
    shared
        .tracker
        .spawn(writer::run(write_half, pipe, history, group, stop.clone()));
    let registry = &shared.registry;
    if !registry
        .send(Command::Attach {
            id,
            peer: peer.clone(),
        })
        .await
    {
        return;
    }
    let mut frames = Inbound::new(read_half, leftover);
    let mut reader = Reader {
        id,
        peer: &peer,
        shared,
        bucket: TokenBucket::new(config.rate_per_sec, config.burst),
    };
    // Liveness is the registry's: it pings every connection each tick and drops those
    // not heard from (see `Peer::tick`); the reader only stamps each frame.
    let reason = loop {
        tokio::select! {
            () = stop.cancelled() => break peer.ended_for().unwrap_or(LeaveReason::ConnectionLost),
            next = frames.next() => match next {
                None => {
                    peer.abort();
                    break LeaveReason::ConnectionLost;
                }
                Some(Err(e)) => {
                    if let Some(reason) = read_failed(&e, addr, &peer) {
                        break reason;
                    }
                    break LeaveReason::ConnectionLost;
                }
                Some(Ok(message)) => {
                    peer.heard();
                    if let Some(reason) = reader.on_message(message).await {
                        break reason;
                    }
                }
            },
        }
    };
    tracing::info!(%addr, node = %peer.node(), reason = reason.describe(), "disconnected");
    registry.send(Command::Detach { id, reason }).await;
}

/// Decides what a read error means. Protocol violations are told to the client and end
/// the session with [`LeaveReason::ProtocolError`]; socket errors end it silently.
fn read_failed(error: &CodecError, addr: SocketAddr, peer: &NativePeer) -> Option<LeaveReason> {
    match error {
        CodecError::Io(e) => {
            tracing::debug!(%addr, error = %e, "read failed");
            peer.abort();
            None
        }
        other => {
            tracing::info!(%addr, error = %other, "protocol error; dropping");
            peer.close(LeaveReason::ProtocolError);
            Some(LeaveReason::ProtocolError)
        }
    }
}

/// The reader's per-connection state.
struct Reader<'a> {
    id: ConnId,
    peer: &'a NativePeer,
    shared: &'a Shared,
    bucket: TokenBucket,
}

impl Reader<'_> {
    /// Handles one message; returns a reason when the session must end.
    async fn on_message(&mut self, message: ClientMessage) -> Option<LeaveReason> {
        let id = self.id;
        match message {
            ClientMessage::Pong => return None,
            ClientMessage::Ping => {
                let _ = self.peer.push(self.shared.pong.clone());
                return None;
            }
            // Leaving is never refused for flooding: it ends the flood.
            ClientMessage::Leave => {
                return self.forward(Command::Leave { id }).await;
            }
            _ => {}
        }
        match self.bucket.check(std::time::Instant::now()) {
            Verdict::Allow => {}
            Verdict::Refuse { first } => {
                if first {
                    let _ = self.peer.reply(Reply::SlowDown);
                }
                return None;
            }
            Verdict::Disconnect => {
                tracing::info!(node = %self.peer.node(), "excess flood; dropping");
                self.peer.close(LeaveReason::Flooding);
                return Some(LeaveReason::Flooding);
            }
        }
        let command = match message {
            ClientMessage::Join { nick, backlog } => Command::Join { id, nick, backlog },
            ClientMessage::Resume {
                ticket,
                epoch,
                last_seq,
            } => Command::Resume {
                id,
                ticket,
                epoch,
                last_seq,
            },
            ClientMessage::ListUsers => Command::ListUsers { id },
            ClientMessage::Say { id: msg_id, text } => {
                if !self.text_allowed(&text) {
                    return None;
                }
                Command::Say { id, msg_id, text }
            }
            ClientMessage::Private {
                id: msg_id,
                to,
                text,
            } => {
                if !self.text_allowed(&text) {
                    return None;
                }
                Command::Private {
                    id,
                    msg_id,
                    to,
                    text,
                }
            }
            ClientMessage::Leave | ClientMessage::Ping | ClientMessage::Pong => return None,
        };
        self.forward(command).await
    }

    /// Hands a command to the registry; a reason to end the session if it has stopped.
    async fn forward(&self, command: Command) -> Option<LeaveReason> {
        if self.shared.registry.send(command).await {
            None
        } else {
            Some(LeaveReason::ServerShutdown)
        }
    }

    /// True when the text may be sent; otherwise tells the client why not.
    fn text_allowed(&self, text: &str) -> bool {
        match limits::validate_text(text, self.shared.config.max_text_len) {
            Ok(()) => true,
            Err(e) => {
                let _ = self.peer.reply(Reply::InvalidText {
                    reason: e.to_string(),
                });
                false
            }
        }
    }
}
