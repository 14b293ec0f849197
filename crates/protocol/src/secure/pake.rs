//! The handshake as two state machines, one per side, with no I/O.
//!
//! The caller reads length-delimited frames of at most
//! [`MAX_HANDSHAKE_FRAME_LEN`](super::MAX_HANDSHAKE_FRAME_LEN) bytes, feeds each payload
//! to `on_frame`, and writes the bytes it is told to (whole frames, or the first record).
//! When the machines agree they hand over an [`Established`] channel: the sealer for what
//! this side sends and the opener for what it receives.
//!
//! Key schedule (see the module above for the flow):
//!
//! ```text
//! pake_key   = SPAKE2(cookie, id_A = client name, id_B = server name)   (Ed25519 group)
//! transcript = SHA-256("exmessenger handshake v2", version, client name, server name,
//!                      pake_c, pake_s)                  (each part length-prefixed)
//! HKDF-SHA256(salt = transcript, ikm = pake_key):
//!   "c2s confirm", "s2c confirm", "c2s traffic", "s2c traffic"   (32 bytes each)
//! confirm_s = HMAC-SHA256(s2c confirm key, transcript)
//! confirm_c = HMAC-SHA256(c2s confirm key, transcript)
//! ```
//!
//! Each direction has its own keys, so nothing one side sends can be reflected back as
//! the other's. Tags are checked in constant time (`hmac`'s `verify_slice`).

use bytes::{Bytes, BytesMut};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use spake2::{Ed25519Group, Identity, Password, Spake2};

use super::record::{Opener, RECORD_HEADER_LEN, Sealer, TrafficKey};
use super::{
    HandshakeError, HandshakeMessage, MAX_HANDSHAKE_FRAME_LEN, PakeElement, RefuseReason, Tag,
};
use crate::PROTOCOL_VERSION;
use crate::codec;
use crate::cookie::Cookie;
use crate::name::NodeName;

type HmacSha256 = Hmac<Sha256>;

/// SPAKE2's side bytes, which our messages leave out (each role has one side).
const SIDE_A: u8 = b'A';
const SIDE_B: u8 = b'B';

const TRANSCRIPT_LABEL: &[u8] = b"exmessenger handshake v2";

/// One side's half of an established channel.
pub struct Established {
    /// Seals what this side sends.
    pub sealer: Sealer,
    /// Opens what this side receives.
    pub opener: Opener,
}

/// Everything the key schedule derives.
struct Keys {
    transcript: [u8; 32],
    confirm_c2s: [u8; 32],
    confirm_s2c: [u8; 32],
    traffic_c2s: TrafficKey,
    traffic_s2c: TrafficKey,
}

