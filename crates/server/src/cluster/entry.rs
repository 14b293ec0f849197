//! The entries of a room's stream: what each holds, and how it is read back from Redis.
//!
//! The scripts (`scripts.rs`) write every entry with the ID `SEQ-0` and these fields:
//!
//! | field | meaning                                                                 |
//! |-------|-------------------------------------------------------------------------|
//! | `e`   | the room epoch it was written in                                        |
//! | `k`   | kind: `m` message, `v` private, `n` notice, `p` presence, `c` control   |
//! | `a`   | audience: `rS` the room except session S (0: nobody), `oS` session S alone, `-` none |
//! | `o`   | the node that wrote it                                                  |
//! | `s`   | the session it is from (0: the server), or the one a presence or control entry is about |
//! | `i`   | the client's message id (0: none), for the origin node's acknowledgement |
//! | `d`   | the encoded event, opaque here (the caller's encoding, without the sequence number) |
//! | `j`   | presence: `1` joined, `0` left                                          |
//! | `u`   | presence: the nick                                                      |
//! | `c`   | control: `takeover`                                                     |
//! | `f`   | control: the node the session was taken from                            |
//!
//! An entry whose fields make no sense here keeps its place as
//! [`LogBody::Unreadable`]: readers see that a number was used and by what, never a gap
//! or a panic. Sizes are bounded before anything is kept.

use bytes::Bytes;
use protocol::limits::{MAX_FRAME_LEN, MAX_NICK_LEN};
use redis::Value;

use super::error::{ClusterError, escape_bytes};
use super::reply::{self, malformed};
use crate::history::{Audience, EntryKind, SessionId};

/// Longest node id accepted from Redis.
pub(crate) const MAX_NODE_ID_LEN: usize = 300;

/// Most fields an entry may have.
const MAX_FIELDS: usize = 32;

/// Who wrote an entry, for whom it speaks, and which client message it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The id of the node that appended it.
    pub node: String,
    /// The session it is from ([`crate::history::SERVER_SESSION`] for the server).
    pub session: SessionId,
    /// The client's message id (0: none).
    pub msg_id: u64,
}

/// A change of the room's membership, written in the same step as the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// `session` joined (or came back) as `nick`.
    Joined {
        /// The session.
        session: SessionId,
        /// Its nick.
        nick: String,
    },
    /// `session`, known as `nick`, left.
    Left {
        /// The session.
        session: SessionId,
        /// Its nick.
        nick: String,
    },
}

/// A room event as kept in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEntry {
    /// What it is.
    pub kind: EntryKind,
    /// Who receives it.
    pub audience: Audience,
    /// The encoded event (the caller's encoding).
    pub payload: Bytes,
    /// Where it came from.
    pub origin: Origin,
    /// For presence entries: the membership change.
    pub presence: Option<Presence>,
}

/// An instruction to the nodes, ordered with the events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `session` moved from node `from` to node `to` (a resume there): `from` closes
    /// its stale connection of that session without telling the room.
    TakenOver {
        /// The session.
        session: SessionId,
        /// The node that held it.
        from: String,
        /// The node that holds it now.
        to: String,
    },
}

/// What an entry holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogBody {
    /// A room event.
    Event(RoomEntry),
    /// An instruction to the nodes.
    Control(Control),
    /// Something this node cannot read (written by something else, or damaged); its
    /// number is used, its content is not delivered. The text says why (escaped).
    Unreadable(String),
}

/// One entry of the room's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number: gap-free and increasing within an epoch.
    pub seq: u64,
    /// What it holds.
    pub body: LogBody,
}

impl LogEntry {
    /// The room event, if it is one.
    pub fn event(&self) -> Option<&RoomEntry> {
        match &self.body {
            LogBody::Event(event) => Some(event),
            _ => None,
        }
    }
}

/// The kinds of event [`crate::cluster::Cluster::append`] takes; presence entries are
/// written by join, depart and take-over, in the same step as the membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendKind {
    /// Something said to the room.
    Message,
    /// A private message.
    Private,
    /// A server notice.
    Notice,
}

