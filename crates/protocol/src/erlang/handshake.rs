//! Erlang's distribution handshake, version 6 (OTP 23+), as two state machines: the
//! [`Acceptor`] (a BEAM connects to chat-server) and the [`Initiator`] (chat-client
//! connects to a BEAM). No I/O: the caller moves the bytes.
//!
//! Every handshake message is a 2-byte big-endian length and a body:
//!
//! ```text
//! initiator -> acceptor  send_name       'N' flags:u64 creation:u32 nlen:u16 name
//! acceptor -> initiator  recv_status     's' "ok" | "nok" | "not_allowed" | "alive" ...
//! acceptor -> initiator  send_challenge  'N' flags:u64 challenge:u32 creation:u32 nlen:u16 name
//! initiator -> acceptor  challenge_reply 'r' challenge:u32 digest:16
//! acceptor -> initiator  challenge_ack   'a' digest:16
//! ```
//!
//! A digest is `MD5(cookie ++ decimal text of the other side's challenge)`, as every BEAM
//! computes it; digests are compared in constant time. This authenticates both ends with
//! the cookie; nothing is encrypted. We connect and accept as a *hidden* node (no
//! `PUBLISHED` flag), so a BEAM sends us none of its `global` or `rex` traffic.

use bytes::{Buf, BytesMut};
use md5::{Digest, Md5};

use crate::cookie::Cookie;
use crate::name::NodeName;

/// Flag bits of the distribution protocol (OTP's `dist.hrl`).
pub mod flags {
    /// The node is visible (not hidden).
    pub const PUBLISHED: u64 = 0x01;
    /// The atom cache (not offered).
    pub const ATOM_CACHE: u64 = 0x02;
    /// Extended references.
    pub const EXTENDED_REFERENCES: u64 = 0x04;
    /// Remote process monitors.
    pub const DIST_MONITOR: u64 = 0x08;
    /// Fun tags.
    pub const FUN_TAGS: u64 = 0x10;
    /// New fun tags.
    pub const NEW_FUN_TAGS: u64 = 0x80;
    /// Extended pids and ports.
    pub const EXTENDED_PIDS_PORTS: u64 = 0x100;
    /// Export pointer tags.
    pub const EXPORT_PTR_TAG: u64 = 0x200;
    /// Bit binaries.
    pub const BIT_BINARIES: u64 = 0x400;
    /// IEEE floats.
    pub const NEW_FLOATS: u64 = 0x800;
    /// The distribution header with atom cache (not offered: we want pass-through).
    pub const DIST_HDR_ATOM_CACHE: u64 = 0x2000;
    /// UTF-8 atoms.
    pub const UTF8_ATOMS: u64 = 0x1_0000;
    /// Maps.
    pub const MAP_TAG: u64 = 0x2_0000;
    /// 32-bit creations.
    pub const BIG_CREATION: u64 = 0x4_0000;
    /// Fragmented messages (not offered).
    pub const FRAGMENTS: u64 = 0x80_0000;
    /// The version 6 handshake.
    pub const HANDSHAKE_23: u64 = 0x100_0000;
    /// Unlink with identifiers.
    pub const UNLINK_ID: u64 = 0x200_0000;
    /// Shorthand for every flag OTP 25 made mandatory: bit 26 (a Rust crate, erl_dist 0.8,
    /// puts it at bit 36, which OTP 27 would refuse).
    pub const MANDATORY_25_DIGEST: u64 = 0x400_0000;
    /// 64-bit pids and ports, new creations.
    pub const V4_NC: u64 = 1 << 34;

    /// What OTP 25 requires of a peer, one by one (or [`MANDATORY_25_DIGEST`]).
    pub const MANDATORY_25: u64 = EXTENDED_REFERENCES
        | FUN_TAGS
        | EXTENDED_PIDS_PORTS
        | NEW_FUN_TAGS
        | EXPORT_PTR_TAG
        | BIT_BINARIES
        | NEW_FLOATS
        | UTF8_ATOMS
        | MAP_TAG
        | BIG_CREATION
        | HANDSHAKE_23;

