//! Session set-up, the bench's one seam with the protocol version: connect, the opening
//! (preamble and handshake) of the target's [`Dialect`], and the [`Channel`] that turns
//! the bytes on the socket into session frames and back.
//!
//! Everything past this module sees plaintext frames only. Version 1 (and the relay) send
//! frames as they are, so their channel is [`Channel::Plain`] and costs nothing. Version 2
//! (this tree's `chat-server`) runs the PAKE handshake of the `protocol` crate after its
//! preamble, and then every byte travels in AES-256-GCM records: [`Channel::Sealed`]
//! opens whole records in place and hands their plaintext on (a frame may span two), and
//! seals what the generator sends. `--baseline-server` builds from before the secure
//! channel keep speaking version 1 through [`crate::legacy`].

use std::io;
use std::net::SocketAddr;

use bytes::BytesMut;
use protocol::secure::{ClientHandshake, ClientStep, Opener, Sealer};
use protocol::{Cookie, NodeName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::legacy;
use crate::wire::{self, Layout, WireError};

/// How a target opens a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// The baseline relay: session frames from the first byte.
    Relay,
    /// Protocol version 1: preamble `EXM\x01`, the HMAC cookie handshake, plaintext frames.
    V1,
    /// Protocol version 2: preamble `EXM\x02`, SPAKE2 over the cookie, then every byte in
    /// sealed records.
    V2,
}

impl Dialect {
    /// What this tree's `chat-server` speaks.
    pub const CURRENT: Dialect = Dialect::V2;
}

/// Where a bench client connects, and how.
#[derive(Clone)]
pub struct Endpoint {
    /// The listening address.
    pub addr: SocketAddr,
    /// The opening it expects.
    pub dialect: Dialect,
    /// The generation of session messages it speaks.
    pub layout: Layout,
    /// The server's node name (the handshake's `to`); unused by the relay.
    pub server_name: String,
    /// The shared cookie; unused by the relay.
    pub cookie: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("dialect", &self.dialect)
            .field("layout", &self.layout)
            .field("server_name", &self.server_name)
            .field("cookie", &"<redacted>")
            .finish()
    }
}

/// Why a session could not be set up, or a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connect or a socket operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The version 1 handshake failed.
    #[error("handshake failed: {0}")]
    Legacy(#[from] legacy::LegacyError),
    /// The version 2 handshake failed.
    #[error("handshake failed: {0}")]
    Secure(#[from] protocol::HandshakeError),
    /// A record could not be opened or sealed: the channel is broken.
    #[error("secure channel: {0}")]
    Record(#[from] protocol::secure::RecordError),
    /// A node name or the cookie is not usable.
    #[error("{0}")]
    Setup(String),
    /// A frame was malformed.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The server closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
}

/// The stream transform of an established session.
pub enum Channel {
    /// Frames travel as they are.
    Plain,
    /// Frames travel in sealed records (protocol version 2).
    Sealed {
        /// Opens what the server sends.
        opener: Opener,
        /// Seals what the client sends.
        sealer: Sealer,
    },
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Sealed { .. } => "Sealed",
        })
    }
}

