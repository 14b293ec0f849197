//! One bench client's connection: connect, (for `chat-server`) preamble and cookie
//! handshake, join, then a frame reader and a shared writer.
//!
//! The bench speaks the real protocol through the `protocol` crate: the preamble,
//! [`protocol::ClientHandshake`], then frames inside the secure channel (the reader opens
//! records, the writer seals each write as records). The baseline relay has no preamble,
//! no handshake and no channel, so a relay client starts with its `Join` frame in clear.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::marker::PhantomData;

use bytes::{Buf, BytesMut};
use protocol::codec::{self, CodecError, HEADER_LEN, MAX_FRAME_LEN};
use protocol::secure::{ClientStep, MAX_HANDSHAKE_FRAME_LEN, Opener, Sealer};
use protocol::{
    ClientHandshake, ClientMessage, Cookie, HandshakeError, NodeName, PREAMBLE, Reply,
    ServerMessage,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

/// Time allowed for connect, handshake and join together. Generous, because joining
/// thousands of clients makes the server busy with join broadcasts.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where bench clients connect, and how.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A `chat-server`: preamble, then the cookie handshake, then the session.
    Server {
        /// The listening address.
        addr: SocketAddr,
        /// The server's node name (the handshake's `to`).
        name: NodeName,
        /// The shared secret.
        cookie: Cookie,
    },
    /// The baseline relay: session frames from the first byte.
    Relay {
        /// The listening address.
        addr: SocketAddr,
    },
}

impl Endpoint {
    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Server { addr, .. } | Self::Relay { addr } => *addr,
        }
    }
}

/// Why a client could not join.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or a socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// A frame could not be read or written.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The cookie handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server closed the connection before the join was answered.
    #[error("connection closed before the join was answered")]
    Closed,
    /// The join was answered with something other than `Joined`.
    #[error("join refused: {0:?}")]
    Refused(Reply),
    /// The server asked this client to go away.
    #[error("server closed the session: {0:?}")]
    Closing(protocol::LeaveReason),
    /// Connect, handshake and join took longer than [`JOIN_TIMEOUT`].
    #[error("connect + handshake + join took longer than {JOIN_TIMEOUT:?}")]
    Timeout,
    /// A node name for this client could not be built.
    #[error("bad client node name: {0}")]
    Name(#[from] protocol::NodeNameError),
}

/// Reads frames of type `In` from a socket's read half.
///
/// The framing is the protocol's (a 4-byte big-endian length, at most
/// [`MAX_FRAME_LEN`](protocol::codec::MAX_FRAME_LEN), refused from the prefix alone) and
/// each payload is decoded by [`protocol::codec::decode`]; frames are decoded in place in
/// the read buffer rather than split off as `MessageCodec` does, which saves the
/// generator a reference-counted buffer per message. A payload that fails to decode is
/// consumed all the same, so the stream stays aligned.
///
/// The read buffer starts empty, grows as frames need, and is released when it is empty
/// and has grown large (a joiner's member list can be big), so thousands of idle clients
/// stay cheap. [`FrameReader::next`] is cancel-safe: partial frames stay buffered.
pub struct FrameReader<In> {
    half: OwnedReadHalf,
    buf: BytesMut,
    /// With the secure channel: opens records from `buf` into `plain`, where frames are
    /// decoded.
    opener: Option<Opener>,
    plain: BytesMut,
    last_read: Instant,
    _in: PhantomData<fn() -> In>,
}

/// Read buffer capacity kept between reads.
const READ_CHUNK: usize = 16 * 1024;

impl<In: DeserializeOwned> FrameReader<In> {
    fn new(half: OwnedReadHalf, buf: BytesMut) -> Self {
        Self {
            half,
            buf,
            opener: None,
            plain: BytesMut::new(),
            last_read: Instant::now(),
            _in: PhantomData,
        }
    }

    /// Takes the first whole frame off the buffer and decodes it; `Ok(None)` when no
    /// whole frame is buffered yet.
    fn decode_buffered(&mut self) -> Result<Option<In>, CodecError> {
        loop {
            let frames = if self.opener.is_some() {
                &mut self.plain
            } else {
                &mut self.buf
            };
            if let Some(message) = Self::decode_frame(frames)? {
                return Ok(Some(message));
            }
            let Some(opener) = self.opener.as_mut() else {
                return Ok(None);
            };
            if !opener.open_into(&mut self.buf, &mut self.plain)? {
                return Ok(None);
            }
        }
    }

