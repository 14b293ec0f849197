//! The mutual cookie handshake, as a pair of state machines with no I/O.
//!
//! Modelled on Erlang's distribution handshake, with HMAC-SHA256 in place of MD5:
//!
//! ```text
//! client                                   server
//!   Hello { version, from, to, nonce_c }  ->
//!                                          <-  Challenge { name, nonce_s }   (or Refused)
//!   Proof { HMAC(cookie, "client", ...) } ->
//!                                          <-  Accepted { HMAC(cookie, "server", ...) }
//!                                              (or Refused { NotAllowed })
//! ```
//!
//! Each proof covers both nonces and both names, with a different label per direction so
//! one side's proof can never be replayed as the other's. The cookie itself never crosses
//! the wire, and proofs are checked in constant time. The caller feeds each received
//! [`HandshakeMessage`] to `on_message` and sends what it is told to.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::PROTOCOL_VERSION;
use crate::name::NodeName;

/// Random bytes each side contributes so that every proof is fresh.
pub type Nonce = [u8; 32];

/// An HMAC-SHA256 tag.
pub type Tag = [u8; 32];

type HmacSha256 = Hmac<Sha256>;

/// The shared secret. Its `Debug` output never shows the secret.
#[derive(Clone)]
pub struct Cookie(String);

impl Cookie {
    /// Wraps a cookie; surrounding whitespace (such as a file's newline) is trimmed.
    /// Returns `None` when nothing is left.
    pub fn new(secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Self(secret.to_string()))
    }

    pub(crate) fn key(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

/// A fresh random nonce.
pub fn random_nonce() -> Nonce {
    rand::random()
}

/// Messages exchanged before the session starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMessage {
    /// Client -> server: who I am, whom I want, my nonce.
    Hello {
        /// The client's protocol version.
        version: u8,
        /// The client's node name.
        from: String,
        /// The node the client wants to reach.
        to: String,
        /// The client's nonce.
        nonce: Nonce,
    },
    /// Server -> client: my name and my nonce; prove you know the cookie.
    Challenge {
        /// The server's node name.
        name: String,
        /// The server's nonce.
        nonce: Nonce,
    },
    /// Client -> server: the client's proof.
    Proof {
        /// HMAC over the transcript with the client label.
        tag: Tag,
    },
    /// Server -> client: accepted, and here is the server's own proof.
    Accepted {
        /// HMAC over the transcript with the server label.
        tag: Tag,
        /// The server's liveness tick in milliseconds, so the client can notice a silent
        /// server.
        tick_ms: u64,
    },
    /// Either side: no. The connection closes after this.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
}

/// Why a handshake was refused. A failed cookie proof is always the generic
/// [`RefuseReason::NotAllowed`], which says nothing an attacker could use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RefuseReason {
    /// The cookie proof failed.
    #[error("not allowed")]
    NotAllowed,
    /// The client asked for a different node than this one.
    #[error("this is {this_node}, not the node asked for")]
    WrongNode {
        /// The server's real name.
        this_node: String,
    },
    /// Protocol versions differ.
    #[error("unsupported protocol version (server speaks {supported})")]
    UnsupportedVersion {
        /// The version the server speaks.
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

/// Errors that end a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The other side refused.
    #[error("{0}")]
    Refused(RefuseReason),
    /// The server's proof did not verify: it does not know our cookie.
    #[error("the server failed to prove it knows the cookie")]
    BadServerProof,
    /// The client's proof did not verify (server side).
    #[error("the client failed to prove it knows the cookie")]
    BadClientProof,
    /// The challenge came from a node other than the one we asked for.
    #[error("expected {expected}, but {actual} answered")]
    WrongServer {
        /// The node we asked for.
        expected: String,
        /// The node that answered.
        actual: String,
    },
    /// The client asked for a node that is not us (server side).
    #[error("client asked for {0}")]
    WrongNode(String),
    /// The client's name is not a node name (server side).
    #[error("client sent a bad node name: {0}")]
    BadName(String),
    /// The client speaks another version (server side).
    #[error("client speaks protocol version {0}")]
    UnsupportedVersion(u8),
    /// A message arrived that makes no sense at this point.
    #[error("unexpected handshake message")]
    Unexpected,
}

const CLIENT_LABEL: &[u8] = b"exmessenger client proof v1";
const SERVER_LABEL: &[u8] = b"exmessenger server proof v1";

/// Everything both proofs cover.
struct Transcript<'a> {
    client_nonce: &'a Nonce,
    server_nonce: &'a Nonce,
    client_name: &'a str,
    server_name: &'a str,
}

