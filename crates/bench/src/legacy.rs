//! The client side of protocol version 1's opening, kept here whole so the bench can
//! drive servers built before the secure channel (a baseline build of an older main)
//! whatever the `protocol` crate speaks by then.
//!
//! Version 1: the preamble `EXM\x01`, then a mutual HMAC-SHA256 cookie handshake in
//! length-delimited bincode frames (the same framing as the session):
//!
//! ```text
//! client                                   server
//!   Hello { version, from, to, nonce_c }  ->
//!                                          <-  Challenge { name, nonce_s }   (or Refused)
//!   Proof { HMAC(cookie, client label, transcript) } ->
//!                                          <-  Accepted { HMAC(.., server label, ..), tick }
//! ```
//!
//! Each proof covers a label, both nonces and both names, every part prefixed with its
//! length as a big-endian u64. After `Accepted` the session is plaintext frames. Like
//! [`crate::wire`], this module is pinned to the `protocol` crate's version 1 by its unit
//! tests, which run a real `protocol::ServerHandshake` against it.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The protocol version this module speaks.
pub const VERSION: u8 = 1;

/// The four bytes a version 1 connection opens with.
pub const PREAMBLE: [u8; 4] = [b'E', b'X', b'M', VERSION];

const CLIENT_LABEL: &[u8] = b"exmessenger client proof v1";
const SERVER_LABEL: &[u8] = b"exmessenger server proof v1";

type HmacSha256 = Hmac<Sha256>;

/// Version 1's handshake messages, variant for variant and field for field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Message {
    Hello {
        version: u8,
        from: String,
        to: String,
        nonce: [u8; 32],
    },
    Challenge {
        name: String,
        nonce: [u8; 32],
    },
    Proof {
        tag: [u8; 32],
    },
    Accepted {
        tag: [u8; 32],
        tick_ms: u64,
    },
    Refused {
        reason: Refusal,
    },
}

/// Why a version 1 server refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The cookie proof failed.
    #[error("not allowed")]
    NotAllowed,
    /// The client asked for another node.
    #[error("this is {this_node}, not the node asked for")]
    WrongNode {
        /// The server's real name.
        this_node: String,
    },
    /// The server speaks another version.
    #[error("unsupported protocol version (server speaks {supported})")]
    UnsupportedVersion {
        /// The version it speaks.
        supported: u8,
    },
    /// The client's node name is malformed.
    #[error("bad node name: {reason}")]
    BadName {
        /// Which rule it breaks.
        reason: String,
    },
    /// The server is at its connection limit.
    #[error("server is full")]
    ServerFull,
    /// The server is shutting down.
    #[error("server is shutting down")]
    ShuttingDown,
}

/// Why a version 1 handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The server refused.
    #[error("the server refused: {0}")]
    Refused(Refusal),
    /// The server's proof did not verify: it does not know the cookie.
    #[error("the server failed to prove it knows the cookie")]
    BadServerProof,
    /// Another node answered.
    #[error("expected {expected}, but {actual} answered")]
    WrongServer {
        /// The node asked for.
        expected: String,
        /// The node that answered.
        actual: String,
    },
    /// A frame that is not a handshake message, or one out of turn.
    #[error("unexpected or malformed handshake message")]
    Unexpected,
}

/// One whole frame for `message`, through the protocol crate's codec (the one place
/// that encodes; version 1 used the same framing and encoding).
fn frame(message: &Message) -> Vec<u8> {
    // Encoding a small serde-derived handshake message cannot fail.
    protocol::codec::encode_frame(message).map_or_else(|_| Vec::new(), |frame| frame.to_vec())
}

