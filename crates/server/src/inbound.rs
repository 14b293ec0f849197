//! Reads a connection's frames into a buffer that exists only while bytes are waiting.
//!
//! `FramedRead` keeps an 8 KiB buffer for the life of a connection; with thousands of
//! idle members that is most of the server's memory. Here the reader waits for the socket
//! to be readable with no buffer at all, reads what has arrived, decodes every whole
//! frame, and lets the buffer go as soon as nothing partial is left in it.

use bytes::BytesMut;
use protocol::ClientMessage;
use protocol::codec::{CodecError, MessageCodec};
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::Decoder;

/// Bytes reserved for each read.
const READ_CHUNK: usize = 4096;

/// Decoded client messages from one socket.
pub struct Inbound {
    socket: OwnedReadHalf,
    codec: MessageCodec<ClientMessage>,
    buffer: BytesMut,
}

impl Inbound {
    /// Reads from `socket`, starting with `leftover` bytes already read past the handshake.
    pub fn new(socket: OwnedReadHalf, leftover: BytesMut) -> Self {
        Self {
            socket,
            codec: MessageCodec::new(),
            buffer: leftover,
        }
    }

    /// The next message; `None` at the end of the stream. Cancel-safe: all state lives in
    /// `self`, so it can be raced against other events in `select!`.
    pub async fn next(&mut self) -> Option<Result<ClientMessage, CodecError>> {
        loop {
            match self.codec.decode(&mut self.buffer) {
                Ok(Some(message)) => return Some(Ok(message)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            if self.buffer.is_empty() && self.buffer.capacity() > 0 {
                self.buffer = BytesMut::new();
            }
            if let Err(e) = self.socket.readable().await {
                return Some(Err(e.into()));
            }
            self.buffer.reserve(READ_CHUNK);
            match self.socket.try_read_buf(&mut self.buffer) {
                // End of stream; a partial frame left in the buffer dies with it.
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}
