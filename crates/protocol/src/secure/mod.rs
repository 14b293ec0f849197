//! The secure channel: a handshake that turns the shared cookie into session keys, and a
//! record layer that encrypts and authenticates everything after it. No I/O here.
//!
//! The handshake ([`pake`]) is a balanced PAKE (SPAKE2 over the Ed25519 group, from the
//! RustCrypto `spake2` crate) keyed by the cookie, with both node names as the PAKE
//! identities and key confirmation both ways:
//!
//! ```text
//! client                                         server
//!   Hello { version, from, to, pake_c }       ->
//!                                             <-  Challenge { name, pake_s, confirm_s }
//!                                                 (or Refused)
//!   checks confirm_s (bad: "not allowed")
//!   Confirm { confirm_c }                     ->
//!                                             <-  record 0: Accepted { tick_ms }
//!                                                 (or Refused { NotAllowed }, in clear)
//! ```
//!
//! The protocol version, both names and both PAKE messages are hashed into a transcript
//! that salts HKDF-SHA256 over the PAKE's key; HKDF gives a confirmation key and a
//! traffic key per direction. Neither a passive observer nor an active attacker playing
//! either side can test cookie guesses offline: each attempt commits to one guess.
//!
//! After the handshake every byte goes through the record layer ([`record`]): our usual
//! length-delimited frames, concatenated into one byte stream, cut into records sealed
//! with AES-256-GCM under a per-direction counter nonce. [`codec::SecureCodec`] is that
//! stream as a `tokio_util` codec of messages.

pub mod codec;
pub mod pake;
pub mod record;

use serde::{Deserialize, Serialize};

pub use codec::SecureCodec;
pub use pake::{ClientHandshake, ClientStep, Established, ServerHandshake, ServerStep};
pub use record::{Opener, RecordError, Sealer};

/// Largest handshake frame payload, in bytes. The longest honest message (a hello with
/// two 255-byte names) is under 600 bytes; anything longer closes the connection from
/// its length prefix, so a stalled handshake holds at most this much.
pub const MAX_HANDSHAKE_FRAME_LEN: usize = 640;

/// A SPAKE2 message without its side byte (the side follows from the role): a compressed
/// Edwards point.
pub type PakeElement = [u8; 32];

/// A key-confirmation tag (HMAC-SHA256).
pub type Tag = [u8; 32];

/// Messages exchanged before the session starts. All but [`HandshakeMessage::Accepted`]
/// travel in clear, as length-delimited frames of at most [`MAX_HANDSHAKE_FRAME_LEN`];
/// `Accepted` is the first record of the server's encrypted stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMessage {
    /// Client -> server: who I am, whom I want, my PAKE message.
    Hello {
        /// The client's protocol version.
        version: u8,
        /// The client's node name.
        from: String,
        /// The node the client wants to reach.
        to: String,
        /// The client's SPAKE2 message (side A).
        pake: PakeElement,
    },
    /// Server -> client: my name, my PAKE message, and proof that I derived the key.
    Challenge {
        /// The server's node name.
        name: String,
        /// The server's SPAKE2 message (side B).
        pake: PakeElement,
        /// HMAC of the transcript under the server's confirmation key.
        confirm: Tag,
    },
    /// Client -> server: proof that the client derived the same key.
    Confirm {
        /// HMAC of the transcript under the client's confirmation key.
        confirm: Tag,
    },
    /// Server -> client, encrypted: the session starts.
    Accepted {
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

/// Why a handshake was refused. A failed key confirmation is always the generic
/// [`RefuseReason::NotAllowed`], which says nothing an attacker could use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RefuseReason {
    /// The key confirmation failed (a different cookie).
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
    /// Too many failed handshakes came from the client's address lately.
    #[error("too many failed attempts from this address; try again later")]
    TryLater,
}

/// Errors that end a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The other side refused.
    #[error("{0}")]
    Refused(RefuseReason),
    /// The key confirmation did not verify: the other side used another cookie (or
    /// someone tampered with the handshake).
    #[error("the key confirmation failed (a different cookie?)")]
    KeyMismatch,
    /// A PAKE message is not a valid group element.
    #[error("malformed key-exchange message")]
    BadPake,
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
    /// A message arrived that does not decode or makes no sense at this point.
    #[error("unexpected handshake message")]
    Unexpected,
}
