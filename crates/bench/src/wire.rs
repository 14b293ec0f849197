//! The session's bytes as far as the bench needs them: frames, the few client messages it
//! sends, and server messages read by borrowing from the frame, never allocating.
//!
//! The layout is the native protocol's (version 1, and the plaintext inside version 2's
//! records) in two generations ([`Layout`]): the original messages, and those with
//! sessions (join backlog, message ids, a session ticket in the join's answer). A frame
//! is a 4-byte big-endian length, then a bincode payload in bincode's standard
//! configuration, which writes integers and enum variant indices as varints (one byte
//! below 251; else a marker byte 251/252/253 and a little-endian u16/u32/u64) and strings
//! as a varint length and the bytes. The bench reads only what it checks (event kind,
//! room sequence number, sender nick, text) and skips the rest, so a delivery costs a few
//! byte comparisons rather than a `String` per field. The relay uses the same module, so
//! the generator and the relay agree on the layout by construction; the unit tests pin it
//! to the `protocol` crate's own encoding.

/// Length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Largest payload the bench accepts (the protocol's limit, 64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Which generation of the session messages a server speaks (both open with `EXM\x01`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Before sessions: `Join { nick }`, `Say { text }`, `Joined { users, more }`.
    Original,
    /// With sessions: `Join { nick, backlog }`, `Say { id, text }`, and `Joined` also
    /// carries a session ticket, the room's epoch and sequence number and the flood
    /// limits. The bench joins with backlog 0 and says with id 0 (not acknowledged).
    Sessions,
}

impl Layout {
    /// What the `protocol` crate of this tree speaks (and the relay).
    pub const CURRENT: Layout = Layout::Sessions;
}

/// Why a frame could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the 64 KiB limit")]
    TooLong(usize),
    /// The payload ends early or does not follow the layout.
    #[error("malformed payload")]
    Malformed,
}

/// The first whole frame at the start of `buf`: its payload and the frame's total length;
/// `None` while the frame is incomplete.
pub fn split_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLong(len));
    }
    Ok(buf
        .get(HEADER_LEN..HEADER_LEN + len)
        .map(|payload| (payload, HEADER_LEN + len)))
}

/// The total length of the frame whose header is `header`.
pub fn frame_len(header: [u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLong(len));
    }
    Ok(HEADER_LEN + len)
}

/// Appends `value` as a bincode varint.
pub fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 251 {
        out.push(value as u8);
    } else if let Ok(v) = u16::try_from(value) {
        out.push(251);
        out.extend_from_slice(&v.to_le_bytes());
    } else if let Ok(v) = u32::try_from(value) {
        out.push(252);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Starts a frame: a header to be filled in by [`end_frame`]; returns where it starts.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    start
}

fn end_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start - HEADER_LEN) as u32;
    out[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// A cursor over a payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, WireError> {
        let (&first, rest) = self.0.split_first().ok_or(WireError::Malformed)?;
        self.0 = rest;
        // Fixed-size reads (not a copy of `width` bytes): this runs for every delivery.
        Ok(match first {
            0..=250 => u64::from(first),
            251 => u64::from(u16::from_le_bytes(self.array()?)),
            252 => u64::from(u32::from_le_bytes(self.array()?)),
            253 => u64::from_le_bytes(self.array()?),
            _ => return Err(WireError::Malformed),
        })
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (bytes, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(WireError::Malformed)?;
        self.0 = rest;
        Ok(*bytes)
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.varint()?).map_err(|_| WireError::Malformed)?;
        let (bytes, rest) = self.0.split_at_checked(len).ok_or(WireError::Malformed)?;
        self.0 = rest;
        Ok(bytes)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed)
        }
    }
}

// Variant indices of the messages, in declaration order (bincode writes the index).
const CLIENT_JOIN: u64 = 0;
const CLIENT_LEAVE: u64 = 1;
const CLIENT_SAY: u64 = 2;
const CLIENT_PRIVATE: u64 = 3;
const CLIENT_LIST_USERS: u64 = 4;
const CLIENT_PING: u64 = 5;
const CLIENT_PONG: u64 = 6;
const CLIENT_RESUME: u64 = 7;