impl Transcript<'_> {
    fn mac(&self, cookie: &Cookie, label: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(cookie.key()).expect("HMAC accepts keys of any length");
        for part in [
            label,
            self.client_nonce,
            self.server_nonce,
            self.client_name.as_bytes(),
            self.server_name.as_bytes(),
        ] {
            // Length-prefix every part so no two transcripts encode alike.
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn tag(&self, cookie: &Cookie, label: &[u8]) -> Tag {
        self.mac(cookie, label).finalize().into_bytes().into()
    }

    /// Constant-time check of a received tag.
    fn verify(&self, cookie: &Cookie, label: &[u8], tag: &Tag) -> bool {
        self.mac(cookie, label).verify_slice(tag).is_ok()
    }
}

/// What the client must do after feeding a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientStep {
    /// Send this and wait for the next message.
    Send(HandshakeMessage),
    /// The server is authenticated; the session starts. `tick_ms` is the server's tick.
    Done {
        /// The server's liveness tick, in milliseconds.
        tick_ms: u64,
    },
}

enum ClientState {
    AwaitChallenge,
    AwaitAccepted { server_nonce: Nonce },
    Finished,
}

/// The client side of the handshake.
pub struct ClientHandshake {
    own: NodeName,
    server: NodeName,
    cookie: Cookie,
    nonce: Nonce,
    state: ClientState,
}

impl ClientHandshake {
    /// Starts a handshake from `own` to `server`; returns the machine and the hello to send.
    pub fn new(own: NodeName, server: NodeName, cookie: Cookie) -> (Self, HandshakeMessage) {
        Self::with_nonce(own, server, cookie, random_nonce())
    }

    /// As [`ClientHandshake::new`] with a chosen nonce (for tests).
    pub fn with_nonce(
        own: NodeName,
        server: NodeName,
        cookie: Cookie,
        nonce: Nonce,
    ) -> (Self, HandshakeMessage) {
        let hello = HandshakeMessage::Hello {
            version: PROTOCOL_VERSION,
            from: own.to_string(),
            to: server.to_string(),
            nonce,
        };
        let machine = Self {
            own,
            server,
            cookie,
            nonce,
            state: ClientState::AwaitChallenge,
        };
        (machine, hello)
    }

    /// Feeds the next message from the server.
    pub fn on_message(&mut self, msg: HandshakeMessage) -> Result<ClientStep, HandshakeError> {
        let own = self.own.to_string();
        let server = self.server.to_string();
        match (&self.state, msg) {
            (_, HandshakeMessage::Refused { reason }) => {
                self.state = ClientState::Finished;
                Err(HandshakeError::Refused(reason))
            }
            (ClientState::AwaitChallenge, HandshakeMessage::Challenge { name, nonce }) => {
                let same = NodeName::parse_long(&name).is_ok_and(|n| n == self.server);
                if !same {
                    self.state = ClientState::Finished;
                    return Err(HandshakeError::WrongServer {
                        expected: server,
                        actual: name,
                    });
                }
                let tag = Transcript {
                    client_nonce: &self.nonce,
                    server_nonce: &nonce,
                    client_name: &own,
                    server_name: &server,
                }
                .tag(&self.cookie, CLIENT_LABEL);
                self.state = ClientState::AwaitAccepted {
                    server_nonce: nonce,
                };
                Ok(ClientStep::Send(HandshakeMessage::Proof { tag }))
            }
            (
                ClientState::AwaitAccepted { server_nonce },
                HandshakeMessage::Accepted { tag, tick_ms },
            ) => {
                let ok = Transcript {
                    client_nonce: &self.nonce,
                    server_nonce,
                    client_name: &own,
                    server_name: &server,
                }
                .verify(&self.cookie, SERVER_LABEL, &tag);
                self.state = ClientState::Finished;
                if ok {
                    Ok(ClientStep::Done { tick_ms })
                } else {
                    Err(HandshakeError::BadServerProof)
                }
            }
            _ => {
                self.state = ClientState::Finished;
                Err(HandshakeError::Unexpected)
            }
        }
    }
}

/// What the server must do after feeding a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// Send this and wait for the next message.
    Send(HandshakeMessage),
    /// Send `reply`; the client is authenticated as `peer` and the session starts.
    Accept {
        /// The final handshake message.
        reply: HandshakeMessage,
        /// The client's node name.
        peer: NodeName,
    },
    /// Send `reply` (a refusal), then close; `error` is for the log.
    Refuse {
        /// The refusal to send.
        reply: HandshakeMessage,
        /// What went wrong, for the log (never sent).
        error: HandshakeError,
    },
}