    /// Takes the first whole frame off `frames` and decodes it.
    fn decode_frame(frames: &mut BytesMut) -> Result<Option<In>, CodecError> {
        let Some(header) = frames.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len_bytes = [0u8; HEADER_LEN];
        len_bytes.copy_from_slice(header);
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_FRAME_LEN {
            return Err(CodecError::FrameTooLarge);
        }
        let Some(payload) = frames.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let message = codec::decode(payload);
        frames.advance(HEADER_LEN + len);
        message.map(Some)
    }

    /// The next handshake frame's payload, whole (at most the handshake's limit).
    async fn next_handshake_payload(&mut self) -> Result<Option<Vec<u8>>, CodecError> {
        loop {
            if let Some(header) = self.buf.get(..HEADER_LEN) {
                let mut len_bytes = [0u8; HEADER_LEN];
                len_bytes.copy_from_slice(header);
                let len = u32::from_be_bytes(len_bytes) as usize;
                if len > MAX_HANDSHAKE_FRAME_LEN {
                    return Err(CodecError::FrameTooLarge);
                }
                if let Some(payload) = self.buf.get(HEADER_LEN..HEADER_LEN + len) {
                    let payload = payload.to_vec();
                    self.buf.advance(HEADER_LEN + len);
                    return Ok(Some(payload));
                }
            }
            self.buf.reserve(READ_CHUNK);
            if self.half.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// When the last read returned: the receive time of every frame it brought. Reading
    /// the clock once per read, not once per frame, is cheaper, and frames decoded later
    /// from the same read were not received later.
    pub fn last_read(&self) -> Instant {
        self.last_read
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<In>, CodecError> {
        loop {
            if let Some(message) = self.decode_buffered()? {
                return Ok(Some(message));
            }
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                self.buf = BytesMut::new();
            }
            if self.plain.is_empty() && self.plain.capacity() > 4 * READ_CHUNK {
                self.plain = BytesMut::new();
            }
            self.buf.reserve(READ_CHUNK);
            let read = self.half.read_buf(&mut self.buf).await?;
            self.last_read = Instant::now();
            if read == 0 {
                return if self.buf.is_empty() && self.plain.is_empty() {
                    Ok(None)
                } else {
                    Err(CodecError::Io(io::ErrorKind::UnexpectedEof.into()))
                };
            }
        }
    }

    /// The same stream, now decoding messages of another type inside the channel that
    /// `opener` opens; buffered bytes are kept.
    fn into_channel<Other>(self, opener: Opener) -> FrameReader<Other> {
        FrameReader {
            half: self.half,
            buf: self.buf,
            opener: Some(opener),
            plain: self.plain,
            last_read: self.last_read,
            _in: PhantomData,
        }
    }
}

/// A client's writing side: the socket, and for `chat-server` the channel's sealer.
pub struct ChannelWriter {
    half: OwnedWriteHalf,
    sealer: Option<Sealer>,
    /// Sealed records of the write in progress (empty between writes).
    sealed: BytesMut,
}

impl ChannelWriter {
    fn new(half: OwnedWriteHalf, sealer: Option<Sealer>) -> Self {
        Self {
            half,
            sealer,
            sealed: BytesMut::new(),
        }
    }

    /// Writes `data` (whole frames, any number): sealed as records when there is a
    /// channel, as it is otherwise. One buffer is reused, so no write allocates once the
    /// buffer has grown to the largest batch.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(sealer) = self.sealer.as_mut() else {
            return self.half.write_all(data).await;
        };
        self.sealed.clear();
        sealer
            .seal_stream([data], &mut self.sealed)
            .map_err(io::Error::other)?;
        self.half.write_all(&self.sealed).await
    }
}

/// A client's writing side, shared between its sender task and its reader (which answers
/// the server's pings).
pub type SharedWriter = Arc<Mutex<ChannelWriter>>;

/// A client that has joined the room.
pub struct JoinedClient {
    /// Server messages, starting right after the `Joined` reply.
    pub reader: FrameReader<ServerMessage>,
    /// The writing side.
    pub writer: SharedWriter,
    /// How many members the `Joined` reply listed (this client included); `None` when
    /// the reply arrived but could not be decoded (see [`connect_and_join`]).
    pub members: Option<usize>,
}