const SERVER_REPLY: u64 = 0;
const SERVER_EVENT: u64 = 1;
const SERVER_PING: u64 = 2;
const SERVER_PONG: u64 = 3;
const SERVER_CLOSING: u64 = 4;

const REPLY_JOINED: u64 = 0;
const REPLY_LEFT: u64 = 5;

const EVENT_MESSAGE: u64 = 0;
const EVENT_JOINED: u64 = 2;
const EVENT_LEFT: u64 = 3;

/// Appends a client `Join` frame for `nick` (asking for no backlog).
pub fn join(out: &mut Vec<u8>, layout: Layout, nick: &str) {
    let start = begin_frame(out);
    put_varint(out, CLIENT_JOIN);
    put_bytes(out, nick.as_bytes());
    if layout == Layout::Sessions {
        put_varint(out, 0);
    }
    end_frame(out, start);
}

/// Appends a client `Say` frame (id 0: not acknowledged); `text` must be UTF-8 (the
/// bench's own texts are ASCII).
pub fn say(out: &mut Vec<u8>, layout: Layout, text: &[u8]) {
    let start = begin_frame(out);
    put_varint(out, CLIENT_SAY);
    if layout == Layout::Sessions {
        put_varint(out, 0);
    }
    put_bytes(out, text);
    end_frame(out, start);
}

/// Appends a client `Leave` frame (the same in both layouts).
pub fn leave(out: &mut Vec<u8>) {
    let start = begin_frame(out);
    put_varint(out, CLIENT_LEAVE);
    end_frame(out, start);
}

/// Appends a client `Pong` frame.
pub fn pong(out: &mut Vec<u8>) {
    let start = begin_frame(out);
    put_varint(out, CLIENT_PONG);
    end_frame(out, start);
}

/// Appends a server `Event { seq, Message { from, text } }` frame (the relay's broadcast).
pub fn event_message(out: &mut Vec<u8>, seq: u64, from: &[u8], text: &[u8]) {
    let start = begin_frame(out);
    put_varint(out, SERVER_EVENT);
    put_varint(out, seq);
    put_varint(out, EVENT_MESSAGE);
    put_bytes(out, from);
    put_bytes(out, text);
    end_frame(out, start);
}

/// Appends a server `Event { seq, Joined { nick } }` frame.
pub fn event_joined(out: &mut Vec<u8>, seq: u64, nick: &[u8]) {
    let start = begin_frame(out);
    put_varint(out, SERVER_EVENT);
    put_varint(out, seq);
    put_varint(out, EVENT_JOINED);
    put_bytes(out, nick);
    end_frame(out, start);
}

/// Appends a server `Reply(Joined { users: [nick], more: 0, .. })` frame in the current
/// layout: a session ticket `(ticket_id, zeroes)`, epoch 1, sequence number `seq`, and no
/// flood limit (interval 0, burst `u32::MAX`).
pub fn reply_joined_alone(out: &mut Vec<u8>, nick: &[u8], ticket_id: u64, seq: u64) {
    let start = begin_frame(out);
    put_varint(out, SERVER_REPLY);
    put_varint(out, REPLY_JOINED);
    put_varint(out, 1);
    put_bytes(out, nick);
    put_varint(out, 0);
    put_varint(out, ticket_id);
    out.extend_from_slice(&[0; 16]);
    put_varint(out, 1);
    put_varint(out, seq);
    put_varint(out, 0);
    put_varint(out, u64::from(u32::MAX));
    end_frame(out, start);
}

/// Appends a server `Reply(Left)` frame.
pub fn reply_left(out: &mut Vec<u8>) {
    let start = begin_frame(out);
    put_varint(out, SERVER_REPLY);
    put_varint(out, REPLY_LEFT);
    end_frame(out, start);
}

/// Appends a server `Pong` frame.
pub fn server_pong(out: &mut Vec<u8>) {
    let start = begin_frame(out);
    put_varint(out, SERVER_PONG);
    end_frame(out, start);
}

