//! [`RawClient`]: a protocol-level client built on the `protocol` crate, for what the
//! real client cannot do: misbehave.
//!
//! It speaks the native protocol over a tokio `TcpStream` (each `RawClient` owns a small
//! current-thread runtime, so tests stay synchronous): preamble, the `ClientHandshake`
//! state machine, then `ClientMessage`s out and `ServerMessage`s in through the secure
//! channel, every wait bounded. It can also write arbitrary bytes on the socket or seal
//! arbitrary bytes inside the channel (garbage, oversized frames), stop reading, stop
//! answering pings, or never finish the handshake.

use std::io;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::secure::ClientStep;
use protocol::{
    ClientHandshake, ClientMessage, Cookie, Established, Event, EventKind, HandshakeError,
    HandshakeMessage, NodeName, PREAMBLE, Reply, ServerMessage, codec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::codec::Decoder;

use crate::WAIT;

/// What one read brought.
#[derive(Debug)]
pub enum Incoming<T> {
    /// A whole message.
    Message(T),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time given.
    TimedOut,
}

/// A raw protocol connection to a chat server on 127.0.0.1.
pub struct RawClient {
    label: String,
    rt: Runtime,
    stream: TcpStream,
    rbuf: BytesMut,
    framing: tokio_util::codec::LengthDelimitedCodec,
    /// The secure channel, once the handshake is done.
    channel: Option<Established>,
    /// Bytes opened from the channel, not yet decoded.
    plain: BytesMut,
    /// Answer server pings automatically while receiving (true by default).
    pub auto_pong: bool,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

impl RawClient {
    /// Opens a TCP connection to 127.0.0.1:`port` and nothing else.
    #[track_caller]
    pub fn connect(label: &str, port: u16) -> RawClient {
        Self::connect_with(label, port, None)
    }

    /// As [`RawClient::connect`], with the socket's receive buffer set to `bytes` before
    /// connecting (so that a client that does not read fills up quickly).
    #[track_caller]
    pub fn connect_small_buffer(label: &str, port: u16, bytes: u32) -> RawClient {
        Self::connect_with(label, port, Some(bytes))
    }

    /// As [`RawClient::connect`], from the loopback address `from` (any of 127.0.0.0/8):
    /// another host, as far as the server's per-address limits can tell.
    #[track_caller]
    pub fn connect_from(label: &str, from: std::net::Ipv4Addr, port: u16) -> RawClient {
        Self::connect_full(label, port, None, Some(from))
    }

    #[track_caller]
    fn connect_with(label: &str, port: u16, recv_buffer: Option<u32>) -> RawClient {
        Self::connect_full(label, port, recv_buffer, None)
    }

    #[track_caller]
    fn connect_full(
        label: &str,
        port: u16,
        recv_buffer: Option<u32>,
        from: Option<std::net::Ipv4Addr>,
    ) -> RawClient {
        let rt = runtime();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = rt.block_on(async {
            let socket = TcpSocket::new_v4()?;
            if let Some(size) = recv_buffer {
                socket.set_recv_buffer_size(size)?;
            }
            if let Some(from) = from {
                socket.bind((from, 0).into())?;
            }
            tokio::time::timeout(WAIT, socket.connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
        });
        let stream = stream.unwrap_or_else(|e| panic!("{label}: cannot connect to {addr}: {e}"));
        RawClient {
            label: label.to_string(),
            rt,
            stream,
            rbuf: BytesMut::with_capacity(8192),
            framing: codec::framing(),
            channel: None,
            plain: BytesMut::new(),
            auto_pong: true,
        }
    }

    /// Connects, sends the preamble and completes the handshake as `own` (a node name)
    /// towards `server` (a node name) with `cookie`. Panics if that fails.
    #[track_caller]
    pub fn open(label: &str, port: u16, own: &str, server: &str, cookie: &str) -> RawClient {
        let mut raw = RawClient::connect(label, port);
        if let Err(e) = raw.handshake(own, server, cookie) {
            panic!("{label}: handshake with {server} failed: {e}");
        }
        raw
    }

    /// Opens a session (see [`RawClient::open`]) and joins as `nick`; panics unless the
    /// reply is `Joined`. Returns the client and the users of the reply.
    #[track_caller]
    pub fn open_joined(
        port: u16,
        server: &str,
        cookie: &str,
        nick: &str,
    ) -> (RawClient, Vec<String>) {
        let own = format!("raw-{}@localhost", sanitize(nick));
        let mut raw = RawClient::open(nick, port, &own, server, cookie);
        match raw.join(nick) {
            Reply::Joined { users, .. } => (raw, users),
            other => panic!("{nick}: join refused: {other:?}"),
        }
    }

    /// Joins as `nick` (own name `<nick>@localhost`) with a 4 KiB receive buffer, to
    /// read no more: a slow consumer, whose socket and then send queue on the server
    /// fill up quickly. Panics unless the join is answered `Joined`.
    #[track_caller]
    pub fn joined_sloth(nick: &str, port: u16, server: &str, cookie: &str) -> RawClient {
        let mut sloth = RawClient::connect_small_buffer(nick, port, 4096);
        sloth
            .handshake(&format!("{nick}@localhost"), server, cookie)
            .expect("sloth handshake");
        match sloth.join(nick) {
            Reply::Joined { .. } => sloth,
            other => panic!("{nick}: join refused: {other:?}"),
        }
    }

    /// The label used in panics.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Writes `data` as is, waiting at most `timeout` (a server that does not read can
    /// make writes block).
    pub fn write_bytes_within(&mut self, data: &[u8], timeout: Duration) -> io::Result<()> {
        let stream = &mut self.stream;
        self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                stream.write_all(data).await?;
                stream.flush().await
            })
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
        })
    }

    /// Writes `data` as is; panics on failure.
    #[track_caller]
    pub fn write_bytes(&mut self, data: &[u8]) {
        if let Err(e) = self.write_bytes_within(data, WAIT) {
            panic!("{}: cannot write: {e}", self.label);
        }
    }

    /// Sends the 4-byte preamble.
    #[track_caller]
    pub fn send_preamble(&mut self) {
        self.write_bytes(&PREAMBLE);
    }

    /// Sends one handshake message as a frame.
    #[track_caller]
    pub fn send_handshake(&mut self, msg: &HandshakeMessage) {
        let frame = codec::encode_frame(msg).expect("handshake messages encode");
        self.write_bytes(&frame);
    }

    /// Sends the preamble and runs the client side of the handshake; afterwards every
    /// message goes through the secure channel.
    #[track_caller]
    pub fn handshake(&mut self, own: &str, server: &str, cookie: &str) -> Result<u64, String> {
        let own = NodeName::parse_long(own).map_err(|e| e.to_string())?;
        let server = NodeName::parse_long(server).map_err(|e| e.to_string())?;
        let cookie = Cookie::new(cookie).ok_or("empty cookie")?;
        let (mut machine, hello) = ClientHandshake::new(own, server, cookie);
        self.send_preamble();
        self.write_bytes(&hello);
        loop {
            let payload = match self.read_payload(WAIT) {
                Incoming::Message(payload) => payload,
                Incoming::Closed => return Err("connection closed during the handshake".into()),
                Incoming::TimedOut => return Err("no handshake answer in time".into()),
            };
            match machine.on_frame(&payload) {
                Ok(ClientStep::Send(reply)) => self.write_bytes(&reply),
                Ok(ClientStep::Done { tick_ms, channel }) => {
                    self.channel = Some(*channel);
                    return Ok(tick_ms);
                }
                Err(HandshakeError::Refused(reason)) => return Err(format!("refused: {reason}")),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Seals `data` as it is into the channel's records and writes them: garbage or
    /// oversized frames that pass the record layer. Panics before the handshake.
    #[track_caller]
    pub fn write_sealed(&mut self, data: &[u8]) {
        if let Err(e) = self.write_sealed_within(data, WAIT) {
            panic!("{}: cannot write: {e}", self.label);
        }
    }

    /// As [`RawClient::write_sealed`], reporting failure, waiting at most `timeout`.
    pub fn write_sealed_within(&mut self, data: &[u8], timeout: Duration) -> io::Result<()> {
        let records = self.seal(data);
        self.write_bytes_within(&records, timeout)
    }

    /// `data` sealed as the channel's next records (the channel's counter advances).
    #[track_caller]
    pub fn seal(&mut self, data: &[u8]) -> Vec<u8> {
        let label = &self.label;
        let channel = self
            .channel
            .as_mut()
            .unwrap_or_else(|| panic!("{label}: no channel before the handshake"));
        let mut records = BytesMut::new();
        channel
            .sealer
            .seal_stream([data], &mut records)
            .expect("sealing fits the record limit");
        records.to_vec()
    }

    /// Sends a session message.
    #[track_caller]
    pub fn send(&mut self, msg: &ClientMessage) {
        if let Err(e) = self.try_send(msg, WAIT) {
            panic!("{}: cannot send {msg:?}: {e}", self.label);
        }
    }

    /// Sends a session message, reporting failure (a closed connection, a full socket).
    pub fn try_send(&mut self, msg: &ClientMessage, timeout: Duration) -> io::Result<()> {
        let frame = codec::encode_frame(msg).map_err(io::Error::other)?;
        if self.channel.is_some() {
            self.write_sealed_within(&frame, timeout)
        } else {
            self.write_bytes_within(&frame, timeout)
        }
    }

    /// Says `text` to the room.
    #[track_caller]
    pub fn say(&mut self, text: &str) {
        self.send(&ClientMessage::Say {
            id: 0,
            text: text.to_string(),
        });
    }

    /// Sends `Join` and waits for the reply.
    #[track_caller]
    pub fn join(&mut self, nick: &str) -> Reply {
        self.send(&ClientMessage::Join {
            nick: nick.to_string(),
            backlog: 0,
        });
        self.expect_reply()
    }

    /// Receives the next session message (answering pings if `auto_pong`).
    pub fn recv(&mut self, timeout: Duration) -> Incoming<ServerMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_message::<ServerMessage>(left) {
                Incoming::Message(ServerMessage::Ping) if self.auto_pong => {
                    if self.try_send(&ClientMessage::Pong, WAIT).is_err() {
                        return Incoming::Closed;
                    }
                }
                other => return other,
            }
        }
    }

    /// Waits for the next reply (skipping events and pings); panics on timeout or close.
    #[track_caller]
    pub fn expect_reply(&mut self) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Incoming::Message(ServerMessage::Reply(reply)) => return reply,
                Incoming::Message(_) => {}
                Incoming::Closed => panic!("{}: connection closed awaiting a reply", self.label),
                Incoming::TimedOut => panic!("{}: no reply within {WAIT:?}", self.label),
            }
        }
    }

    /// Waits for an event for which `pred` holds, skipping others; panics on timeout
    /// or close.
    #[track_caller]
    pub fn expect_event(&mut self, what: &str, pred: impl Fn(&EventKind) -> bool) -> Event {
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Incoming::Message(ServerMessage::Event(ev)) if pred(&ev.kind) => return ev,
                Incoming::Message(other) => skipped.push(other),
                Incoming::Closed => panic!(
                    "{}: connection closed awaiting {what}; got before: {skipped:?}",
                    self.label
                ),
                Incoming::TimedOut => panic!(
                    "{}: no {what} within {WAIT:?}; got before: {skipped:?}",
                    self.label
                ),
            }
        }
    }

    /// Reads and discards everything until the server closes the connection; returns the
    /// time that took. Panics if it is still open after `timeout`.
    #[track_caller]
    pub fn expect_closed(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let stream = &mut self.stream;
        let closed = self.rt.block_on(async {
            tokio::time::timeout(timeout, async {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .is_ok()
        });
        assert!(
            closed,
            "{}: the server did not close the connection within {timeout:?}",
            self.label
        );
        self.rbuf.clear();
        start.elapsed()
    }

    /// Reads until one whole frame is decoded as `T` (through the channel once there is
    /// one), the connection closes, or `timeout` passes. Undecodable frames panic (the
    /// server must not send them).
    pub fn read_message<T: serde::de::DeserializeOwned>(
        &mut self,
        timeout: Duration,
    ) -> Incoming<T> {
        match self.read_payload(timeout) {
            Incoming::Message(payload) => match codec::decode::<T>(&payload) {
                Ok(msg) => Incoming::Message(msg),
                Err(e) => panic!("{}: undecodable frame from the server: {e}", self.label),
            },
            Incoming::Closed => Incoming::Closed,
            Incoming::TimedOut => Incoming::TimedOut,
        }
    }

    /// Reads until one whole frame's payload is there (opened from the channel once there
    /// is one). A record that fails to open panics.
    pub fn read_payload(&mut self, timeout: Duration) -> Incoming<BytesMut> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(channel) = self.channel.as_mut() {
                loop {
                    match self.framing.decode(&mut self.plain) {
                        Ok(Some(payload)) => return Incoming::Message(payload),
                        Ok(None) => {}
                        Err(e) => panic!("{}: bad framing from the server: {e}", self.label),
                    }
                    match channel.opener.open_into(&mut self.rbuf, &mut self.plain) {
                        Ok(true) => {}
                        Ok(false) => break,
                        Err(e) => panic!("{}: bad record from the server: {e}", self.label),
                    }
                }
            } else {
                match codec::handshake_framing().decode(&mut self.rbuf) {
                    Ok(Some(payload)) => return Incoming::Message(payload),
                    Ok(None) => {}
                    Err(e) => panic!("{}: bad framing from the server: {e}", self.label),
                }
            }
            let stream = &mut self.stream;
            let rbuf = &mut self.rbuf;
            let read = self
                .rt
                .block_on(async { tokio::time::timeout_at(deadline, stream.read_buf(rbuf)).await });
            match read {
                Err(_) => return Incoming::TimedOut,
                Ok(Ok(0)) | Ok(Err(_)) => return Incoming::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// Makes `nick` usable as the alive part of a node name.
pub fn sanitize(nick: &str) -> String {
    nick.chars()
        .take(40)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