/// The nick of bench client `index`.
pub fn nick(index: usize) -> String {
    format!("b{index}")
}

/// Connects client `index` to `endpoint`, authenticates if needed and joins the room,
/// all within [`JOIN_TIMEOUT`].
///
/// A `Joined` reply that arrives whole but does not decode still counts as joined, with
/// `members: None`, so that a server whose member list outgrows the decode limit can be
/// measured (and the problem reported) rather than stopping the run.
pub async fn connect_and_join(
    endpoint: &Endpoint,
    index: usize,
) -> Result<JoinedClient, ClientError> {
    tokio::time::timeout(JOIN_TIMEOUT, connect_and_join_inner(endpoint, index))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn connect_and_join_inner(
    endpoint: &Endpoint,
    index: usize,
) -> Result<JoinedClient, ClientError> {
    let stream = TcpStream::connect(endpoint.addr()).await?;
    stream.set_nodelay(true)?;
    let (read_half, write_half) = stream.into_split();
    let mut write_half = ChannelWriter::new(write_half, None);
    let mut reader = match endpoint {
        Endpoint::Server { name, cookie, .. } => {
            let reader = FrameReader::<ServerMessage>::new(read_half, BytesMut::new());
            handshake(reader, &mut write_half, index, name, cookie.clone()).await?
        }
        Endpoint::Relay { .. } => FrameReader::new(read_half, BytesMut::new()),
    };
    let join = codec::encode_frame(&ClientMessage::Join {
        nick: nick(index),
        backlog: 0,
    })?;
    write_half.write_all(&join).await?;
    loop {
        match reader.next().await {
            Ok(None) => return Err(ClientError::Closed),
            Ok(Some(ServerMessage::Reply(Reply::Joined { users, more, .. }))) => {
                return Ok(JoinedClient {
                    reader,
                    writer: Arc::new(Mutex::new(write_half)),
                    members: Some(users.len() + more as usize),
                });
            }
            // The frame was taken off the stream whole (the length prefix was fine) but its
            // payload did not decode: in practice the member list of a big room, which can
            // pass the frame limit yet exceed bincode's decode limit. The server has
            // joined us all the same, so carry on and let the caller count it.
            Err(CodecError::Decode(reason)) => {
                tracing::debug!(client = index, %reason, "undecodable join reply");
                return Ok(JoinedClient {
                    reader,
                    writer: Arc::new(Mutex::new(write_half)),
                    members: None,
                });
            }
            Err(e) => return Err(e.into()),
            Ok(Some(ServerMessage::Reply(other))) => return Err(ClientError::Refused(other)),
            Ok(Some(ServerMessage::Ping)) => {
                write_half
                    .write_all(&codec::encode_frame(&ClientMessage::Pong)?)
                    .await?;
            }
            Ok(Some(ServerMessage::Closing { reason })) => {
                return Err(ClientError::Closing(reason));
            }
            // Nothing else is sent to a connection that has not joined yet.
            Ok(Some(ServerMessage::Event(_) | ServerMessage::Pong)) => {}
        }
    }
}

/// Sends the preamble and runs the cookie handshake; returns the reader, now for session
/// messages inside the channel, with any bytes read past the handshake still buffered,
/// and gives the writer the channel's sealer.
async fn handshake(
    mut reader: FrameReader<ServerMessage>,
    writer: &mut ChannelWriter,
    index: usize,
    server: &NodeName,
    cookie: Cookie,
) -> Result<FrameReader<ServerMessage>, ClientError> {
    let own = NodeName::from_parts(&format!("bench{index}"), "localhost")?;
    let (mut machine, hello) = ClientHandshake::new(own, server.clone(), cookie);
    let mut out = BytesMut::from(&PREAMBLE[..]);
    out.extend_from_slice(&hello);
    writer.write_all(&out).await?;
    loop {
        let Some(payload) = reader.next_handshake_payload().await? else {
            return Err(ClientError::Closed);
        };
        match machine.on_frame(&payload)? {
            ClientStep::Send(reply) => writer.write_all(&reply).await?,
            ClientStep::Done { channel, .. } => {
                writer.sealer = Some(channel.sealer);
                return Ok(reader.into_channel(channel.opener));
            }
        }
    }
}
