//! Reads a connection's records and frames into buffers that exist only while bytes are
//! waiting.
//!
//! `FramedRead` keeps an 8 KiB buffer for the life of a connection; with thousands of
//! idle members that is most of the server's memory. Here the reader waits for the socket
//! to be readable with no buffer at all, reads what has arrived, opens every whole record
//! into a plaintext buffer and decodes the frames there, one record at a time, and lets
//! both buffers go as soon as nothing partial is left in them. The plaintext holds at most
//! a partial frame and one record; the ciphertext at most a partial record and one read.

use bytes::BytesMut;
use protocol::ClientMessage;
use protocol::codec::{self, CodecError};
use protocol::secure::Opener;
use tokio::net::tcp::OwnedReadHalf;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// Bytes reserved for each read.
const READ_CHUNK: usize = 4096;

/// Decoded client messages from one socket.
pub struct Inbound {
    socket: OwnedReadHalf,
    opener: Opener,
    framing: LengthDelimitedCodec,
    /// Records as read, not yet opened.
    sealed: BytesMut,
    /// Opened bytes, not yet decoded.
    plain: BytesMut,
}

impl Inbound {
    /// Reads from `socket`, starting with `leftover` bytes already read past the
    /// handshake, opening records with `opener`.
    pub fn new(socket: OwnedReadHalf, leftover: BytesMut, opener: Opener) -> Self {
        Self {
            socket,
            opener,
            framing: codec::framing(),
            sealed: leftover,
            plain: BytesMut::new(),
        }
    }

    /// The socket back, for the lingering close ([`crate::linger`]); bytes read but not
    /// yet decoded are dropped.
    pub fn into_socket(self) -> OwnedReadHalf {
        self.socket
    }

    /// The next message; `None` at the end of the stream. Cancel-safe: all state lives in
    /// `self`, so it can be raced against other events in `select!`.
    pub async fn next(&mut self) -> Option<Result<ClientMessage, CodecError>> {
        loop {
            match self.framing.decode(&mut self.plain) {
                Ok(Some(payload)) => return Some(codec::decode(&payload)),
                Ok(None) => {}
                Err(e) => return Some(Err(codec::framing_error(e))),
            }
            match self.opener.open_into(&mut self.sealed, &mut self.plain) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => return Some(Err(e.into())),
            }
            for buffer in [&mut self.sealed, &mut self.plain] {
                if buffer.is_empty() && buffer.capacity() > 0 {
                    *buffer = BytesMut::new();
                }
            }
            if let Err(e) = self.socket.readable().await {
                return Some(Err(e.into()));
            }
            self.sealed.reserve(READ_CHUNK);
            match self.socket.try_read_buf(&mut self.sealed) {
                // End of stream; a partial record or frame left dies with it.
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
}