impl Keys {
    fn derive(
        pake_key: &[u8],
        client: &str,
        server: &str,
        pake_c: &PakeElement,
        pake_s: &PakeElement,
    ) -> Self {
        let mut hash = Sha256::new();
        for part in [
            TRANSCRIPT_LABEL,
            &[PROTOCOL_VERSION][..],
            client.as_bytes(),
            server.as_bytes(),
            pake_c,
            pake_s,
        ] {
            // Length-prefix every part so no two transcripts encode alike.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        let transcript: [u8; 32] = hash.finalize().into();
        let hkdf = Hkdf::<Sha256>::new(Some(&transcript), pake_key);
        let expand = |label: &[u8]| {
            let mut key = [0u8; 32];
            // 32 bytes is far below HKDF-SHA256's limit of 8160.
            hkdf.expand(label, &mut key)
                .expect("32 bytes is a valid HKDF-SHA256 output length");
            key
        };
        Self {
            transcript,
            confirm_c2s: expand(b"exmessenger v2 c2s confirm"),
            confirm_s2c: expand(b"exmessenger v2 s2c confirm"),
            traffic_c2s: expand(b"exmessenger v2 c2s traffic"),
            traffic_s2c: expand(b"exmessenger v2 s2c traffic"),
        }
    }

    fn mac(&self, key: &[u8; 32]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
        mac.update(&self.transcript);
        mac
    }

    fn tag(&self, key: &[u8; 32]) -> Tag {
        self.mac(key).finalize().into_bytes().into()
    }

    /// Constant-time check of a received tag.
    fn verify(&self, key: &[u8; 32], tag: &Tag) -> bool {
        self.mac(key).verify_slice(tag).is_ok()
    }
}

/// Starts SPAKE2 on one side; returns the state and our element (side byte dropped).
fn start(
    side: u8,
    cookie: &Cookie,
    client: &str,
    server: &str,
) -> (Spake2<Ed25519Group>, PakeElement) {
    let password = Password::new(cookie.secret());
    let (id_a, id_b) = (
        Identity::new(client.as_bytes()),
        Identity::new(server.as_bytes()),
    );
    let (state, message) = if side == SIDE_A {
        Spake2::<Ed25519Group>::start_a(&password, &id_a, &id_b)
    } else {
        Spake2::<Ed25519Group>::start_b(&password, &id_a, &id_b)
    };
    let mut element = [0u8; 32];
    // spake2's Ed25519 messages are always the side byte and a 32-byte point.
    element.copy_from_slice(&message[1..]);
    (state, element)
}

/// Finishes SPAKE2 with the other side's element; `None` if it is not a valid point.
fn finish(state: Spake2<Ed25519Group>, their_side: u8, theirs: &PakeElement) -> Option<Vec<u8>> {
    let mut message = [0u8; 33];
    message[0] = their_side;
    message[1..].copy_from_slice(theirs);
    state.finish(&message).ok()
}

/// One handshake message as a whole frame.
fn frame(message: &HandshakeMessage) -> Bytes {
    codec::encode_frame(message).expect("handshake messages are small and always encode")
}

fn decode(payload: &[u8]) -> Option<HandshakeMessage> {
    if payload.len() > MAX_HANDSHAKE_FRAME_LEN {
        return None;
    }
    codec::decode(payload).ok()
}

/// What the client must do after feeding a frame.
pub enum ClientStep {
    /// Write these bytes and wait for the next frame.
    Send(Bytes),
    /// The server is authenticated; the session starts on `channel`.
    Done {
        /// The server's liveness tick, in milliseconds.
        tick_ms: u64,
        /// The client's half of the channel.
        channel: Box<Established>,
    },
}

enum ClientState {
    AwaitChallenge {
        spake: Spake2<Ed25519Group>,
        pake_c: PakeElement,
    },
    AwaitAccepted {
        channel: Box<Established>,
    },
    Finished,
}

/// The client side of the handshake.
pub struct ClientHandshake {
    own: String,
    server: NodeName,
    state: ClientState,
}

impl ClientHandshake {
    /// Starts a handshake from `own` to `server` with `cookie`; returns the machine and
    /// the hello frame to write (after the preamble).
    pub fn new(own: NodeName, server: NodeName, cookie: Cookie) -> (Self, Bytes) {
        let (own, to) = (own.to_string(), server.to_string());
        let (spake, pake_c) = start(SIDE_A, &cookie, &own, &to);
        let hello = frame(&HandshakeMessage::Hello {
            version: PROTOCOL_VERSION,
            from: own.clone(),
            to,
            pake: pake_c,
        });
        let state = ClientState::AwaitChallenge { spake, pake_c };
        (Self { own, server, state }, hello)
    }