impl AppendKind {
    pub(crate) fn code(self) -> &'static str {
        match self {
            AppendKind::Message => "m",
            AppendKind::Private => "v",
            AppendKind::Notice => "n",
        }
    }
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What it is.
    pub kind: AppendKind,
    /// Who receives it.
    pub audience: Audience,
    /// The session it is from ([`crate::history::SERVER_SESSION`] for the server); a
    /// member's session must be held by this node and in the room.
    pub session: SessionId,
    /// The client's message id (0: none). Ids of a session must grow; a repeated one is
    /// not appended again.
    pub msg_id: u64,
    /// The encoded event.
    pub payload: Bytes,
}

/// How an audience is written in field `a`.
pub(crate) fn audience_code(audience: Audience) -> String {
    match audience {
        Audience::Room { except } => format!("r{except}"),
        Audience::One(to) => format!("o{to}"),
    }
}

fn parse_audience(text: &[u8]) -> Option<Audience> {
    let (tag, number) = text.split_first()?;
    let session = reply::parse_u64(number)?;
    match tag {
        b'r' => Some(Audience::Room { except: session }),
        b'o' => Some(Audience::One(session)),
        _ => None,
    }
}

/// A stream entry ID, `MS-SUB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) sub: u64,
}

impl StreamId {
    fn parse(text: &[u8]) -> Option<Self> {
        let dash = text.iter().position(|&b| b == b'-')?;
        Some(Self {
            ms: reply::parse_u64(&text[..dash])?,
            sub: reply::parse_u64(&text[dash + 1..])?,
        })
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.sub)
    }
}

/// One stream entry as read.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// One of ours (`SEQ-0`).
    Entry(LogEntry),
    /// An ID we did not write (`SEQ-N`, N > 0): skipped, but the reader moves past it.
    Foreign(StreamId),
}

impl Parsed {
    pub(crate) fn id(&self) -> StreamId {
        match self {
            Parsed::Entry(entry) => StreamId {
                ms: entry.seq,
                sub: 0,
            },
            Parsed::Foreign(id) => *id,
        }
    }
}

/// Reads the entries of an `XRANGE`/`XREVRANGE` answer (or one stream of an `XREAD`),
/// checking each against `epoch`.
pub(crate) fn parse_entries(value: Value, epoch: u64) -> Result<Vec<Parsed>, ClusterError> {
    match value {
        Value::Array(entries) => entries
            .into_iter()
            .map(|entry| parse_entry(entry, epoch))
            .collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(malformed("a list of stream entries", &other)),
    }
}

/// Reads one `[ID, [field, value, ...]]`. An entry written in another epoch means Redis
/// lost the room: [`ClusterError::EpochChanged`].
pub(crate) fn parse_entry(value: Value, epoch: u64) -> Result<Parsed, ClusterError> {
    let Value::Array(parts) = value else {
        return Err(malformed("a stream entry", &value));
    };
    let mut parts = parts.into_iter();
    let (Some(id), Some(fields), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(ClusterError::Malformed(
            "expected a stream entry of an ID and its fields".to_string(),
        ));
    };
    let id = reply::bytes(&id)
        .and_then(StreamId::parse)
        .ok_or_else(|| malformed("a stream entry ID", &id))?;
    if id.sub != 0 {
        return Ok(Parsed::Foreign(id));
    }
    let fields = match fields {
        Value::Array(flat) => pairs(flat),
        Value::Map(map) => Some(map),
        _ => None,
    };
    let body = match fields {
        Some(fields) if fields.len() <= MAX_FIELDS => read_body(fields, epoch)?,
        _ => LogBody::Unreadable("its fields are not a short list of pairs".to_string()),
    };
    Ok(Parsed::Entry(LogEntry { seq: id.ms, body }))
}