    /// What we offer: the mandatory set spelled out and as the digest bit, plus
    /// `UNLINK_ID` and `V4_NC`; hidden (no `PUBLISHED`), no atom cache, no fragments.
    pub const OFFERED: u64 = MANDATORY_25 | MANDATORY_25_DIGEST | UNLINK_ID | V4_NC;

    /// Whether a peer offering `peer` speaks what we need.
    pub fn acceptable(peer: u64) -> bool {
        peer & MANDATORY_25 == MANDATORY_25 || peer & MANDATORY_25_DIGEST != 0
    }
}

/// Longest handshake message accepted (a name is at most 255 bytes).
pub const MAX_MESSAGE_LEN: usize = 1024;

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// A message that is not what this step expects, or malformed.
    #[error("bad handshake message: {0}")]
    Malformed(&'static str),
    /// The peer does not speak version 6 (OTP 23+).
    #[error("the peer does not speak distribution version 6 (OTP 23 or later)")]
    OldVersion,
    /// The peer lacks flags OTP 25 made mandatory.
    #[error("the peer lacks mandatory distribution flags (offered {0:#x})")]
    MissingFlags(u64),
    /// The peer's name is not a node name.
    #[error("the peer's node name is invalid")]
    BadName,
    /// The peer's cookie digest is wrong: it does not know the cookie.
    #[error("not allowed (check the cookie)")]
    NotAllowed,
    /// The acceptor refused us with this status (`nok`, `not_allowed`, `alive`...).
    #[error("the node refused the connection ({0})")]
    Refused(String),
    /// The acceptor's own digest is wrong: it does not know our cookie.
    #[error("the node could not prove it knows the cookie (check the cookie)")]
    BadPeerDigest,
    /// The node that answered is not the one we asked for.
    #[error("reached {found}, not {wanted}")]
    WrongNode {
        /// The node we wanted.
        wanted: String,
        /// The node that answered.
        found: String,
    },
}

/// Takes one handshake message out of `buf` (without its 2-byte length), if a whole one
/// is there.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<BytesMut>, HandshakeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len > MAX_MESSAGE_LEN {
        return Err(HandshakeError::Malformed("message too long"));
    }
    if buf.len() < 2 + len {
        return Ok(None);
    }
    buf.advance(2);
    Ok(Some(buf.split_to(len)))
}

/// `body` with its 2-byte length.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + body.len());
    out.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// The cookie digest over `challenge`.
pub fn digest(cookie: &Cookie, challenge: u32) -> [u8; 16] {
    let mut md5 = Md5::new();
    md5.update(cookie.secret());
    md5.update(challenge.to_string().as_bytes());
    md5.finalize().into()
}

