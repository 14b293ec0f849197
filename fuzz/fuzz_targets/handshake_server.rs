//! The server side of the PAKE handshake, fed arbitrary sequences of frame payloads:
//! made-up messages, raw bytes, and an honest client's (with the right or a wrong
//! cookie), so the fuzzer reaches the confirmation and acceptance states too.
//!
//! Invariants:
//! - it never panics;
//! - the only thing it sends before deciding is one `Challenge` with its own name, in
//!   answer to the first payload, a valid `Hello` addressed to it;
//! - it accepts only the confirmation of an honest client that used the right cookie in
//!   this very exchange; the acceptance is one record that the client opens to
//!   `Accepted` with the server's tick, and the peer is the hello's sender;
//! - every refusal is a `Refused` frame, and a failed confirmation says only
//!   `NotAllowed`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use protocol::codec::{self, HEADER_LEN};
use protocol::secure::{ClientStep, HandshakeError, RefuseReason, ServerStep};
use protocol::{ClientHandshake, Cookie, HandshakeMessage, NodeName, PROTOCOL_VERSION, ServerHandshake};

const SERVER: &str = "server@h";
const CLIENT: &str = "john@h";
const COOKIE: &str = "chocolate-chip";

#[derive(Arbitrary, Debug)]
enum Op {
    /// An honest client's hello, with the right or a wrong cookie.
    HonestHello { right_cookie: bool },
    /// The honest client's confirmation of the last challenge (if it made one).
    HonestConfirm,
    /// A hello with fields of the fuzzer's choosing.
    Hello { version: u8, from: String, to_server: bool, pake: [u8; 32] },
    /// A confirmation with a made-up tag.
    Confirm { confirm: [u8; 32] },
    /// Any payload at all.
    Wire(Vec<u8>),
}

fn name(s: &str) -> NodeName {
    NodeName::parse_long(s).unwrap()
}

fn payload(frame: &[u8]) -> Vec<u8> {
    frame[HEADER_LEN..].to_vec()
}

fuzz_target!(|ops: Vec<Op>| {
    let mut server = ServerHandshake::new(name(SERVER), Cookie::new(COOKIE).unwrap(), 15_000);
    // The honest client of this run, if any, whether its cookie is right, and the
    // confirmation it produced for the server's challenge.
    let mut honest: Option<(ClientHandshake, bool)> = None;
    let mut honest_confirm: Option<Vec<u8>> = None;
    let mut fed = 0usize;
    for op in ops.iter().take(12) {
        let (input, from_honest_confirm) = match op {
            Op::HonestHello { right_cookie } => {
                let cookie = if *right_cookie { COOKIE } else { "oatmeal" };
                let (client, hello) =
                    ClientHandshake::new(name(CLIENT), name(SERVER), Cookie::new(cookie).unwrap());
                honest = Some((client, *right_cookie));
                (payload(&hello), false)
            }
            Op::HonestConfirm => match &honest_confirm {
                Some(confirm) => (confirm.clone(), true),
                None => continue,
            },
            Op::Hello { version, from, to_server, pake } => {
                let msg = HandshakeMessage::Hello {
                    version: *version,
                    from: from.clone(),
                    to: if *to_server { SERVER.into() } else { from.clone() },
                    pake: *pake,
                };
                match codec::encode_frame(&msg) {
                    Ok(frame) => (payload(&frame), false),
                    Err(_) => continue,
                }
            }
            Op::Confirm { confirm } => {
                let frame = codec::encode_frame(&HandshakeMessage::Confirm { confirm: *confirm }).unwrap();
                (payload(&frame), false)
            }
            Op::Wire(bytes) => (bytes.clone(), false),
        };
        fed += 1;
        match server.on_frame(&input) {
            ServerStep::Send(challenge) => {
                assert_eq!(fed, 1, "a challenge only answers the first payload");
                let Ok(HandshakeMessage::Hello { version, from, to, .. }) =
                    codec::decode::<HandshakeMessage>(&input)
                else {
                    panic!("challenged something that is not a hello");
                };
                assert_eq!(version, PROTOCOL_VERSION);
                assert_eq!(name(&to), name(SERVER));
                assert_eq!(server.claimed_name(), NodeName::parse_long(&from).ok().as_ref());
                assert!(server.exchanged_keys());
                match codec::decode::<HandshakeMessage>(&challenge[HEADER_LEN..]) {
                    Ok(HandshakeMessage::Challenge { name, .. }) => assert_eq!(name, SERVER),
                    other => panic!("sent {other:?}"),
                }
                // Only an honest hello gets the honest client's answer.
                if let (Some((client, right)), Op::HonestHello { .. }) = (honest.as_mut(), op) {
                    match client.on_frame(&challenge[HEADER_LEN..]) {
                        Ok(ClientStep::Send(confirm)) => {
                            assert!(*right, "a wrong cookie confirmed the server");
                            honest_confirm = Some(payload(&confirm));
                        }
                        Err(HandshakeError::KeyMismatch) => assert!(!*right, "the right cookie failed"),
                        Err(e) => panic!("the honest client failed: {e}"),
                        Ok(ClientStep::Done { .. }) => panic!("done on a challenge"),
                    }
                }
            }
            ServerStep::Accept { reply, peer, .. } => {
                assert!(from_honest_confirm, "accepted a confirmation no honest client made");
                assert_eq!(fed, 2, "accepted at payload {fed}");
                assert_eq!(peer, name(CLIENT));
                let (mut client, right) = honest.take().expect("an honest client");
                assert!(right);
                match client.on_frame(&reply[HEADER_LEN..]) {
                    Ok(ClientStep::Done { tick_ms, .. }) => assert_eq!(tick_ms, 15_000),
                    _ => panic!("the client could not open the acceptance"),
                }
                return;
            }
            ServerStep::Refuse { reply, error } => {
                if !reply.is_empty() {
                    let Ok(HandshakeMessage::Refused { reason }) =
                        codec::decode::<HandshakeMessage>(&reply[HEADER_LEN..])
                    else {
                        panic!("a refusal that is not Refused");
                    };
                    if error == HandshakeError::KeyMismatch {
                        assert_eq!(reason, RefuseReason::NotAllowed);
                    }
                }
                assert!(!from_honest_confirm || !matches!(error, HandshakeError::KeyMismatch),
                    "refused an honest confirmation");
                // The connection closes after a refusal; a refused machine stays refused.
                assert!(matches!(server.on_frame(&input), ServerStep::Refuse { .. }));
                return;
            }
        }
    }
});
