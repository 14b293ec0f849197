//! Session set-up, the bench's one seam with the protocol version: connect, the opening
//! (preamble and handshake) of the target's [`Dialect`], and the [`Channel`] that turns
//! the bytes on the socket into session frames and back.
//!
//! Everything past this module sees plaintext frames only. Version 1 (and the relay) send
//! frames as they are, so their channel is [`Channel::Plain`] and costs nothing. Version 2
//! (the secure channel) wraps frames in encrypted records; plugging it in means:
//!
//! 1. a `Dialect::V2` whose arm in [`establish`] runs the PAKE handshake (the `protocol`
//!    crate's client state machine) after the v2 preamble and returns the record keys;
//! 2. a `Channel::Sealed(..)` variant holding those keys and sequence numbers, with an arm
//!    in [`Channel::open`] (decrypt whole records in place, hand their plaintext on, leave
//!    a partial record to the caller) and in [`Channel::begin`] / [`Channel::seal`]
//!    (reserve the record header, then encrypt what was appended in place and add the tag);
//! 3. [`Dialect::CURRENT`] = `V2`, so `--target server` speaks it while
//!    `--baseline-server` keeps speaking version 1 through [`crate::legacy`].

use std::io;
use std::net::SocketAddr;

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
}

impl Dialect {
    /// What this tree's `chat-server` speaks.
    pub const CURRENT: Dialect = Dialect::V1;
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
    /// A frame was malformed.
    #[error("{0}")]
    Wire(#[from] WireError),
    /// The server closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
}

/// The stream transform of an established session.
#[derive(Debug)]
pub enum Channel {
    /// Frames travel as they are.
    Plain,
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
        }
    }

    /// Starts an outgoing unit at the end of `out` (a sealed channel reserves its record
    /// header here); frames are then appended and [`Channel::seal`] finishes the unit.
    /// Returns the mark to pass to `seal`.
    // A Vec, not a slice: a sealed channel appends its record header here.
    #[allow(clippy::ptr_arg)]
    pub fn begin(&self, out: &mut Vec<u8>) -> usize {
        match self {
            Self::Plain => out.len(),
        }
    }

    /// Finishes the unit started at `mark`: everything appended since is ready to write.
    pub fn seal(&mut self, out: &mut Vec<u8>, mark: usize) {
        match self {
            Self::Plain => {
                let _ = (out, mark);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_tree_speaks_the_dialect_the_bench_calls_current() {
        // When the protocol crate moves to version 2, this fails: add Dialect::V2 and its
        // channel (see the module doc) and make it CURRENT.
        assert_eq!(protocol::PROTOCOL_VERSION, legacy::VERSION);
        assert_eq!(Dialect::CURRENT, Dialect::V1);
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
        channel.seal(&mut out, mark);
        assert_eq!(out, b"xyz");
    }
}
