//! The ExMessenger wire protocol, shared by `chat-server`, `chat-client` and the tests.
//!
//! This crate does no I/O of its own (in the manner of `quinn-proto`): it defines what
//! goes over the wire and the state machines that decide what to send next, and its users
//! drive them with sockets. That keeps every rule here unit-testable without a network.
//!
//! - [`name`]: Erlang-style node names (`alive@host`).
//! - [`limits`]: sizes and validation of nicks and texts.
//! - [`message`]: the client -> server and server -> client message enums.
//! - [`codec`]: the one place where bytes become messages (length-delimited bincode).
//! - [`handshake`]: the mutual HMAC-SHA256 cookie handshake, as a state machine.
//! - [`epmd`]: Erlang's port-mapper (epmd) wire protocol.

pub mod codec;
pub mod epmd;
pub mod handshake;
pub mod limits;
pub mod message;
pub mod name;

pub use codec::{CodecError, MessageCodec};
pub use handshake::{ClientHandshake, Cookie, HandshakeError, HandshakeMessage, ServerHandshake};
pub use message::{
    ClientMessage, Event, EventKind, FloodLimits, LeaveReason, Reply, ResumeFailure, ServerMessage,
    SessionTicket,
};
pub use name::{NodeName, NodeNameError};

/// Version of the native protocol; sent in the preamble and in the handshake's hello.
pub const PROTOCOL_VERSION: u8 = 1;

/// The four bytes a native connection opens with: ASCII `EXM` and the protocol version.
pub const PREAMBLE: [u8; 4] = [b'E', b'X', b'M', PROTOCOL_VERSION];

/// What the first bytes of a new connection say about the protocol it speaks.
///
/// One listening port can serve our protocol and (later) Erlang's distribution protocol,
/// which opens with a 2-byte length and `N` (or `n` in the old handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// `EXM` and our protocol version.
    Native,
    /// `EXM` with a version this build does not speak.
    NativeUnsupportedVersion(u8),
    /// An Erlang distribution handshake (`send_name`).
    ErlangDistribution,
    /// Anything else: the connection is closed.
    Unknown,
}

/// Classifies the first four bytes of a connection.
pub fn classify_opening(first: [u8; 4]) -> Opening {
    match first {
        [b'E', b'X', b'M', PROTOCOL_VERSION] => Opening::Native,
        [b'E', b'X', b'M', other] => Opening::NativeUnsupportedVersion(other),
        [_, _, b'N' | b'n', _] => Opening::ErlangDistribution,
        _ => Opening::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openings_are_told_apart() {
        assert_eq!(classify_opening(PREAMBLE), Opening::Native);
        assert_eq!(
            classify_opening(*b"EXM\x09"),
            Opening::NativeUnsupportedVersion(9)
        );
        assert_eq!(
            classify_opening([0, 21, b'N', 0]),
            Opening::ErlangDistribution
        );
        assert_eq!(classify_opening(*b"GET "), Opening::Unknown);
    }
}
