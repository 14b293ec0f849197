//! One client connection, from the first byte to the last.
//!
//! 1. Admission: the connection takes a place in the unauthenticated pool
//!    ([`crate::admission`]), or is told the server is full.
//! 2. Opening: the 4-byte preamble tells our protocol from Erlang distribution (handed to
//!    [`crate::erlang`] with a `--max-clients` permit) and from garbage, which is closed
//!    at once.
//! 3. Handshake: [`protocol::ServerHandshake`] driven over the socket with a buffer of a
//!    few hundred bytes, the whole of it (preamble included) bounded by the handshake
//!    timeout; the key exchange only runs when the address has failures to spare. Once
//!    the cookie is proven the connection takes one of the `--max-clients` permits.
//! 4. Session: this task becomes the *reader* (open records, decode, validate,
//!    rate-limit, forward to the registry, answer pings) and a *writer* task writes the
//!    room's history and the connection's own queue as sealed records
//!    ([`crate::writer`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use protocol::codec::{self, CodecError};
use protocol::limits;
use protocol::secure::{Established, MAX_HANDSHAKE_FRAME_LEN, RefuseReason, ServerStep};
use protocol::unicode::escape_capped;
use protocol::{
    ClientMessage, HandshakeMessage, LeaveReason, NodeName, Opening, Reply, ServerHandshake,
    ServerMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::{Admission, Limits, PoolFull};
use crate::config::ServerConfig;
use crate::history::History;
use crate::inbound::Inbound;
use crate::linger;
use crate::log_limit::LogLimiter;
use crate::peer::{NativePeer, Peer};
use crate::rate_limit::{TokenBucket, Verdict};
use crate::registry::{Command, ConnId, RegistryHandle};
use crate::writer::{self, Encoding, Pipe};

/// Flood-limit tokens a join or a leave costs (at most a quarter of the burst): each is a
/// broadcast to the whole room.
const MEMBERSHIP_COST: f64 = 5.0;

/// Longest peer-supplied string written to a log, in characters.
pub const LOG_CAP: usize = 100;

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
    /// The unauthenticated pool and the failed-handshake limit.
    pub admission: Arc<Admission>,
    /// One permit per authenticated connection (`--max-clients`).
    pub sessions: Arc<Semaphore>,
    /// Bounds the log lines refused connections cause.
    pub refusals: LogLimiter,
    /// The last connection id handed out (native connections and BEAM nicks).
    ids: AtomicU64,
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
        let admission = Admission::new(Limits {
            max_handshakes: config.max_handshakes,
            max_handshakes_per_address: config.max_handshakes_per_address,
            failures: config.auth_failures,
            retry: config.auth_retry,
        });
        Self {
            sessions: Arc::new(Semaphore::new(config.max_clients)),
            admission,
            refusals: LogLimiter::new(10.0, 50),
            config,
            registry,
            history,
            stopping,
            tracker,
            ids: AtomicU64::new(0),
            pong: encode(&ServerMessage::Pong),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Logs a refused connection at WARN, at a bounded rate.
    fn log_refusal(&self, addr: SocketAddr, claimed: Option<&NodeName>, why: &str) {
        if let Some(suppressed) = self.refusals.allow() {
            let claimed = claimed.map_or_else(
                || "(none)".to_string(),
                |name| escape_capped(&name.to_string(), LOG_CAP),
            );
            let why = escape_capped(why, LOG_CAP);
            if suppressed > 0 {
                tracing::warn!(%addr, claimed_node = %claimed, error = %why, suppressed, "handshake refused (and {suppressed} more not logged)");
            } else {
                tracing::warn!(%addr, claimed_node = %claimed, error = %why, "handshake refused");
            }
        }
    }
}

/// How a connection opened.
enum Opened {
    /// Our protocol: a finished handshake (boxed: see [`handle`]).
    Native(Box<Native>),
    /// An Erlang distribution handshake, with its first four bytes.
    Erlang {
        /// The bytes already read.
        first: [u8; 4],
        /// Its `--max-clients` place.
        permit: OwnedSemaphorePermit,
    },
}

/// What a native connection's handshake established.
struct Native {
    /// The client's node, authenticated.
    node: NodeName,
    /// Bytes read past the handshake.
    leftover: BytesMut,
    /// The keys of the secure channel.
    channel: Established,
    /// Its `--max-clients` place, held for the session's life.
    permit: OwnedSemaphorePermit,
}

/// Runs one connection to its end.
///
/// This task lives as long as the connection, so its size is paid by every idle member:
/// what is short-lived or rare is boxed (the opening, a distribution link), and what the
/// handshake established reaches the session in one box it takes apart before its first
/// wait (an `async fn` keeps its arguments beside the locals made from them for its
/// whole life: this and the session are `async move` blocks, which use them in place).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice for the connection's life"
)]
pub fn handle(
    mut stream: TcpStream,
    addr: SocketAddr,
    id: ConnId,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> {
    async move {
        match Box::pin(opening(&mut stream, addr, &shared)).await {
            None => {}
            Some(Opened::Native(native)) => {
                tracing::info!(%addr, node = %native.node, "connected");
                session(stream, addr, id, native, &shared).await;
            }
            Some(Opened::Erlang { first, permit }) => {
                // Boxed too: a distribution link's state is larger than a native session's,
                // and inline it would size every native member's task by it.
                Box::pin(crate::erlang::run(stream, addr, first, &shared)).await;
                drop(permit);
            }
        }
    }
}

/// Everything before the session: the unauthenticated pool, the preamble and the
/// handshake, under the handshake timeout and the server's stop signal.
async fn opening(stream: &mut TcpStream, addr: SocketAddr, shared: &Shared) -> Option<Opened> {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
    }
    let _slot = match shared.admission.enter(addr.ip()) {
        Ok(slot) => slot,
        Err(full) => {
            let why = match full {
                PoolFull::All => "too many connections in their handshake",
                PoolFull::Address => "too many connections in their handshake from this address",
            };
            shared.log_refusal(addr, None, why);
            refuse_now(
                stream,
                RefuseReason::ServerFull,
                shared.config.handshake_timeout,
            )
            .await;
            return None;
        }
    };
    let limit = shared.config.handshake_timeout;
    tokio::select! {
        () = shared.stopping.cancelled() => None,
        opened = tokio::time::timeout(limit, open(stream, addr, shared)) => {
            opened.unwrap_or_else(|_| {
                tracing::info!(%addr, "handshake timed out; closing");
                None
            })
        }
    }
}