impl Channel {
    /// Turns bytes read from the socket into plaintext: every whole unit at the start of
    /// `wire` (which may be transformed in place) is handed to `plain`, in order. Returns
    /// how many bytes of `wire` were used; the caller keeps the rest (an incomplete unit)
    /// and puts it in front of the next read.
    pub fn open(
        &mut self,
        wire: &mut [u8],
        mut plain: impl FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<usize, SessionError> {
        match self {
            Self::Plain => {
                plain(wire)?;
                Ok(wire.len())
            }
            Self::Sealed { opener, .. } => {
                let mut used = 0;
                while let Some(total) = Opener::peek_len(&wire[used..])? {
                    let Some(record) = wire.get_mut(used..used + total) else {
                        break;
                    };
                    plain(opener.open_in_place(record)?)?;
                    used += total;
                }
                Ok(used)
            }
        }
    }

    /// Starts an outgoing unit at the end of `out` (a sealed channel reserves its record
    /// header here); frames are then appended and [`Channel::seal`] finishes the unit.
    /// Returns the mark to pass to `seal`.
    // A Vec, not a slice: a sealed channel appends its record header here.
    #[allow(clippy::ptr_arg)]
    pub fn begin(&self, out: &mut Vec<u8>) -> usize {
        out.len()
    }

    /// Finishes the unit started at `mark`: everything appended since is ready to write
    /// (sealed into records, for a sealed channel).
    pub fn seal(&mut self, out: &mut Vec<u8>, mark: usize) -> Result<(), SessionError> {
        match self {
            Self::Plain => Ok(()),
            Self::Sealed { sealer, .. } => {
                // What the generator sends is small next to what it reads: one copy here
                // is cheap, and it keeps the buffers of the engine plain Vecs.
                let mut sealed = BytesMut::new();
                sealer.seal_stream([&out[mark..]], &mut sealed)?;
                out.truncate(mark);
                out.extend_from_slice(&sealed);
                Ok(())
            }
        }
    }
}

/// A connected, authenticated session, before anything was said in it.
pub struct Established {
    /// The socket.
    pub stream: TcpStream,
    /// Its transform.
    pub channel: Channel,
    /// Bytes read past the handshake, still to go through the channel.
    pub wire_pending: Vec<u8>,
}

/// Connects to `endpoint` as bench client `index` (node `bench<index>@localhost`) and
/// runs the dialect's opening.
pub async fn establish(endpoint: &Endpoint, index: usize) -> Result<Established, SessionError> {
    let mut stream = TcpStream::connect(endpoint.addr).await?;
    stream.set_nodelay(true)?;
    match endpoint.dialect {
        Dialect::Relay => Ok(Established {
            stream,
            channel: Channel::Plain,
            wire_pending: Vec::new(),
        }),
        Dialect::V1 => {
            let own = format!("bench{index}@localhost");
            let (mut machine, first) =
                legacy::ClientHandshake::start(&own, &endpoint.server_name, &endpoint.cookie);
            stream.write_all(&first).await?;
            let mut buf = Vec::with_capacity(256);
            loop {
                let step = match wire::split_frame(&buf)? {
                    Some((payload, used)) => {
                        let step = machine.on_frame(payload)?;
                        buf.drain(..used);
                        step
                    }
                    None => {
                        if stream.read_buf(&mut buf).await? == 0 {
                            return Err(SessionError::Closed);
                        }
                        continue;
                    }
                };
                match step {
                    legacy::Step::Send(bytes) => stream.write_all(&bytes).await?,
                    legacy::Step::Done => {
                        return Ok(Established {
                            stream,
                            channel: Channel::Plain,
                            wire_pending: buf,
                        });
                    }
                }
            }
        }
        Dialect::V2 => {
            let setup = |what: &str, e: String| SessionError::Setup(format!("{what}: {e}"));
            let own = NodeName::parse_long(&format!("bench{index}@localhost"))
                .map_err(|e| setup("own node name", e.to_string()))?;
            let server = NodeName::parse_long(&endpoint.server_name)
                .map_err(|e| setup("server name", e.to_string()))?;
            let cookie = Cookie::new(&endpoint.cookie)
                .ok_or_else(|| setup("cookie", "empty".to_string()))?;
            let (mut machine, hello) = ClientHandshake::new(own, server, cookie);
            let mut first = protocol::PREAMBLE.to_vec();
            first.extend_from_slice(&hello);
            stream.write_all(&first).await?;
            let mut buf = Vec::with_capacity(256);
            loop {
                let step = match wire::split_frame(&buf)? {
                    Some((payload, used)) => {
                        let step = machine.on_frame(payload)?;
                        buf.drain(..used);
                        step
                    }
                    None => {
                        if stream.read_buf(&mut buf).await? == 0 {
                            return Err(SessionError::Closed);
                        }
                        continue;
                    }
                };
                match step {
                    ClientStep::Send(bytes) => stream.write_all(&bytes).await?,
                    ClientStep::Done { channel, .. } => {
                        let protocol::Established { sealer, opener } = *channel;
                        return Ok(Established {
                            stream,
                            channel: Channel::Sealed { opener, sealer },
                            wire_pending: buf,
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_tree_speaks_the_dialect_the_bench_calls_current() {
        // When the protocol crate moves past version 2, this fails: add the new dialect
        // and its channel, and make it CURRENT.
        assert_eq!(protocol::PROTOCOL_VERSION, 2);
        assert_eq!(Dialect::CURRENT, Dialect::V2);
    }

    #[test]
    fn the_sealed_channel_opens_whole_records_and_keeps_a_partial_one() {
        let key = [7u8; 32];
        let mut ours = Channel::Sealed {
            opener: Opener::new(&key),
            sealer: Sealer::new(&key),
        };
        let mut out = Vec::new();
        let mark = ours.begin(&mut out);
        out.extend_from_slice(b"hello, records");
        ours.seal(&mut out, mark).unwrap();
        let mark = ours.begin(&mut out);
        out.extend_from_slice(b"again");
        ours.seal(&mut out, mark).unwrap();
        let cut = out.len() - 3;
        let mut seen = Vec::new();
        let used = ours
            .open(&mut out[..cut], |plain| {
                seen.extend_from_slice(plain);
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, b"hello, records");
        let mut rest = out[used..].to_vec();
        let used = ours
            .open(&mut rest, |plain| {
                seen.extend_from_slice(plain);
                Ok(())
            })
            .unwrap();
        assert_eq!((used, &seen[..]), (rest.len(), &b"hello, recordsagain"[..]));
    }

    #[test]
    fn the_plain_channel_passes_bytes_through() {
        let mut channel = Channel::Plain;
        let mut wire = *b"abc";
        let mut seen = Vec::new();
        let used = channel
            .open(&mut wire, |plain| {
                seen.extend_from_slice(plain);
                Ok(())
            })
            .unwrap();
        assert_eq!((used, &seen[..]), (3, &b"abc"[..]));
        let mut out = b"x".to_vec();
        let mark = channel.begin(&mut out);
        out.extend_from_slice(b"yz");
        channel.seal(&mut out, mark).unwrap();
        assert_eq!(out, b"xyz");
    }
}
