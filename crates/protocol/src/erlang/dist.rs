//! Erlang distribution after the handshake: frames, ticks and control messages.
//!
//! Every frame is a 4-byte big-endian length and that many bytes. A zero-length frame is
//! a *tick* (a keep-alive). Anything else, since we offer neither the atom cache nor
//! fragments, is a pass-through message: the byte 112, a control term (a tuple whose
//! first element is the operation) and, for operations that carry one, a message term,
//! each with its version byte. A frame longer than the limit is refused from its length
//! prefix alone.

use bytes::{Buf, Bytes, BytesMut};

use super::term::{self, Atom, Limits, Pid, Reference, Term, TermError};
use crate::limits::MAX_FRAME_LEN;

/// The byte that opens a pass-through message.
pub const PASS_THROUGH: u8 = 112;

/// A tick: an empty frame.
pub const TICK: [u8; 4] = [0; 4];

/// Control operations (the first element of the control tuple).
pub mod op {
    /// `{1, FromPid, ToPid}`
    pub const LINK: i64 = 1;
    /// `{2, Unused, ToPid}` + message
    pub const SEND: i64 = 2;
    /// `{3, FromPid, ToPid, Reason}`
    pub const EXIT: i64 = 3;
    /// `{4, FromPid, ToPid}`
    pub const UNLINK: i64 = 4;
    /// `{6, FromPid, Unused, ToName}` + message
    pub const REG_SEND: i64 = 6;
    /// `{8, FromPid, ToPid, Reason}`
    pub const EXIT2: i64 = 8;
    /// `{12, Unused, ToPid, TraceToken}` + message
    pub const SEND_TT: i64 = 12;
    /// `{16, FromPid, Unused, ToName, TraceToken}` + message
    pub const REG_SEND_TT: i64 = 16;
    /// `{19, FromPid, ToProc, Ref}`
    pub const MONITOR_P: i64 = 19;
    /// `{20, FromPid, ToProc, Ref}`
    pub const DEMONITOR_P: i64 = 20;
    /// `{22, FromPid, ToPid}` + message
    pub const SEND_SENDER: i64 = 22;
    /// `{23, FromPid, ToPid, TraceToken}` + message
    pub const SEND_SENDER_TT: i64 = 23;
    /// `{33, FromPid, Alias}` + message
    pub const ALIAS_SEND: i64 = 33;
    /// `{34, FromPid, Alias, TraceToken}` + message
    pub const ALIAS_SEND_TT: i64 = 34;
    /// `{35, Id, FromPid, ToPid}`
    pub const UNLINK_ID: i64 = 35;
    /// `{36, Id, FromPid, ToPid}`
    pub const UNLINK_ID_ACK: i64 = 36;
    /// Highest operation number of OTP 25 (`ALIAS_SEND_TT`..`UNLINK_ID_ACK`).
    pub const HIGHEST: i64 = 36;
}

/// Why a frame is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DistError {
    /// The length prefix exceeds the frame limit.
    #[error("distribution frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    /// Not a pass-through frame (atom-cache headers and fragments are not offered).
    #[error("unexpected distribution header {0}")]
    BadHeader(u8),
    /// A term in the frame is not acceptable.
    #[error("bad term in a distribution frame: {0}")]
    Term(#[from] TermError),
    /// The control term is not a tuple starting with a known operation.
    #[error("bad control message: {0}")]
    BadControl(&'static str),
    /// Bytes left after the message term.
    #[error("{0} trailing bytes after the distribution message")]
    Trailing(usize),
}

/// Takes one whole frame's payload out of `buf`, if one is there. `Some` of an empty
/// payload is a tick. The limit is checked on the length prefix, before anything is
/// buffered for the frame.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, DistError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DistError::FrameTooLarge(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len)))
}

/// One message: its control part and, when the operation carries one, the message.
#[derive(Debug, Clone, PartialEq)]
pub struct DistMessage {
    /// What the control term asks for.
    pub control: Control,
    /// The message term, for operations that carry one.
    pub message: Option<Term>,
}

/// The control operations this crate tells apart; others are [`Control::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// A message to a process (`SEND`, `SEND_SENDER` and their trace-token forms).
    Send {
        /// The recipient.
        to: Pid,
    },
    /// A message to a locally registered name (`REG_SEND`, `REG_SEND_TT`).
    RegSend {
        /// The sender.
        from: Pid,
        /// The registered name.
        to: Atom,
    },
    /// A message to a process alias (`ALIAS_SEND`, `ALIAS_SEND_TT`).
    AliasSend {
        /// The sender.
        from: Pid,
        /// The alias.
        alias: Reference,
    },
    /// Any other operation of OTP 25 (links, exits, monitors...), with its number.
    Other {
        /// The operation.
        op: i64,
    },
}

/// Parses one non-empty frame payload (not a tick).
pub fn parse_message(payload: &[u8]) -> Result<DistMessage, DistError> {
    let limits = Limits::default();
    let (&header, rest) = payload
        .split_first()
        .ok_or(DistError::BadControl("empty"))?;
    if header != PASS_THROUGH {
        return Err(DistError::BadHeader(header));
    }
    let (control, used) = term::decode_versioned_with(rest, limits)?;
    let rest = &rest[used..];
    let message = if rest.is_empty() {
        None
    } else {
        let (message, used) = term::decode_versioned_with(rest, limits)?;
        if used != rest.len() {
            return Err(DistError::Trailing(rest.len() - used));
        }
        Some(message)
    };
    let control = Control::from_term(&control)?;
    Ok(DistMessage { control, message })
}