/// Most bytes read and thrown away from a refused connection while it lingers.
const REFUSAL_DRAIN: usize = 4096;

/// Most refused connections lingering at once; past this, a refusal only reads what has
/// already arrived before it closes.
const MAX_LINGERING: usize = 16 * 1024;

/// Refused connections currently lingering.
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Writes a refusal without reading anything first, then closes.
///
/// The client has usually sent its preamble and hello already, or sends them a little
/// later; closing a socket with unread bytes makes the kernel send a reset, which can
/// destroy the refusal before the client reads it. So the server sends FIN, then reads
/// and discards what the client sends (a little, for at most `linger`) until the client
/// closes too. At most [`MAX_LINGERING`] refused connections linger at once.
async fn refuse_now(stream: &mut TcpStream, reason: RefuseReason, linger: Duration) {
    if let Ok(frame) = codec::encode_frame(&HandshakeMessage::Refused { reason }) {
        let _ = stream.write_all(&frame).await;
    }
    let _ = stream.shutdown().await;
    if LINGERING.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::Relaxed);
        let mut scratch = [0u8; 512];
        while matches!(stream.try_read(&mut scratch), Ok(n) if n > 0) {}
        return;
    }
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
    let _ = tokio::time::timeout(linger, drain).await;
    LINGERING.fetch_sub(1, Ordering::Relaxed);
}

/// Bytes the handshake reads at once; a whole handshake frame always fits.
const HANDSHAKE_BUFFER: usize = codec::HEADER_LEN + MAX_HANDSHAKE_FRAME_LEN;