enum ServerState {
    AwaitHello,
    AwaitProof {
        client_nonce: Nonce,
        client_name: NodeName,
    },
    Finished,
}

/// The server side of the handshake.
pub struct ServerHandshake {
    own: NodeName,
    cookie: Cookie,
    nonce: Nonce,
    tick_ms: u64,
    state: ServerState,
    /// The name a valid hello claimed, kept for logs even after a refusal.
    claimed: Option<NodeName>,
}

impl ServerHandshake {
    /// A server named `own` expecting a hello; `tick_ms` is announced on success.
    pub fn new(own: NodeName, cookie: Cookie, tick_ms: u64) -> Self {
        Self::with_nonce(own, cookie, tick_ms, random_nonce())
    }

    /// As [`ServerHandshake::new`] with a chosen nonce (for tests).
    pub fn with_nonce(own: NodeName, cookie: Cookie, tick_ms: u64, nonce: Nonce) -> Self {
        Self {
            own,
            cookie,
            nonce,
            tick_ms,
            state: ServerState::AwaitHello,
            claimed: None,
        }
    }

    /// The name the client claimed, once a hello has been read (for logs).
    pub fn claimed_name(&self) -> Option<&NodeName> {
        self.claimed.as_ref()
    }

    /// Feeds the next message from the client.
    pub fn on_message(&mut self, msg: HandshakeMessage) -> ServerStep {
        let state = std::mem::replace(&mut self.state, ServerState::Finished);
        match (state, msg) {
            (
                ServerState::AwaitHello,
                HandshakeMessage::Hello {
                    version,
                    from,
                    to,
                    nonce,
                },
            ) => {
                if version != PROTOCOL_VERSION {
                    return refuse(
                        RefuseReason::UnsupportedVersion {
                            supported: PROTOCOL_VERSION,
                        },
                        HandshakeError::UnsupportedVersion(version),
                    );
                }
                let client_name = match NodeName::parse_long(&from) {
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
                if NodeName::parse_long(&to).map_or(true, |to| to != self.own) {
                    return refuse(
                        RefuseReason::WrongNode {
                            this_node: self.own.to_string(),
                        },
                        HandshakeError::WrongNode(to),
                    );
                }
                self.claimed = Some(client_name.clone());
                self.state = ServerState::AwaitProof {
                    client_nonce: nonce,
                    client_name,
                };
                ServerStep::Send(HandshakeMessage::Challenge {
                    name: self.own.to_string(),
                    nonce: self.nonce,
                })
            }
            (
                ServerState::AwaitProof {
                    client_nonce,
                    client_name,
                },
                HandshakeMessage::Proof { tag },
            ) => {
                let client = client_name.to_string();
                let server = self.own.to_string();
                let transcript = Transcript {
                    client_nonce: &client_nonce,
                    server_nonce: &self.nonce,
                    client_name: &client,
                    server_name: &server,
                };
                if !transcript.verify(&self.cookie, CLIENT_LABEL, &tag) {
                    // The state stays Finished: a refused handshake never accepts.
                    return refuse(RefuseReason::NotAllowed, HandshakeError::BadClientProof);
                }
                let tag = transcript.tag(&self.cookie, SERVER_LABEL);
                ServerStep::Accept {
                    reply: HandshakeMessage::Accepted {
                        tag,
                        tick_ms: self.tick_ms,
                    },
                    peer: client_name,
                }
            }
            _ => refuse(RefuseReason::NotAllowed, HandshakeError::Unexpected),
        }
    }
}

fn refuse(reason: RefuseReason, error: HandshakeError) -> ServerStep {
    ServerStep::Refuse {
        reply: HandshakeMessage::Refused { reason },
        error,
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

    /// Runs a whole handshake in memory; returns what each side ended with.
    fn run(
        client_cookie: &str,
        server_cookie: &str,
        to: &str,
    ) -> (Result<ClientStep, HandshakeError>, ServerStep) {
        let (mut client, hello) =
            ClientHandshake::new(name("john@h"), name(to), cookie(client_cookie));
        let mut server = ServerHandshake::new(name("server@h"), cookie(server_cookie), 15_000);
        let challenge = match server.on_message(hello) {
            ServerStep::Send(m) => m,
            other => return (client.on_message(refusal(&other)), other),
        };
        let proof = match client.on_message(challenge).unwrap() {
            ClientStep::Send(m) => m,
            other => panic!("expected a proof, got {other:?}"),
        };
        let last = server.on_message(proof);
        let reply = match &last {
            ServerStep::Accept { reply, .. } | ServerStep::Refuse { reply, .. } => reply.clone(),
            ServerStep::Send(m) => m.clone(),
        };
        (client.on_message(reply), last)
    }

    fn refusal(step: &ServerStep) -> HandshakeMessage {
        match step {
            ServerStep::Refuse { reply, .. } => reply.clone(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn same_cookie_authenticates_both_ways() {
        let (client, server) = run("chocolate-chip", "chocolate-chip", "server@h");
        assert_eq!(client, Ok(ClientStep::Done { tick_ms: 15_000 }));
        match server {
            ServerStep::Accept { peer, .. } => assert_eq!(peer, name("john@h")),
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn wrong_cookie_is_not_allowed() {
        let (client, server) = run("oatmeal", "chocolate-chip", "server@h");
        assert_eq!(
            client,
            Err(HandshakeError::Refused(RefuseReason::NotAllowed))
        );
        assert!(matches!(
            server,
            ServerStep::Refuse {
                error: HandshakeError::BadClientProof,
                ..
            }
        ));
    }

    #[test]
    fn wrong_node_is_refused_with_the_real_name() {
        let (client, _) = run("c", "c", "other@h");
        assert_eq!(
            client,
            Err(HandshakeError::Refused(RefuseReason::WrongNode {
                this_node: "server@h".into()
            }))
        );
    }

    #[test]
    fn a_server_without_the_cookie_cannot_fake_acceptance() {
        let (mut client, _hello) =
            ClientHandshake::new(name("john@h"), name("server@h"), cookie("secret"));
        let step = client
            .on_message(HandshakeMessage::Challenge {
                name: "server@h".into(),
                nonce: [1; 32],
            })
            .unwrap();
        let HandshakeMessage::Proof { tag } = (match step {
            ClientStep::Send(m) => m,
            other => panic!("{other:?}"),
        }) else {
            panic!("expected proof")
        };
        // Reflecting the client's own proof back must fail: labels differ.
        assert_eq!(
            client.on_message(HandshakeMessage::Accepted { tag, tick_ms: 1 }),
            Err(HandshakeError::BadServerProof)
        );
    }

    #[test]
    fn the_cookie_never_appears_in_any_message() {
        let secret = "very-secret-cookie-value";
        let (mut client, hello) =
            ClientHandshake::new(name("john@h"), name("server@h"), cookie(secret));
        let mut server = ServerHandshake::new(name("server@h"), cookie(secret), 1000);
        let mut wire = Vec::new();
        wire.extend(crate::codec::encode_frame(&hello).unwrap());
        let ServerStep::Send(challenge) = server.on_message(hello) else {
            panic!()
        };
        wire.extend(crate::codec::encode_frame(&challenge).unwrap());
        let ClientStep::Send(proof) = client.on_message(challenge).unwrap() else {
            panic!()
        };
        wire.extend(crate::codec::encode_frame(&proof).unwrap());
        let ServerStep::Accept { reply, .. } = server.on_message(proof) else {
            panic!()
        };
        wire.extend(crate::codec::encode_frame(&reply).unwrap());
        assert!(client.on_message(reply).is_ok());
        assert!(!wire.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }

    #[test]
    fn out_of_order_messages_are_refused() {
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        assert!(matches!(
            server.on_message(HandshakeMessage::Proof { tag: [0; 32] }),
            ServerStep::Refuse { .. }
        ));
        let (mut client, _) = ClientHandshake::new(name("a@h"), name("server@h"), cookie("c"));
        assert_eq!(
            client.on_message(HandshakeMessage::Accepted {
                tag: [0; 32],
                tick_ms: 1
            }),
            Err(HandshakeError::Unexpected)
        );
    }

    #[test]
    fn bad_versions_and_names_are_refused() {
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        assert!(matches!(
            server.on_message(HandshakeMessage::Hello {
                version: 99,
                from: "a@h".into(),
                to: "server@h".into(),
                nonce: [0; 32]
            }),
            ServerStep::Refuse {
                error: HandshakeError::UnsupportedVersion(99),
                ..
            }
        ));
        let mut server = ServerHandshake::new(name("server@h"), cookie("c"), 1000);
        assert!(matches!(
            server.on_message(HandshakeMessage::Hello {
                version: PROTOCOL_VERSION,
                from: "no host".into(),
                to: "server@h".into(),
                nonce: [0; 32]
            }),
            ServerStep::Refuse {
                error: HandshakeError::BadName(_),
                ..
            }
        ));
    }

    #[test]
    fn cookies_are_trimmed_and_redacted() {
        assert!(Cookie::new("  \n").is_none());
        let c = Cookie::new("abc\n").unwrap();
        assert_eq!(c.key(), b"abc");
        assert!(!format!("{c:?}").contains("abc"));
    }
}