    /// Feeds the payload of the next frame from the server. Any error ends the handshake
    /// (and the machine refuses everything after it).
    pub fn on_frame(&mut self, payload: &[u8]) -> Result<ClientStep, HandshakeError> {
        match std::mem::replace(&mut self.state, ClientState::Finished) {
            ClientState::AwaitChallenge { spake, pake_c } => match decode(payload) {
                Some(HandshakeMessage::Challenge {
                    name,
                    pake,
                    confirm,
                }) => self.on_challenge(spake, pake_c, name, pake, confirm),
                Some(HandshakeMessage::Refused { reason }) => Err(HandshakeError::Refused(reason)),
                _ => Err(HandshakeError::Unexpected),
            },
            ClientState::AwaitAccepted { mut channel } => {
                // The answer is either the first record of the server's stream, or a
                // refusal in clear.
                let mut record = BytesMut::with_capacity(RECORD_HEADER_LEN + payload.len());
                record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                record.extend_from_slice(payload);
                let Ok(plaintext) = channel.opener.open_in_place(&mut record) else {
                    return match decode(payload) {
                        Some(HandshakeMessage::Refused { reason }) => {
                            Err(HandshakeError::Refused(reason))
                        }
                        _ => Err(HandshakeError::Unexpected),
                    };
                };
                match plaintext
                    .get(codec::HEADER_LEN..)
                    .filter(|p| plaintext[..codec::HEADER_LEN] == (p.len() as u32).to_be_bytes())
                    .and_then(decode)
                {
                    Some(HandshakeMessage::Accepted { tick_ms }) => {
                        Ok(ClientStep::Done { tick_ms, channel })
                    }
                    _ => Err(HandshakeError::Unexpected),
                }
            }
            ClientState::Finished => Err(HandshakeError::Unexpected),
        }
    }

    fn on_challenge(
        &mut self,
        spake: Spake2<Ed25519Group>,
        pake_c: PakeElement,
        name: String,
        pake_s: PakeElement,
        confirm_s: Tag,
    ) -> Result<ClientStep, HandshakeError> {
        if !NodeName::parse_long(&name).is_ok_and(|n| n == self.server) {
            return Err(HandshakeError::WrongServer {
                expected: self.server.to_string(),
                actual: name,
            });
        }
        let server = self.server.to_string();
        let pake_key = finish(spake, SIDE_B, &pake_s).ok_or(HandshakeError::BadPake)?;
        let keys = Keys::derive(&pake_key, &self.own, &server, &pake_c, &pake_s);
        if !keys.verify(&keys.confirm_s2c, &confirm_s) {
            return Err(HandshakeError::KeyMismatch);
        }
        let confirm = keys.tag(&keys.confirm_c2s);
        self.state = ClientState::AwaitAccepted {
            channel: Box::new(Established {
                sealer: Sealer::new(&keys.traffic_c2s),
                opener: Opener::new(&keys.traffic_s2c),
            }),
        };
        Ok(ClientStep::Send(frame(&HandshakeMessage::Confirm {
            confirm,
        })))
    }
}

/// What the server must do after feeding a frame.
pub enum ServerStep {
    /// Write these bytes and wait for the next frame.
    Send(Bytes),
    /// Write `reply` (the first record); the client is authenticated as `peer` and the
    /// session starts on `channel`.
    Accept {
        /// The encrypted `Accepted` record.
        reply: Bytes,
        /// The client's node name.
        peer: NodeName,
        /// The server's half of the channel.
        channel: Box<Established>,
    },
    /// Write `reply` (a refusal frame), then close; `error` is for the log.
    Refuse {
        /// The refusal to write.
        reply: Bytes,
        /// What went wrong, for the log (never sent).
        error: HandshakeError,
    },
}

enum ServerState {
    AwaitHello,
    AwaitConfirm { client: NodeName, keys: Box<Keys> },
    Finished,
}

/// The server side of the handshake.
pub struct ServerHandshake {
    own: NodeName,
    cookie: Cookie,
    tick_ms: u64,
    state: ServerState,
    /// The name a valid hello claimed, kept for logs even after a refusal.
    claimed: Option<NodeName>,
}

impl ServerHandshake {
    /// A server named `own` expecting a hello; `tick_ms` is announced on success.
    pub fn new(own: NodeName, cookie: Cookie, tick_ms: u64) -> Self {
        Self {
            own,
            cookie,
            tick_ms,
            state: ServerState::AwaitHello,
            claimed: None,
        }
    }

    /// The name the client claimed, once a valid hello has been read (for logs).
    pub fn claimed_name(&self) -> Option<&NodeName> {
        self.claimed.as_ref()
    }

    /// True once the machine has run the key exchange and sent its challenge: from then
    /// on, anything but an acceptance is a failed guess of the cookie (for the rate
    /// limit), whether the client answers wrongly, goes silent or hangs up.
    pub fn exchanged_keys(&self) -> bool {
        self.claimed.is_some()
    }