fn pairs(flat: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !flat.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// The fields of one entry, by their one-letter names.
#[derive(Default)]
struct Fields {
    e: Option<Vec<u8>>,
    k: Option<Vec<u8>>,
    a: Option<Vec<u8>>,
    o: Option<Vec<u8>>,
    s: Option<Vec<u8>>,
    i: Option<Vec<u8>>,
    d: Option<Vec<u8>>,
    j: Option<Vec<u8>>,
    u: Option<Vec<u8>>,
    c: Option<Vec<u8>>,
    f: Option<Vec<u8>>,
}

fn read_body(pairs: Vec<(Value, Value)>, epoch: u64) -> Result<LogBody, ClusterError> {
    let mut fields = Fields::default();
    for (name, value) in pairs {
        let Value::BulkString(value) = value else {
            return Ok(LogBody::Unreadable("a field is not a string".to_string()));
        };
        let slot = match reply::bytes(&name) {
            Some(b"e") => &mut fields.e,
            Some(b"k") => &mut fields.k,
            Some(b"a") => &mut fields.a,
            Some(b"o") => &mut fields.o,
            Some(b"s") => &mut fields.s,
            Some(b"i") => &mut fields.i,
            Some(b"d") => &mut fields.d,
            Some(b"j") => &mut fields.j,
            Some(b"u") => &mut fields.u,
            Some(b"c") => &mut fields.c,
            Some(b"f") => &mut fields.f,
            _ => continue,
        };
        *slot = Some(value);
    }
    match fields.e.as_deref().and_then(reply::parse_u64) {
        Some(found) if found == epoch => {}
        Some(found) => {
            return Err(ClusterError::EpochChanged {
                expected: epoch,
                found: Some(found),
            });
        }
        None => return Ok(LogBody::Unreadable("it has no epoch".to_string())),
    }
    Ok(body_of(fields).unwrap_or_else(LogBody::Unreadable))
}

fn body_of(fields: Fields) -> Result<LogBody, String> {
    let node = text(fields.o, MAX_NODE_ID_LEN, "node")?;
    let session = number(fields.s.as_deref(), "session")?;
    let kind = fields.k.unwrap_or_default();
    if kind == b"c" {
        return match fields.c.as_deref() {
            Some(b"takeover") => Ok(LogBody::Control(Control::TakenOver {
                session,
                from: text(fields.f, MAX_NODE_ID_LEN, "from-node")?,
                to: node,
            })),
            other => Err(format!(
                "unknown control {}",
                escape_bytes(other.unwrap_or_default())
            )),
        };
    }
    let kind = match kind.as_slice() {
        b"m" => EntryKind::Message,
        b"v" => EntryKind::Private,
        b"n" => EntryKind::Notice,
        b"p" => EntryKind::Presence,
        other => return Err(format!("unknown kind {}", escape_bytes(other))),
    };
    let audience = fields
        .a
        .as_deref()
        .and_then(parse_audience)
        .ok_or("no audience")?;
    let payload = fields.d.ok_or("no payload")?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(format!("a payload of {} bytes", payload.len()));
    }
    let presence = if kind == EntryKind::Presence {
        let nick = text(fields.u, MAX_NICK_LEN, "nick")?;
        match fields.j.as_deref() {
            Some(b"1") => Some(Presence::Joined { session, nick }),
            Some(b"0") => Some(Presence::Left { session, nick }),
            _ => return Err("a presence entry without its change".to_string()),
        }
    } else {
        None
    };
    Ok(LogBody::Event(RoomEntry {
        kind,
        audience,
        payload: Bytes::from(payload),
        origin: Origin {
            node,
            session,
            msg_id: number(fields.i.as_deref(), "message id")?,
        },
        presence,
    }))
}

fn text(value: Option<Vec<u8>>, max: usize, what: &str) -> Result<String, String> {
    let value = value.ok_or_else(|| format!("no {what}"))?;
    if value.len() > max {
        return Err(format!("a {what} of {} bytes", value.len()));
    }
    String::from_utf8(value).map_err(|_| format!("a {what} that is not UTF-8"))
}