impl Control {
    /// Classifies a control tuple.
    pub fn from_term(term: &Term) -> Result<Self, DistError> {
        let items = term
            .as_tuple()
            .ok_or(DistError::BadControl("not a tuple"))?;
        let op = items
            .first()
            .and_then(Term::as_int)
            .ok_or(DistError::BadControl("no operation"))?;
        let pid = |i: usize| -> Result<Pid, DistError> {
            items
                .get(i)
                .and_then(Term::as_pid)
                .cloned()
                .ok_or(DistError::BadControl("expected a pid"))
        };
        Ok(match op {
            op::SEND | op::SEND_TT => Self::Send { to: pid(2)? },
            op::SEND_SENDER | op::SEND_SENDER_TT => Self::Send { to: pid(2)? },
            op::REG_SEND | op::REG_SEND_TT => {
                let to = match items.get(3) {
                    Some(Term::Atom(name)) => name.clone(),
                    _ => return Err(DistError::BadControl("expected a registered name")),
                };
                Self::RegSend { from: pid(1)?, to }
            }
            op::ALIAS_SEND | op::ALIAS_SEND_TT => match items.get(2) {
                Some(Term::Ref(alias)) => Self::AliasSend {
                    from: pid(1)?,
                    alias: (**alias).clone(),
                },
                _ => return Err(DistError::BadControl("expected an alias")),
            },
            1..=op::HIGHEST => Self::Other { op },
            _ => return Err(DistError::BadControl("unknown operation")),
        })
    }
}

/// Appends a whole frame (length, 112, control, optional message) to `out`.
pub fn encode_frame(control: &Term, message: Option<&Term>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(PASS_THROUGH);
    term::encode_versioned(control, out);
    if let Some(message) = message {
        term::encode_versioned(message, out);
    }
    let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A frame sending `message` to the process `to` (`SEND`).
pub fn send(to: &Pid, message: &Term) -> Bytes {
    let control = Term::tuple(vec![
        Term::Int(op::SEND),
        Term::atom(""),
        Term::Pid(Box::new(to.clone())),
    ]);
    let mut out = Vec::new();
    encode_frame(&control, Some(message), &mut out);
    out.into()
}

/// A frame sending `message` from `from` to the process registered as `to` on the peer
/// (`REG_SEND`).
pub fn reg_send(from: &Pid, to: &str, message: &Term) -> Bytes {
    let mut out = Vec::new();
    encode_frame(&reg_send_control(from, to), Some(message), &mut out);
    out.into()
}

/// The control term of [`reg_send`]: the same for every message from `from` to `to`.
pub fn reg_send_control(from: &Pid, to: &str) -> Term {
    Term::tuple(vec![
        Term::Int(op::REG_SEND),
        Term::Pid(Box::new(from.clone())),
        Term::atom(""),
        Term::atom(to),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(node: &str) -> Pid {
        Pid {
            node: Atom::new(node).unwrap(),
            id: 1,
            serial: 0,
            creation: 3,
        }
    }

    #[test]
    fn frames_split_at_their_length_and_ticks_are_empty() {
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 0, 0, 0, 2, 112][..]);
        assert_eq!(split_frame(&mut buf).unwrap().unwrap().len(), 0);
        assert_eq!(split_frame(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[131]);
        assert_eq!(&split_frame(&mut buf).unwrap().unwrap()[..], &[112, 131]);
        assert!(buf.is_empty());
        let mut huge = BytesMut::from(&[0, 2, 0, 0][..]);
        assert_eq!(
            split_frame(&mut huge),
            Err(DistError::FrameTooLarge(0x20000))
        );
    }

    #[test]
    fn reg_send_round_trips() {
        let message = Term::tuple(vec![Term::atom("$gen_cast"), Term::atom("hi")]);
        let frame = reg_send(&pid("server@localhost"), "message_handler", &message);
        let mut buf = BytesMut::from(&frame[..]);
        let payload = split_frame(&mut buf).unwrap().unwrap();
        let parsed = parse_message(&payload).unwrap();
        assert_eq!(
            parsed.control,
            Control::RegSend {
                from: pid("server@localhost"),
                to: Atom::new("message_handler").unwrap()
            }
        );
        assert_eq!(parsed.message, Some(message));
    }

    #[test]
    fn send_round_trips() {
        let frame = send(&pid("c@h"), &Term::atom("ok"));
        let parsed = parse_message(&frame[4..]).unwrap();
        assert_eq!(parsed.control, Control::Send { to: pid("c@h") });
        assert_eq!(parsed.message, Some(Term::atom("ok")));
    }

    #[test]
    fn bad_frames_are_refused() {
        assert_eq!(parse_message(&[68]), Err(DistError::BadHeader(68)));
        assert!(matches!(
            parse_message(&[112, 131, 97, 1]),
            Err(DistError::BadControl(_))
        ));
        // Unknown operation.
        assert!(matches!(
            parse_message(&[112, 131, 104, 1, 97, 99]),
            Err(DistError::BadControl(_))
        ));
        // A monitor is known and passed on as Other.
        let mut monitor = vec![112];
        term::encode_versioned(
            &Term::tuple(vec![
                Term::Int(op::MONITOR_P),
                Term::Pid(Box::new(pid("a@b"))),
                Term::atom("message_server"),
                Term::Nil,
            ]),
            &mut monitor,
        );
        assert_eq!(
            parse_message(&monitor).unwrap().control,
            Control::Other { op: op::MONITOR_P }
        );
        monitor.extend_from_slice(&[131, 106, 0]);
        assert_eq!(parse_message(&monitor), Err(DistError::Trailing(1)));
    }
}