/// A server message, borrowed from its frame; only the fields the bench checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// A room message from `from`.
    Message {
        /// Room sequence number.
        seq: u64,
        /// Sender's nick.
        from: &'a [u8],
        /// The text.
        text: &'a [u8],
    },
    /// Someone joined the room.
    Joined {
        /// Room sequence number.
        seq: u64,
    },
    /// Someone left the room.
    Left {
        /// Their nick.
        nick: &'a [u8],
        /// The reason's variant index (see [`leave_reason`]).
        reason: u64,
    },
    /// Any other event (private message, notice).
    OtherEvent,
    /// The answer to a join: how many members it lists, and how many more there are.
    JoinedReply {
        /// Nicks listed.
        listed: u64,
        /// Members not listed.
        more: u64,
    },
    /// Any other reply, by variant index.
    OtherReply(u64),
    /// A liveness ping (answer with a pong).
    Ping,
    /// A pong.
    Pong,
    /// The server is closing the session; the reason's variant index.
    Closing(u64),
}

/// Reads a server payload (without its header) in `layout`.
#[inline]
pub fn parse_server(payload: &[u8], layout: Layout) -> Result<ServerFrame<'_>, WireError> {
    let mut r = Reader(payload);
    let frame = match r.varint()? {
        SERVER_EVENT => {
            let seq = r.varint()?;
            match r.varint()? {
                EVENT_MESSAGE => {
                    let from = r.bytes()?;
                    let text = r.bytes()?;
                    ServerFrame::Message { seq, from, text }
                }
                EVENT_JOINED => {
                    r.bytes()?;
                    ServerFrame::Joined { seq }
                }
                EVENT_LEFT => {
                    let nick = r.bytes()?;
                    let reason = r.varint()?;
                    ServerFrame::Left { nick, reason }
                }
                _ => return Ok(ServerFrame::OtherEvent),
            }
        }
        SERVER_REPLY => match r.varint()? {
            REPLY_JOINED => {
                let listed = r.varint()?;
                for _ in 0..listed {
                    r.bytes()?;
                }
                let more = r.varint()?;
                if layout == Layout::Sessions {
                    // Ticket (id, 16 secret bytes), epoch, seq, limits (interval, burst).
                    r.varint()?;
                    r.array::<16>()?;
                    for _ in 0..4 {
                        r.varint()?;
                    }
                }
                ServerFrame::JoinedReply { listed, more }
            }
            other => return Ok(ServerFrame::OtherReply(other)),
        },
        SERVER_PING => ServerFrame::Ping,
        SERVER_PONG => ServerFrame::Pong,
        SERVER_CLOSING => return Ok(ServerFrame::Closing(r.varint()?)),
        _ => return Err(WireError::Malformed),
    };
    r.end()?;
    Ok(frame)
}

/// Words for a `LeaveReason` variant index, for logs.
pub fn leave_reason(index: u64) -> &'static str {
    match index {
        0 => "left",
        1 => "quit",
        2 => "connection lost",
        3 => "timed out",
        4 => "send queue exceeded",
        5 => "excess flood",
        6 => "protocol error",
        7 => "server shutting down",
        _ => "an unknown reason",
    }
}