fn number(value: Option<&[u8]>, what: &str) -> Result<u64, String> {
    value
        .and_then(reply::parse_u64)
        .ok_or_else(|| format!("no {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &[u8]) -> Value {
        Value::BulkString(text.to_vec())
    }

    fn entry(id: &[u8], fields: &[(&[u8], &[u8])]) -> Value {
        let flat = fields
            .iter()
            .flat_map(|(k, v)| [bulk(k), bulk(v)])
            .collect();
        Value::Array(vec![bulk(id), Value::Array(flat)])
    }

    const SAY: &[(&[u8], &[u8])] = &[
        (b"e", b"7"),
        (b"k", b"m"),
        (b"a", b"r3"),
        (b"o", b"a#1"),
        (b"s", b"3"),
        (b"i", b"9"),
        (b"d", b"hi"),
    ];

    fn body(value: Value) -> LogBody {
        match parse_entry(value, 7) {
            Ok(Parsed::Entry(entry)) => entry.body,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[test]
    fn an_entry_reads_back_with_its_number_and_fields() {
        let LogBody::Event(event) = body(entry(b"42-0", SAY)) else {
            panic!("not an event");
        };
        assert_eq!(event.kind, EntryKind::Message);
        assert_eq!(event.audience, Audience::Room { except: 3 });
        assert_eq!(event.origin.msg_id, 9);
        assert_eq!(&event.payload[..], b"hi");
    }

    #[test]
    fn damaged_entries_keep_their_place_as_unreadable() {
        let mut missing = SAY.to_vec();
        missing.retain(|(k, _)| *k != b"a");
        assert!(matches!(
            body(entry(b"1-0", &missing)),
            LogBody::Unreadable(_)
        ));
        let mut bad_kind = SAY.to_vec();
        bad_kind[1] = (b"k", b"\x1b[2J");
        let LogBody::Unreadable(why) = body(entry(b"1-0", &bad_kind)) else {
            panic!("read a bad kind");
        };
        assert!(!why.contains('\x1b'), "escaped: {why}");
        let huge = vec![0u8; MAX_FRAME_LEN + 1];
        let mut too_big = SAY.to_vec();
        too_big[6] = (b"d", &huge);
        assert!(matches!(
            body(entry(b"1-0", &too_big)),
            LogBody::Unreadable(_)
        ));
        let odd = Value::Array(vec![bulk(b"1-0"), Value::Array(vec![bulk(b"e")])]);
        assert!(matches!(body(odd), LogBody::Unreadable(_)));
        let no_epoch: Vec<_> = SAY.iter().copied().filter(|(k, _)| *k != b"e").collect();
        assert!(matches!(
            body(entry(b"1-0", &no_epoch)),
            LogBody::Unreadable(_)
        ));
    }

    #[test]
    fn another_epoch_foreign_ids_and_bad_shapes_are_told_apart() {
        let mut other_epoch = SAY.to_vec();
        other_epoch[0] = (b"e", b"8");
        assert_eq!(
            parse_entry(entry(b"1-0", &other_epoch), 7).unwrap_err(),
            ClusterError::EpochChanged {
                expected: 7,
                found: Some(8)
            }
        );
        assert!(matches!(
            parse_entry(entry(b"5-1", SAY), 7),
            Ok(Parsed::Foreign(StreamId { ms: 5, sub: 1 }))
        ));
        for bad in [
            Value::Nil,
            Value::Int(3),
            Value::Array(vec![]),
            Value::Array(vec![bulk(b"x-0"), Value::Array(vec![])]),
            Value::Array(vec![bulk(b"-1-0"), Value::Array(vec![])]),
            Value::Array(vec![
                bulk(b"99999999999999999999999-0"),
                Value::Array(vec![]),
            ]),
        ] {
            assert!(
                matches!(parse_entry(bad.clone(), 7), Err(ClusterError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