    /// Feeds the payload of the next frame from the client.
    pub fn on_frame(&mut self, payload: &[u8]) -> ServerStep {
        let state = std::mem::replace(&mut self.state, ServerState::Finished);
        match (state, decode(payload)) {
            (
                ServerState::AwaitHello,
                Some(HandshakeMessage::Hello {
                    version,
                    from,
                    to,
                    pake,
                }),
            ) => self.on_hello(version, &from, &to, pake),
            (
                ServerState::AwaitConfirm { client, keys },
                Some(HandshakeMessage::Confirm { confirm }),
            ) => {
                if !keys.verify(&keys.confirm_c2s, &confirm) {
                    // The state stays Finished: a refused handshake never accepts.
                    return refuse(RefuseReason::NotAllowed, HandshakeError::KeyMismatch);
                }
                let mut channel = Box::new(Established {
                    sealer: Sealer::new(&keys.traffic_s2c),
                    opener: Opener::new(&keys.traffic_c2s),
                });
                let accepted = frame(&HandshakeMessage::Accepted {
                    tick_ms: self.tick_ms,
                });
                let mut reply = BytesMut::new();
                if channel
                    .sealer
                    .seal_stream([&accepted[..]], &mut reply)
                    .is_err()
                {
                    return refuse(RefuseReason::NotAllowed, HandshakeError::Unexpected);
                }
                ServerStep::Accept {
                    reply: reply.freeze(),
                    peer: client,
                    channel,
                }
            }
            (_, Some(HandshakeMessage::Refused { reason })) => ServerStep::Refuse {
                reply: Bytes::new(),
                error: HandshakeError::Refused(reason),
            },
            _ => refuse(RefuseReason::NotAllowed, HandshakeError::Unexpected),
        }
    }

