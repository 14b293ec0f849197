//! One bench client joining the room: set up the session ([`crate::session`]), send the
//! join, read until it is answered, then hand the socket and everything read past the
//! answer to a generator thread ([`crate::engine`]).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::frames::Frames;
use crate::session::{self, Channel, Endpoint, SessionError};
use crate::wire::{self, Layout, ServerFrame, WireError};

/// Time allowed for connect, handshake and join together. Generous, because joining
/// thousands of clients keeps the server busy with join broadcasts.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a client could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// Session set-up failed.
    #[error("{0}")]
    Session(#[from] SessionError),
    /// A socket operation failed after set-up.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection before answering the join.
    #[error("connection closed before the join was answered")]
    Closed,
    /// The join was answered with another reply (its variant index).
    #[error("join refused (reply variant {0})")]
    Refused(u64),
    /// The server closed the session.
    #[error("server closed the session: {0}")]
    Closing(&'static str),
    /// Connect, handshake and join took longer than [`JOIN_TIMEOUT`].
    #[error("connect + handshake + join took longer than {JOIN_TIMEOUT:?}")]
    Timeout,
}

/// A joined client, ready for a generator thread.
pub struct Handover {
    /// The client's index (its nick is `b<index>`).
    pub index: usize,
    /// The socket, now blocking-free and owned by nobody's runtime.
    pub stream: std::net::TcpStream,
    /// The session's transform.
    pub channel: Channel,
    /// The generation of session messages spoken.
    pub layout: Layout,
    /// Bytes read from the socket but not yet through the channel.
    pub wire_pending: Vec<u8>,
    /// Plaintext after the join's answer: whole frames, then any partial one.
    pub plain_pending: Vec<u8>,
    /// Members the answer counted (listed and more), this client included.
    pub members: u64,
}

/// The nick of bench client `index`.
pub fn nick(index: usize) -> String {
    format!("b{index}")
}

/// Connects client `index`, sets up its session and joins, within [`JOIN_TIMEOUT`].
pub async fn connect_and_join(endpoint: &Endpoint, index: usize) -> Result<Handover, JoinError> {
    tokio::time::timeout(JOIN_TIMEOUT, join(endpoint, index, &nick(index)))
        .await
        .map_err(|_| JoinError::Timeout)?
}

/// Finds out which generation of session messages the server at `endpoint` speaks (its
/// `layout` is ignored): joins as `layout-probe` with the current layout, and with the
/// original one if the server refuses that as a protocol error; then leaves. Only the
/// probe's join and departure reach the room, before any bench client is in it.
pub async fn detect_layout(endpoint: &Endpoint) -> Result<Layout, JoinError> {
    for layout in [Layout::Sessions, Layout::Original] {
        let probe = Endpoint {
            layout,
            ..endpoint.clone()
        };
        let joined = tokio::time::timeout(JOIN_TIMEOUT, join(&probe, 0, "layout-probe"))
            .await
            .map_err(|_| JoinError::Timeout)?;
        match joined {
            Ok(handover) => {
                let mut out = Vec::new();
                let mut channel = handover.channel;
                let mark = channel.begin(&mut out);
                wire::leave(&mut out);
                channel.seal(&mut out, mark)?;
                let mut stream = handover.stream;
                std::io::Write::write_all(&mut stream, &out)?;
                return Ok(layout);
            }
            // A server of the other generation closes on the join as a protocol error.
            Err(JoinError::Closed | JoinError::Closing(_)) => continue,
            Err(JoinError::Io(e) | JoinError::Session(SessionError::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
    Err(JoinError::Closed)
}

/// What the join's reader found.
enum Answer {
    Joined(u64),
    Refused(u64),
    Closing(u64),
}

async fn join(endpoint: &Endpoint, index: usize, nick: &str) -> Result<Handover, JoinError> {
    let layout = endpoint.layout;
    let session::Established {
        mut stream,
        mut channel,
        wire_pending,
    } = session::establish(endpoint, index).await?;
    let mut out = Vec::new();
    let mark = channel.begin(&mut out);
    wire::join(&mut out, layout, nick);
    channel.seal(&mut out, mark)?;
    stream.write_all(&out).await?;

    let mut wire_buf = wire_pending;
    let mut frames = Frames::default();
    let mut answer = None;
    let mut after = Vec::new();
    let mut pongs = 0usize;
    // Bytes that came with the handshake's last frame are handled before the first read.
    let mut read_first = wire_buf.is_empty();
    loop {
        if read_first {
            wire_buf.reserve(16 * 1024);
            if stream.read_buf(&mut wire_buf).await? == 0 {
                return Err(JoinError::Closed);
            }
        }
        read_first = true;
        let used = channel.open(&mut wire_buf, |payload_stream| {
            frames.feed(payload_stream, |payload| {
                if answer.is_some() {
                    // Past the answer: keep the frame for the generator thread.
                    after.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    after.extend_from_slice(payload);
                    return Ok(());
                }
                match wire::parse_server(payload, layout)? {
                    ServerFrame::JoinedReply { listed, more } => {
                        answer = Some(Answer::Joined(listed + more));
                    }
                    ServerFrame::OtherReply(variant) => answer = Some(Answer::Refused(variant)),
                    ServerFrame::Closing(reason) => answer = Some(Answer::Closing(reason)),
                    ServerFrame::Ping => pongs += 1,
                    // Nothing else is sent before the join is answered.
                    _ => {}
                }
                Ok::<(), WireError>(())
            })
        })?;
        wire_buf.drain(..used);
        if pongs > 0 {
            let mut out = Vec::new();
            let mark = channel.begin(&mut out);
            for _ in 0..std::mem::take(&mut pongs) {
                wire::pong(&mut out);
            }
            channel.seal(&mut out, mark)?;
            stream.write_all(&out).await?;
        }
        match answer {
            None => continue,
            Some(Answer::Refused(variant)) => return Err(JoinError::Refused(variant)),
            Some(Answer::Closing(reason)) => {
                return Err(JoinError::Closing(wire::leave_reason(reason)));
            }
            Some(Answer::Joined(members)) => {
                after.extend_from_slice(&frames.take_partial());
                let stream = stream.into_std()?;
                return Ok(Handover {
                    index,
                    stream,
                    channel,
                    layout,
                    wire_pending: wire_buf,
                    plain_pending: after,
                    members,
                });
            }
        }
    }
}