/// A client message as the relay reads it, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// Join the room as `nick`.
    Join(&'a [u8]),
    /// Leave the room.
    Leave,
    /// Say `text` to the room.
    Say(&'a [u8]),
    /// Ping.
    Ping,
    /// Anything the relay ignores (pong, private message, user list).
    Ignored,
}

/// Reads a client payload (without its header) in the current layout.
pub fn parse_client(payload: &[u8]) -> Result<ClientFrame<'_>, WireError> {
    let mut r = Reader(payload);
    let frame = match r.varint()? {
        CLIENT_JOIN => {
            let nick = r.bytes()?;
            r.varint()?;
            ClientFrame::Join(nick)
        }
        CLIENT_LEAVE => ClientFrame::Leave,
        CLIENT_SAY => {
            r.varint()?;
            ClientFrame::Say(r.bytes()?)
        }
        CLIENT_PRIVATE => {
            r.varint()?;
            r.bytes()?;
            r.bytes()?;
            ClientFrame::Ignored
        }
        CLIENT_RESUME => {
            // Ticket (id, 16 secret bytes), epoch, last seq.
            r.varint()?;
            r.array::<16>()?;
            r.varint()?;
            r.varint()?;
            ClientFrame::Ignored
        }
        CLIENT_PING => ClientFrame::Ping,
        CLIENT_LIST_USERS | CLIENT_PONG => ClientFrame::Ignored,
        _ => return Err(WireError::Malformed),
    };
    r.end()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::codec;
    use protocol::message::{FloodLimits, SessionTicket};
    use protocol::{ClientMessage, Event, EventKind, LeaveReason, Reply, ServerMessage};

    fn frame_of<T: serde::Serialize>(message: &T) -> Vec<u8> {
        codec::encode_frame(message).unwrap().to_vec()
    }

    const EDGES: [u64; 9] = [
        0,
        250,
        251,
        65_535,
        65_536,
        u32::MAX as u64,
        u32::MAX as u64 + 1,
        1 << 40,
        u64::MAX,
    ];

    #[test]
    fn client_frames_match_the_protocol_encoding() {
        let mut out = Vec::new();
        join(&mut out, Layout::Sessions, "b17");
        let expected = ClientMessage::Join {
            nick: "b17".into(),
            backlog: 0,
        };
        assert_eq!(out, frame_of(&expected));
        let long = "x".repeat(300);
        out.clear();
        say(&mut out, Layout::Sessions, long.as_bytes());
        assert_eq!(out, frame_of(&ClientMessage::Say { id: 0, text: long }));
        out.clear();
        leave(&mut out);
        assert_eq!(out, frame_of(&ClientMessage::Leave));
        out.clear();
        pong(&mut out);
        assert_eq!(out, frame_of(&ClientMessage::Pong));
    }

    #[test]
    fn relay_frames_match_the_protocol_encoding() {
        for seq in EDGES {
            let mut out = Vec::new();
            event_message(&mut out, seq, b"b3", b"hello");
            let expected = ServerMessage::Event(Event {
                seq,
                kind: EventKind::Message {
                    from: "b3".into(),
                    text: "hello".into(),
                },
            });
            assert_eq!(out, frame_of(&expected), "seq {seq}");
            out.clear();
            event_joined(&mut out, seq, b"b4");
            let expected = ServerMessage::Event(Event {
                seq,
                kind: EventKind::Joined { nick: "b4".into() },
            });
            assert_eq!(out, frame_of(&expected), "seq {seq}");
        }
        let mut out = Vec::new();
        reply_joined_alone(&mut out, b"b5", 300, 70_000);
        let expected = ServerMessage::Reply(Reply::Joined {
            users: vec!["b5".into()],
            more: 0,
            ticket: SessionTicket {
                id: 300,
                secret: [0; 16],
            },
            epoch: 1,
            seq: 70_000,
            limits: FloodLimits {
                interval_us: 0,
                burst: u32::MAX,
            },
        });
        assert_eq!(out, frame_of(&expected));
        out.clear();
        reply_left(&mut out);
        assert_eq!(out, frame_of(&ServerMessage::Reply(Reply::Left)));
        out.clear();
        server_pong(&mut out);
        assert_eq!(out, frame_of(&ServerMessage::Pong));
    }

    fn parsed(message: &ServerMessage) -> ServerFrame<'static> {
        let frame = frame_of(message).leak();
        let (payload, used) = split_frame(frame).unwrap().unwrap();
        assert_eq!(used, frame.len());
        parse_server(payload, Layout::Sessions).unwrap()
    }

    #[test]
    fn server_messages_are_read_from_the_protocol_encoding() {
        for seq in EDGES {
            let message = ServerMessage::Event(Event {
                seq,
                kind: EventKind::Message {
                    from: "ann".into(),
                    text: "y".repeat(260),
                },
            });
            let ServerFrame::Message {
                seq: got,
                from,
                text,
            } = parsed(&message)
            else {
                panic!("not a message");
            };
            assert_eq!((got, from, text.len()), (seq, &b"ann"[..], 260));
        }
        let joined = ServerMessage::Event(Event {
            seq: 9,
            kind: EventKind::Joined { nick: "bob".into() },
        });
        assert_eq!(parsed(&joined), ServerFrame::Joined { seq: 9 });
        let left = ServerMessage::Event(Event {
            seq: 10,
            kind: EventKind::Left {
                nick: "bob".into(),
                reason: LeaveReason::SendQueueExceeded,
            },
        });
        let ServerFrame::Left { nick, reason } = parsed(&left) else {
            panic!("not a left event");
        };
        assert_eq!(
            (nick, leave_reason(reason)),
            (&b"bob"[..], "send queue exceeded")
        );
        let users: Vec<String> = (0..300).map(|i| format!("u{i}")).collect();
        let reply = ServerMessage::Reply(Reply::Joined {
            users,
            more: 70_000,
            ticket: SessionTicket {
                id: u64::MAX,
                secret: [0xff; 16],
            },
            epoch: 1 << 40,
            seq: 1 << 33,
            limits: FloodLimits {
                interval_us: 100_000,
                burst: 20,
            },
        });
        assert_eq!(
            parsed(&reply),
            ServerFrame::JoinedReply {
                listed: 300,
                more: 70_000
            }
        );
        assert_eq!(
            parsed(&ServerMessage::Reply(Reply::SlowDown)),
            ServerFrame::OtherReply(10)
        );
        assert_eq!(parsed(&ServerMessage::Ping), ServerFrame::Ping);
        let closing = ServerMessage::Closing {
            reason: LeaveReason::ServerShutdown,
        };
        assert_eq!(parsed(&closing), ServerFrame::Closing(7));
        let notice = ServerMessage::Event(Event {
            seq: 1,
            kind: EventKind::Notice { text: "hi".into() },
        });
        assert_eq!(parsed(&notice), ServerFrame::OtherEvent);
    }

    #[test]
    fn client_messages_are_read_from_the_protocol_encoding() {
        let read = |m: &ClientMessage| {
            let frame = frame_of(m).leak();
            parse_client(&frame[HEADER_LEN..]).unwrap()
        };
        assert_eq!(
            read(&ClientMessage::Join {
                nick: "b1".into(),
                backlog: 10
            }),
            ClientFrame::Join(b"b1")
        );
        assert_eq!(
            read(&ClientMessage::Say {
                id: 300,
                text: "hi".into()
            }),
            ClientFrame::Say(b"hi")
        );
        assert_eq!(read(&ClientMessage::Leave), ClientFrame::Leave);
        assert_eq!(read(&ClientMessage::Ping), ClientFrame::Ping);
        let resume = ClientMessage::Resume {
            ticket: SessionTicket {
                id: 1,
                secret: [9; 16],
            },
            epoch: 2,
            last_seq: 3,
        };
        assert_eq!(read(&resume), ClientFrame::Ignored);
        let private = ClientMessage::Private {
            id: 1,
            to: "a".into(),
            text: "b".into(),
        };
        assert_eq!(read(&private), ClientFrame::Ignored);
        assert_eq!(read(&ClientMessage::ListUsers), ClientFrame::Ignored);
    }

    #[test]
    fn the_original_layout_is_kept_for_older_servers() {
        // Frames of the messages before sessions, as older builds encode them.
        let mut out = Vec::new();
        join(&mut out, Layout::Original, "b17");
        assert_eq!(out, [0, 0, 0, 5, 0, 3, b'b', b'1', b'7']);
        out.clear();
        say(&mut out, Layout::Original, b"hi");
        assert_eq!(out, [0, 0, 0, 4, 2, 2, b'h', b'i']);
        let joined = [0, 0, 2, 2, b'b', b'5', 1, b'c', 251, 0x70, 0x11];
        assert_eq!(
            parse_server(&joined, Layout::Original),
            Ok(ServerFrame::JoinedReply {
                listed: 2,
                more: 0x1170
            })
        );
        assert_eq!(
            parse_server(&joined, Layout::Sessions),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn damaged_frames_are_refused() {
        assert_eq!(split_frame(&[0, 0, 0]), Ok(None));
        assert_eq!(split_frame(&[0, 0, 0, 3, 1]), Ok(None));
        assert_eq!(split_frame(&[0, 1, 0, 1]), Err(WireError::TooLong(65_537)));
        let parse = |payload| parse_server(payload, Layout::Sessions);
        assert_eq!(parse(&[]), Err(WireError::Malformed));
        assert_eq!(parse(&[1, 5, 0, 200]), Err(WireError::Malformed));
        assert_eq!(parse(&[2, 0]), Err(WireError::Malformed));
        assert_eq!(parse(&[9]), Err(WireError::Malformed));
        assert_eq!(parse_client(&[2, 254]), Err(WireError::Malformed));
    }
}