    fn on_hello(&mut self, version: u8, from: &str, to: &str, pake_c: PakeElement) -> ServerStep {
        if version != PROTOCOL_VERSION {
            return refuse(
                RefuseReason::UnsupportedVersion {
                    supported: PROTOCOL_VERSION,
                },
                HandshakeError::UnsupportedVersion(version),
            );
        }
        let client = match NodeName::parse_long(from) {
            Ok(name) => name,
            Err(e) => {
                return refuse(
                    RefuseReason::BadName {
                        reason: e.to_string(),
                    },
                    HandshakeError::BadName(e.to_string()),
                );
            }
        };
        if NodeName::parse_long(to).map_or(true, |to| to != self.own) {
            return refuse(
                RefuseReason::WrongNode {
                    this_node: self.own.to_string(),
                },
                HandshakeError::WrongNode(to.to_string()),
            );
        }
        self.claimed = Some(client.clone());
        let (client_text, server_text) = (client.to_string(), self.own.to_string());
        let (spake, pake_s) = start(SIDE_B, &self.cookie, &client_text, &server_text);
        let Some(pake_key) = finish(spake, SIDE_A, &pake_c) else {
            return refuse(RefuseReason::NotAllowed, HandshakeError::BadPake);
        };
        let keys = Keys::derive(&pake_key, &client_text, &server_text, &pake_c, &pake_s);
        let confirm = keys.tag(&keys.confirm_s2c);
        self.state = ServerState::AwaitConfirm {
            client,
            keys: Box::new(keys),
        };
        ServerStep::Send(frame(&HandshakeMessage::Challenge {
            name: server_text,
            pake: pake_s,
            confirm,
        }))
    }
}

fn refuse(reason: RefuseReason, error: HandshakeError) -> ServerStep {
    ServerStep::Refuse {
        reply: frame(&HandshakeMessage::Refused { reason }),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secure::record::MAX_RECORD_PLAINTEXT;

    fn name(s: &str) -> NodeName {
        NodeName::parse_long(s).unwrap()
    }

    fn cookie(s: &str) -> Cookie {
        Cookie::new(s).unwrap()
    }

    /// The payload of a whole frame.
    fn payload(frame: &[u8]) -> &[u8] {
        &frame[codec::HEADER_LEN..]
    }

    /// Runs a handshake in memory; returns each side's end.
    fn run(
        client_cookie: &str,
        server_cookie: &str,
        to: &str,
    ) -> (Result<ClientStep, HandshakeError>, Option<ServerStep>) {
        let (mut client, hello) =
            ClientHandshake::new(name("john@h"), name(to), cookie(client_cookie));
        let mut server = ServerHandshake::new(name("server@h"), cookie(server_cookie), 15_000);
        let challenge = match server.on_frame(payload(&hello)) {
            ServerStep::Send(m) => m,
            ServerStep::Refuse { reply, .. } => return (client.on_frame(payload(&reply)), None),
            ServerStep::Accept { .. } => panic!("accepted a hello"),
        };
        let confirm = match client.on_frame(payload(&challenge)) {
            Ok(ClientStep::Send(m)) => m,
            other => return (other, None),
        };
        let last = server.on_frame(payload(&confirm));
        let reply = match &last {
            ServerStep::Accept { reply, .. } | ServerStep::Refuse { reply, .. } => reply.clone(),
            ServerStep::Send(m) => m.clone(),
        };
        (client.on_frame(payload(&reply)), Some(last))
    }

    #[test]
    fn same_cookie_gives_both_sides_one_channel() {
        let (client, server) = run("chocolate-chip", "chocolate-chip", "server@h");
        let Ok(ClientStep::Done {
            tick_ms,
            channel: mut client,
        }) = client
        else {
            panic!("the client did not finish");
        };
        assert_eq!(tick_ms, 15_000);
        let Some(ServerStep::Accept {
            peer,
            channel: mut server,
            ..
        }) = server
        else {
            panic!("the server did not accept");
        };
        assert_eq!(peer, name("john@h"));
        let send = |from: &mut Box<Established>, to: &mut Box<Established>| {
            let mut wire = BytesMut::new();
            from.sealer.seal_stream([&b"hi"[..]], &mut wire).unwrap();
            let mut plain = BytesMut::new();
            assert!(to.opener.open_into(&mut wire, &mut plain).unwrap());
            assert_eq!(&plain[..], b"hi");
        };
        send(&mut client, &mut server);
        send(&mut server, &mut client);
    }

    #[test]
    fn wrong_cookie_is_caught_by_the_client_before_it_proves_anything() {
        let (client, server) = run("oatmeal", "chocolate-chip", "server@h");
        assert!(matches!(client, Err(HandshakeError::KeyMismatch)));
        assert!(server.is_none(), "the client sent a confirmation");
    }

    #[test]
    fn wrong_node_is_refused_with_the_real_name() {
        let (client, _) = run("c", "c", "other@h");
        assert!(matches!(
            client,
            Err(HandshakeError::Refused(RefuseReason::WrongNode { this_node })) if this_node == "server@h"
        ));
    }

    #[test]
    fn a_wrong_confirmation_is_not_allowed_and_final() {
        let (_client, hello) = ClientHandshake::new(name("a@h"), name("server@h"), cookie("c"));
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        assert!(matches!(
            server.on_frame(payload(&hello)),
            ServerStep::Send(_)
        ));
        assert!(server.exchanged_keys());
        let bad = frame(&HandshakeMessage::Confirm { confirm: [0; 32] });
        assert!(matches!(
            server.on_frame(payload(&bad)),
            ServerStep::Refuse {
                error: HandshakeError::KeyMismatch,
                ..
            }
        ));
        assert!(matches!(
            server.on_frame(payload(&bad)),
            ServerStep::Refuse { .. }
        ));
    }

    #[test]
    fn a_reflected_confirmation_fails() {
        // The server's own confirmation sent back as the client's: labels differ.
        let (_client, hello) = ClientHandshake::new(name("a@h"), name("server@h"), cookie("c"));
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        let ServerStep::Send(challenge) = server.on_frame(payload(&hello)) else {
            panic!()
        };
        let Some(HandshakeMessage::Challenge { confirm, .. }) = decode(payload(&challenge)) else {
            panic!()
        };
        let reflected = frame(&HandshakeMessage::Confirm { confirm });
        assert!(matches!(
            server.on_frame(payload(&reflected)),
            ServerStep::Refuse { .. }
        ));
    }

    #[test]
    fn names_are_bound_a_relay_cannot_redirect() {
        // A relay changes the hello's sender: the server derives other keys, and the
        // client's check of the challenge fails.
        let (mut client, hello) =
            ClientHandshake::new(name("ann@h"), name("server@h"), cookie("c"));
        let Some(HandshakeMessage::Hello {
            version, to, pake, ..
        }) = decode(payload(&hello))
        else {
            panic!()
        };
        let forged = frame(&HandshakeMessage::Hello {
            version,
            from: "mallory@h".into(),
            to,
            pake,
        });
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        let ServerStep::Send(challenge) = server.on_frame(payload(&forged)) else {
            panic!()
        };
        assert!(matches!(
            client.on_frame(payload(&challenge)),
            Err(HandshakeError::KeyMismatch)
        ));
    }

    #[test]
    fn the_cookie_never_appears_on_the_wire_and_the_accept_is_encrypted() {
        let secret = "very-secret-cookie-value";
        let (mut client, hello) =
            ClientHandshake::new(name("john@h"), name("server@h"), cookie(secret));
        let mut server = ServerHandshake::new(name("server@h"), cookie(secret), 1000);
        let mut wire = hello.to_vec();
        let ServerStep::Send(challenge) = server.on_frame(payload(&hello)) else {
            panic!()
        };
        wire.extend_from_slice(&challenge);
        let Ok(ClientStep::Send(confirm)) = client.on_frame(payload(&challenge)) else {
            panic!()
        };
        wire.extend_from_slice(&confirm);
        let ServerStep::Accept { reply, .. } = server.on_frame(payload(&confirm)) else {
            panic!()
        };
        assert!(
            decode(payload(&reply)).is_none(),
            "the acceptance is in clear"
        );
        wire.extend_from_slice(&reply);
        assert!(matches!(
            client.on_frame(payload(&reply)),
            Ok(ClientStep::Done { tick_ms: 1000, .. })
        ));
        assert!(!wire.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert!(reply.len() < MAX_RECORD_PLAINTEXT);
    }

    #[test]
    fn out_of_order_and_garbage_frames_are_refused() {
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        let confirm = frame(&HandshakeMessage::Confirm { confirm: [0; 32] });
        assert!(matches!(
            server.on_frame(payload(&confirm)),
            ServerStep::Refuse { .. }
        ));
        let (mut client, _) = ClientHandshake::new(name("a@h"), name("server@h"), cookie("c"));
        assert!(matches!(
            client.on_frame(&[0xde, 0xad]),
            Err(HandshakeError::Unexpected)
        ));
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        assert!(matches!(
            server.on_frame(&vec![0u8; MAX_HANDSHAKE_FRAME_LEN + 1]),
            ServerStep::Refuse { .. }
        ));
    }

    #[test]
    fn a_point_that_is_not_on_the_curve_is_refused() {
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        // y = 2 does not decompress to an Edwards point.
        let mut pake = [0u8; 32];
        pake[0] = 2;
        let hello = frame(&HandshakeMessage::Hello {
            version: PROTOCOL_VERSION,
            from: "a@h".into(),
            to: "server@h".into(),
            pake,
        });
        assert!(matches!(
            server.on_frame(payload(&hello)),
            ServerStep::Refuse {
                error: HandshakeError::BadPake,
                ..
            }
        ));
    }

    #[test]
    fn bad_versions_and_names_are_refused() {
        for (version, from) in [(99, "a@h"), (PROTOCOL_VERSION, "no host")] {
            let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
            let hello = frame(&HandshakeMessage::Hello {
                version,
                from: from.into(),
                to: "server@h".into(),
                pake: [0; 32],
            });
            assert!(matches!(
                server.on_frame(payload(&hello)),
                ServerStep::Refuse { .. }
            ));
            assert!(!server.exchanged_keys());
        }
    }
}