/// Equality that takes the same time wherever the first difference is.
fn same_digest(a: &[u8], b: &[u8; 16]) -> bool {
    a.len() == 16 && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What one side says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node name, as sent.
    pub name: String,
    /// Its flags.
    pub flags: u64,
    /// Its creation (incarnation).
    pub creation: u32,
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandshakeError> {
        if self.0.len() < n {
            return Err(HandshakeError::Malformed("message too short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, HandshakeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, HandshakeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, HandshakeError> {
        let b = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn name(&mut self) -> Result<String, HandshakeError> {
        let n = usize::from(self.u16()?);
        let bytes = self.take(n)?;
        if !self.0.is_empty() {
            return Err(HandshakeError::Malformed("trailing bytes"));
        }
        let name = std::str::from_utf8(bytes).map_err(|_| HandshakeError::BadName)?;
        NodeName::parse_long(name).map_err(|_| HandshakeError::BadName)?;
        Ok(name.to_string())
    }
}

/// `send_name` / `send_challenge` share a layout; `challenge` is `None` for send_name.
fn encode_name_message(flags: u64, challenge: Option<u32>, creation: u32, name: &str) -> Vec<u8> {
    let mut body = vec![b'N'];
    body.extend_from_slice(&flags.to_be_bytes());
    if let Some(challenge) = challenge {
        body.extend_from_slice(&challenge.to_be_bytes());
    }
    body.extend_from_slice(&creation.to_be_bytes());
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    framed(&body)
}

/// What the acceptor does next.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptStep {
    /// Write these bytes (the status and the challenge) and wait for the reply.
    Send(Vec<u8>),
    /// Write these bytes (the acknowledgement): the peer is authenticated.
    Done {
        /// The acknowledgement to write.
        ack: Vec<u8>,
        /// Who the peer is.
        peer: PeerInfo,
    },
}

enum AcceptState {
    AwaitName,
    AwaitReply { peer: PeerInfo },
    Finished,
}

/// The accepting side: a BEAM connects to us.
pub struct Acceptor {
    own: String,
    cookie: Cookie,
    creation: u32,
    challenge: u32,
    state: AcceptState,
}

impl Acceptor {
    /// An acceptor for the node `own`, with a random challenge.
    pub fn new(own: &NodeName, cookie: Cookie, creation: u32) -> Self {
        Self::with_challenge(own, cookie, creation, rand::random())
    }

    /// An acceptor with a given challenge (for tests).
    pub fn with_challenge(own: &NodeName, cookie: Cookie, creation: u32, challenge: u32) -> Self {
        Self {
            own: own.to_string(),
            cookie,
            creation,
            challenge,
            state: AcceptState::AwaitName,
        }
    }

    /// The name the peer claimed, once it has sent one.
    pub fn claimed_name(&self) -> Option<&str> {
        match &self.state {
            AcceptState::AwaitReply { peer } => Some(&peer.name),
            _ => None,
        }
    }

    /// Handles one message (without its length).
    pub fn on_message(&mut self, body: &[u8]) -> Result<AcceptStep, HandshakeError> {
        match std::mem::replace(&mut self.state, AcceptState::Finished) {
            AcceptState::AwaitName => {
                let mut c = Cursor(body);
                match c.take(1)?[0] {
                    b'N' => {}
                    b'n' => return Err(HandshakeError::OldVersion),
                    _ => return Err(HandshakeError::Malformed("expected send_name")),
                }
                let flags = c.u64()?;
                let creation = c.u32()?;
                let name = c.name()?;
                if !flags::acceptable(flags) {
                    return Err(HandshakeError::MissingFlags(flags));
                }
                let mut out = framed(b"sok");
                out.extend(encode_name_message(
                    flags::OFFERED,
                    Some(self.challenge),
                    self.creation,
                    &self.own,
                ));
                self.state = AcceptState::AwaitReply {
                    peer: PeerInfo {
                        name,
                        flags,
                        creation,
                    },
                };
                Ok(AcceptStep::Send(out))
            }
            AcceptState::AwaitReply { peer } => {
                let mut c = Cursor(body);
                if c.take(1)?[0] != b'r' {
                    return Err(HandshakeError::Malformed("expected challenge_reply"));
                }
                let theirs = c.u32()?;
                let proof = c.take(16)?;
                if !c.0.is_empty() {
                    return Err(HandshakeError::Malformed("trailing bytes"));
                }
                self.state = AcceptState::AwaitReply { peer: peer.clone() };
                if !same_digest(proof, &digest(&self.cookie, self.challenge)) {
                    return Err(HandshakeError::NotAllowed);
                }
                self.state = AcceptState::Finished;
                let mut ack = vec![b'a'];
                ack.extend_from_slice(&digest(&self.cookie, theirs));
                Ok(AcceptStep::Done {
                    ack: framed(&ack),
                    peer,
                })
            }
            AcceptState::Finished => Err(HandshakeError::Malformed("handshake already over")),
        }
    }
}

/// What the initiator does next.
#[derive(Debug, PartialEq, Eq)]
pub enum InitStep {
    /// Nothing to write; wait for the next message.
    Wait,
    /// Write these bytes (the challenge reply) and wait.
    Send(Vec<u8>),
    /// The acceptor is authenticated; the connection is up.
    Done {
        /// Who the acceptor is.
        peer: PeerInfo,
    },
}

enum InitState {
    AwaitStatus,
    AwaitChallenge,
    AwaitAck { peer: PeerInfo },
    Finished,
}

/// The initiating side: we connect to a BEAM, as a hidden node.
pub struct Initiator {
    target: String,
    cookie: Cookie,
    challenge: u32,
    state: InitState,
}

impl Initiator {
    /// Starts a handshake from `own` to `target`; returns the machine and the
    /// `send_name` message to write first.
    pub fn new(
        own: &NodeName,
        target: &NodeName,
        cookie: Cookie,
        creation: u32,
    ) -> (Self, Vec<u8>) {
        Self::with_challenge(own, target, cookie, creation, rand::random())
    }

    /// [`Initiator::new`] with a given challenge (for tests).
    pub fn with_challenge(
        own: &NodeName,
        target: &NodeName,
        cookie: Cookie,
        creation: u32,
        challenge: u32,
    ) -> (Self, Vec<u8>) {
        let hello = encode_name_message(flags::OFFERED, None, creation, &own.to_string());
        let machine = Self {
            target: target.to_string(),
            cookie,
            challenge,
            state: InitState::AwaitStatus,
        };
        (machine, hello)
    }

    /// Handles one message (without its length).
    pub fn on_message(&mut self, body: &[u8]) -> Result<InitStep, HandshakeError> {
        match std::mem::replace(&mut self.state, InitState::Finished) {
            InitState::AwaitStatus => {
                let status = body
                    .strip_prefix(b"s")
                    .ok_or(HandshakeError::Malformed("expected a status"))?;
                match status {
                    b"ok" | b"ok_simultaneous" => {
                        self.state = InitState::AwaitChallenge;
                        Ok(InitStep::Wait)
                    }
                    other => Err(HandshakeError::Refused(
                        String::from_utf8_lossy(&other[..other.len().min(32)])
                            .escape_debug()
                            .to_string(),
                    )),
                }
            }
            InitState::AwaitChallenge => {
                let mut c = Cursor(body);
                if c.take(1)?[0] != b'N' {
                    return Err(HandshakeError::Malformed("expected send_challenge"));
                }
                let flags = c.u64()?;
                let challenge = c.u32()?;
                let creation = c.u32()?;
                let name = c.name()?;
                if !flags::acceptable(flags) {
                    return Err(HandshakeError::MissingFlags(flags));
                }
                if name != self.target {
                    return Err(HandshakeError::WrongNode {
                        wanted: self.target.clone(),
                        found: name,
                    });
                }
                let mut reply = vec![b'r'];
                reply.extend_from_slice(&self.challenge.to_be_bytes());
                reply.extend_from_slice(&digest(&self.cookie, challenge));
                self.state = InitState::AwaitAck {
                    peer: PeerInfo {
                        name,
                        flags,
                        creation,
                    },
                };
                Ok(InitStep::Send(framed(&reply)))
            }
            InitState::AwaitAck { peer } => {
                let mut c = Cursor(body);
                if c.take(1)?[0] != b'a' {
                    return Err(HandshakeError::Malformed("expected challenge_ack"));
                }
                let proof = c.take(16)?;
                if !c.0.is_empty() {
                    return Err(HandshakeError::Malformed("trailing bytes"));
                }
                if !same_digest(proof, &digest(&self.cookie, self.challenge)) {
                    return Err(HandshakeError::BadPeerDigest);
                }
                Ok(InitStep::Done { peer })
            }
            InitState::Finished => Err(HandshakeError::Malformed("handshake already over")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> NodeName {
        NodeName::parse_long(s).unwrap()
    }

    fn cookie(s: &str) -> Cookie {
        Cookie::new(s).unwrap()
    }

    fn bodies(mut bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            out.push(bytes[2..2 + len].to_vec());
            bytes = &bytes[2 + len..];
        }
        out
    }

    #[test]
    fn digest_is_md5_of_cookie_and_decimal_challenge() {
        // erlang:md5("chocolate-chip" ++ integer_to_list(4000000000)).
        let expected = {
            let mut md5 = Md5::new();
            md5.update(b"chocolate-chip4000000000");
            <[u8; 16]>::from(md5.finalize())
        };
        assert_eq!(digest(&cookie("chocolate-chip"), 4_000_000_000), expected);
    }

    #[test]
    fn the_mandatory_digest_is_bit_26() {
        assert_eq!(flags::MANDATORY_25_DIGEST, 1 << 26);
        assert_eq!(flags::OFFERED & flags::PUBLISHED, 0, "hidden");
        assert_eq!(flags::OFFERED & flags::DIST_HDR_ATOM_CACHE, 0);
        assert!(flags::acceptable(flags::OFFERED));
        assert!(flags::acceptable(flags::MANDATORY_25_DIGEST));
        assert!(!flags::acceptable(flags::HANDSHAKE_23 | flags::UTF8_ATOMS));
    }

    fn run(client_cookie: &str, server_cookie: &str) -> Result<PeerInfo, HandshakeError> {
        let server = name("server@localhost");
        let (mut init, hello) = Initiator::with_challenge(
            &name("john@localhost"),
            &server,
            cookie(client_cookie),
            5,
            123,
        );
        let mut accept = Acceptor::with_challenge(&server, cookie(server_cookie), 9, 4_000_000_000);
        let AcceptStep::Send(answer) = accept.on_message(&bodies(&hello)[0])? else {
            panic!("expected status and challenge");
        };
        assert_eq!(accept.claimed_name(), Some("john@localhost"));
        let answer = bodies(&answer);
        assert_eq!(answer[0], b"sok");
        assert_eq!(init.on_message(&answer[0])?, InitStep::Wait);
        let InitStep::Send(reply) = init.on_message(&answer[1])? else {
            panic!("expected a reply");
        };
        let AcceptStep::Done { ack, peer } = accept.on_message(&bodies(&reply)[0])? else {
            panic!("expected the ack");
        };
        assert_eq!(peer.name, "john@localhost");
        assert_eq!(peer.creation, 5);
        match init.on_message(&bodies(&ack)[0])? {
            InitStep::Done { peer } => Ok(peer),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn both_sides_agree_with_the_same_cookie() {
        let peer = run("chocolate-chip", "chocolate-chip").unwrap();
        assert_eq!(peer.name, "server@localhost");
        assert_eq!(peer.creation, 9);
        assert_eq!(peer.flags, flags::OFFERED);
    }

    #[test]
    fn a_wrong_cookie_is_not_allowed() {
        assert_eq!(
            run("wrong", "chocolate-chip"),
            Err(HandshakeError::NotAllowed)
        );
    }

    #[test]
    fn refusals_and_bad_messages() {
        let server = name("server@localhost");
        let mut accept = Acceptor::new(&server, cookie("c"), 1);
        assert_eq!(
            accept.on_message(b"n\x00\x05\x00\x00\x00\x00a@b"),
            Err(HandshakeError::OldVersion)
        );
        let mut accept = Acceptor::new(&server, cookie("c"), 1);
        let hello = encode_name_message(flags::HANDSHAKE_23, None, 1, "a@b");
        assert!(matches!(
            accept.on_message(&bodies(&hello)[0]),
            Err(HandshakeError::MissingFlags(_))
        ));
        let mut accept = Acceptor::new(&server, cookie("c"), 1);
        let hello = encode_name_message(flags::OFFERED, None, 1, "not a name");
        assert_eq!(
            accept.on_message(&bodies(&hello)[0]),
            Err(HandshakeError::BadName)
        );
        let (mut init, _) = Initiator::new(&name("a@b"), &server, cookie("c"), 1);
        assert_eq!(
            init.on_message(b"snot_allowed"),
            Err(HandshakeError::Refused("not_allowed".into()))
        );
        let (mut init, _) = Initiator::new(&name("a@b"), &server, cookie("c"), 1);
        init.on_message(b"sok").unwrap();
        let other = encode_name_message(flags::OFFERED, Some(1), 1, "other@localhost");
        assert!(matches!(
            init.on_message(&bodies(&other)[0]),
            Err(HandshakeError::WrongNode { .. })
        ));
        let mut buf = BytesMut::from(&[0xff, 0xff][..]);
        assert!(split_message(&mut buf).is_err());
    }
}