fn transcript_mac(label: &[u8], cookie: &[u8], parts: [&[u8]; 4]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(cookie).expect("HMAC takes keys of any length");
    for part in std::iter::once(label).chain(parts) {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// What to do after a server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Write these bytes and wait for the next frame.
    Send(Vec<u8>),
    /// The server proved the cookie; the session (plaintext frames) starts now.
    Done,
}

/// The client side of a version 1 handshake, with no I/O.
pub struct ClientHandshake {
    own: String,
    server: String,
    cookie: Vec<u8>,
    nonce: [u8; 32],
    server_nonce: Option<[u8; 32]>,
}

impl ClientHandshake {
    /// Starts a handshake from node `own` to node `server`; returns the machine and the
    /// bytes to write first (the preamble and the hello).
    pub fn start(own: &str, server: &str, cookie: &str) -> (Self, Vec<u8>) {
        Self::start_with_nonce(own, server, cookie, rand::random())
    }

    /// As [`ClientHandshake::start`] with a chosen nonce (for golden tests).
    fn start_with_nonce(own: &str, server: &str, cookie: &str, nonce: [u8; 32]) -> (Self, Vec<u8>) {
        let mut first = PREAMBLE.to_vec();
        first.extend_from_slice(&frame(&Message::Hello {
            version: VERSION,
            from: own.to_string(),
            to: server.to_string(),
            nonce,
        }));
        let machine = Self {
            own: own.to_string(),
            server: server.to_string(),
            cookie: cookie.trim().as_bytes().to_vec(),
            nonce,
            server_nonce: None,
        };
        (machine, first)
    }

    /// Feeds the payload of the next frame from the server.
    pub fn on_frame(&mut self, payload: &[u8]) -> Result<Step, LegacyError> {
        let message: Message =
            protocol::codec::decode(payload).map_err(|_| LegacyError::Unexpected)?;
        match (self.server_nonce, message) {
            (_, Message::Refused { reason }) => Err(LegacyError::Refused(reason)),
            (None, Message::Challenge { name, nonce }) => {
                if name != self.server {
                    return Err(LegacyError::WrongServer {
                        expected: self.server.clone(),
                        actual: name,
                    });
                }
                self.server_nonce = Some(nonce);
                let tag = self
                    .mac(CLIENT_LABEL, &nonce)
                    .finalize()
                    .into_bytes()
                    .into();
                Ok(Step::Send(frame(&Message::Proof { tag })))
            }
            (Some(server_nonce), Message::Accepted { tag, .. }) => self
                .mac(SERVER_LABEL, &server_nonce)
                .verify_slice(&tag)
                .map(|()| Step::Done)
                .map_err(|_| LegacyError::BadServerProof),
            _ => Err(LegacyError::Unexpected),
        }
    }

    fn mac(&self, label: &[u8], server_nonce: &[u8; 32]) -> HmacSha256 {
        transcript_mac(
            label,
            &self.cookie,
            [
                &self.nonce,
                server_nonce,
                self.own.as_bytes(),
                self.server.as_bytes(),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HEADER_LEN;

    // A version 1 exchange recorded from the `protocol` crate's own client and server
    // (client nonce 01.., server nonce 02.., cookie `chocolate-chip`, tick 15 s), so this
    // copy stays checked after the crate moves on to version 2.
    const FIRST: &str = "45584d010000003d00010c6231406c6f63616c686f73740d737276406c6f63616c686f73740101010101010101010101010101010101010101010101010101010101010101";
    const CHALLENGE: &str = "0000002f010d737276406c6f63616c686f73740202020202020202020202020202020202020202020202020202020202020202";
    const PROOF: &str =
        "0000002102a76eb0e58ced6beb2655f38c9179195847f76e77a38f9192b68eca03be314506";
    const ACCEPTED: &str =
        "00000024032f3b8da3540bd8c00abfbbf0a6830b1eb811b9c54dc0ea98505805b92668af03fb983a";

    fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    fn client(cookie: &str) -> (ClientHandshake, Vec<u8>) {
        ClientHandshake::start_with_nonce("b1@localhost", "srv@localhost", cookie, [1; 32])
    }

    #[test]
    fn replays_a_recorded_version_one_exchange() {
        let (mut client, first) = client("chocolate-chip\n");
        assert_eq!(first, bytes(FIRST));
        let step = client.on_frame(&bytes(CHALLENGE)[HEADER_LEN..]).unwrap();
        assert_eq!(step, Step::Send(bytes(PROOF)));
        let step = client.on_frame(&bytes(ACCEPTED)[HEADER_LEN..]).unwrap();
        assert_eq!(step, Step::Done);
    }

    #[test]
    fn a_server_without_the_cookie_is_caught() {
        let (mut client, _) = client("oatmeal");
        let step = client.on_frame(&bytes(CHALLENGE)[HEADER_LEN..]).unwrap();
        assert_ne!(step, Step::Send(bytes(PROOF)));
        assert!(matches!(
            client.on_frame(&bytes(ACCEPTED)[HEADER_LEN..]),
            Err(LegacyError::BadServerProof)
        ));
    }

    #[test]
    fn refusals_and_impostors_end_the_handshake() {
        let (mut refused, _) = client("c");
        assert!(matches!(
            refused.on_frame(&[4, 0]),
            Err(LegacyError::Refused(Refusal::NotAllowed))
        ));
        let (mut other, _) = client("c");
        let impostor = frame(&Message::Challenge {
            name: "evil@localhost".into(),
            nonce: [2; 32],
        });
        assert!(matches!(
            other.on_frame(&impostor[HEADER_LEN..]),
            Err(LegacyError::WrongServer { .. })
        ));
        let (mut early, _) = client("c");
        assert!(matches!(
            early.on_frame(&bytes(ACCEPTED)[HEADER_LEN..]),
            Err(LegacyError::Unexpected)
        ));
    }
}