/// Reads the next handshake frame's payload; `Ok(None)` when the peer closed.
async fn next_frame(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    framing: &mut tokio_util::codec::LengthDelimitedCodec,
) -> Result<Option<BytesMut>, CodecError> {
    loop {
        if let Some(payload) = framing.decode(buffer).map_err(codec::framing_error)? {
            return Ok(Some(payload));
        }
        // Room for one whole frame, no more: a stalled handshake holds at most this.
        buffer.reserve(HANDSHAKE_BUFFER.saturating_sub(buffer.len()).max(1));
        if stream.read_buf(buffer).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads the preamble and runs the handshake. Returns the client's node name, its
/// channel and any bytes read past the handshake, or `None` when the connection must
/// close.
async fn open(stream: &mut TcpStream, addr: SocketAddr, shared: &Shared) -> Option<Opened> {
    let config = &shared.config;
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
            let reason = RefuseReason::UnsupportedVersion { supported };
            refuse_now(stream, reason, config.handshake_timeout).await;
            return None;
        }
        Opening::ErlangDistribution => {
            // The distribution handshake has its own cookie challenge and timeout
            // (crate::erlang); the node takes a place like any client.
            let Ok(permit) = Arc::clone(&shared.sessions).try_acquire_owned() else {
                shared.log_refusal(addr, None, "server full");
                return None;
            };
            return Some(Opened::Erlang { first, permit });
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
    let mut buffer = BytesMut::with_capacity(HANDSHAKE_BUFFER);
    let mut framing = codec::handshake_framing();
    let mut exchange = None;
    loop {
        let payload = match next_frame(stream, &mut buffer, &mut framing).await {
            Ok(Some(payload)) => payload,
            Ok(None) | Err(CodecError::Io(_)) if machine.exchanged_keys() => {
                let why = "the client hung up after the key exchange (a different cookie?)";
                shared.log_refusal(addr, machine.claimed_name(), why);
                return None;
            }
            Ok(None) => {
                tracing::debug!(%addr, "closed during the handshake");
                return None;
            }
            Err(e) => {
                tracing::info!(%addr, error = %e, "bad handshake frame; closing");
                return None;
            }
        };
        if exchange.is_none() {
            // The first frame is the hello, which starts a key exchange: one guess of the
            // cookie, so it needs room in the address's failure budget.
            match shared.admission.exchange(addr.ip()).await {
                Some(slot) => exchange = Some(slot),
                None => {
                    shared.log_refusal(addr, None, "too many failed handshakes from this address");
                    refuse_now(stream, RefuseReason::TryLater, config.handshake_timeout).await;
                    return None;
                }
            }
        }
        match machine.on_frame(&payload) {
            ServerStep::Send(reply) => {
                match exchange.as_mut() {
                    // The challenge: whoever receives it can test one guess offline.
                    Some(exchange) if machine.exchanged_keys() => exchange.challenge_sent(),
                    // Refused before any key exchange: no guess was made.
                    Some(_) => {
                        if let Some(exchange) = exchange.take() {
                            exchange.free();
                        }
                    }
                    None => {}
                }
                stream.write_all(&reply).await.ok()?;
            }
            ServerStep::Accept {
                reply,
                peer,
                channel,
            } => {
                if let Some(exchange) = exchange.take() {
                    exchange.free();
                }
                let Ok(permit) = Arc::clone(&shared.sessions).try_acquire_owned() else {
                    shared.log_refusal(addr, Some(&peer), "server full");
                    refuse_now(stream, RefuseReason::ServerFull, config.handshake_timeout).await;
                    return None;
                };
                stream.write_all(&reply).await.ok()?;
                return Some(Opened::Native(Box::new(Native {
                    node: peer,
                    leftover: buffer,
                    channel: *channel,
                    permit,
                })));
            }
            ServerStep::Refuse { reply, error } => {
                if !machine.exchanged_keys()
                    && let Some(exchange) = exchange.take()
                {
                    exchange.free();
                }
                shared.log_refusal(addr, machine.claimed_name(), &error.to_string());
                if !reply.is_empty() {
                    let _ = stream.write_all(&reply).await;
                }
                let _ = stream.shutdown().await;
                return None;
            }
        }
    }
}

/// The established session: spawns the writer, attaches to the registry, and reads until
/// the connection ends; then detaches with the reason.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice for the connection's life"
)]
fn session(
    stream: TcpStream,
    addr: SocketAddr,
    id: ConnId,
    native: Box<Native>,
    shared: &Shared,
) -> impl Future<Output = ()> + '_ {
    async move {
        let Native {
            node,
            leftover,
            channel,
            permit: _permit,
        } = *native;
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
        shared.tracker.spawn(writer::run(
            write_half,
            pipe,
            history,
            group,
            stop.clone(),
            Encoding::Sealed(channel.sealer),
        ));
        // Before the first wait, so that what the handshake left is not kept beside it.
        let mut frames = Inbound::new(read_half, leftover, channel.opener);
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
                        // Boxed, as the lingering close below: the largest waits, off
                        // the task an idle member keeps.
                        if let Some(reason) = Box::pin(reader.on_message(message)).await {
                            break reason;
                        }
                    }
                },
            }
        };
        // Logged by the registry, once, with the member's nick if any.
        tracing::debug!(%addr, node = %peer.node(), reason = reason.describe(), "reader done");
        registry.send(Command::Detach { id, reason }).await;
        Box::pin(linger::drain_then_stop(
            frames.into_socket(),
            config.handshake_timeout,
            &stop,
        ))
        .await;
    }
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
        // Every message counts against the flood limit, pings and user lists included;
        // joins and leaves are told to the whole room, so they cost more. Only the
        // answers to the server's own pings are free.
        let cost = match message {
            ClientMessage::Pong => return None,
            // At most a quarter of the burst, so a join still leaves room to speak.
            ClientMessage::Join { .. } | ClientMessage::Resume { .. } | ClientMessage::Leave => {
                (f64::from(self.shared.config.burst) / 4.0).clamp(1.0, MEMBERSHIP_COST)
            }
            _ => 1.0,
        };
        match self.bucket.check_cost(std::time::Instant::now(), cost) {
            Verdict::Allow => {}
            // Leaving is never refused for flooding (it ends the flood); it still costs,
            // so a join right after it finds the bucket as the leave left it.
            _ if matches!(message, ClientMessage::Leave) => {}
            Verdict::Refuse { first } => {
                if first {
                    let _ = self.peer.reply(Reply::SlowDown);
                }
                return None;
            }
            Verdict::Disconnect => {
                tracing::debug!(node = %self.peer.node(), "excess flood; dropping");
                self.peer.close(LeaveReason::Flooding);
                return Some(LeaveReason::Flooding);
            }
        }
        let command = match message {
            ClientMessage::Ping => {
                let _ = self.peer.push(self.shared.pong.clone());
                return None;
            }
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
            ClientMessage::Leave => Command::Leave { id },
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
            ClientMessage::Pong => return None,
        };
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
