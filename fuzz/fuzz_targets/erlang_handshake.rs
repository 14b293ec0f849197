//! Erlang's distribution handshake, both sides, fed arbitrary messages: made-up bytes
//! and the honest peer's messages (so the fuzzer reaches the later states too).
//!
//! Invariants:
//! - neither machine panics;
//! - the acceptor sends only the `sok` status and its challenge, once, in answer to a
//!   valid `send_name`, and finishes only on the exact MD5 digest of the cookie and its
//!   challenge, naming the peer that sent the name;
//! - the initiator finishes only on the exact digest over its own challenge, from the
//!   node it asked for, and sends only one `challenge_reply`.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::erlang::handshake::{
    self, AcceptStep, Acceptor, InitStep, Initiator, digest, flags,
};
use protocol::{Cookie, NodeName};

const SERVER: &str = "server@h";
const CLIENT: &str = "john@h";
const SERVER_CHALLENGE: u32 = 4_000_000_000;
const CLIENT_CHALLENGE: u32 = 12345;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Raw bytes as one message body.
    Raw(Vec<u8>),
    /// Raw bytes through the 2-byte framing.
    Framed(Vec<u8>),
    /// The honest initiator's next message (to the acceptor), or the honest
    /// acceptor's (to the initiator).
    Honest,
    /// A reply with this digest-ish content.
    Reply { challenge: u32, digest: [u8; 16] },
}

#[derive(Arbitrary, Debug)]
struct Input {
    right_cookie: bool,
    to_acceptor: Vec<Op>,
    to_initiator: Vec<Op>,
}

fn name(s: &str) -> NodeName {
    NodeName::parse_long(s).unwrap()
}

fn bodies(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while let Ok(Some(body)) = handshake::split_message(&mut buf) {
        out.push(body.to_vec());
    }
    out
}

fuzz_target!(|input: Input| {
    let cookie = Cookie::new("chocolate-chip").unwrap();
    let their_cookie = if input.right_cookie {
        cookie.clone()
    } else {
        Cookie::new("wrong").unwrap()
    };
    // The acceptor, against arbitrary input and an honest initiator.
    let mut acceptor =
        Acceptor::with_challenge(&name(SERVER), cookie.clone(), 9, SERVER_CHALLENGE);
    let (mut honest, hello) = Initiator::with_challenge(
        &name(CLIENT),
        &name(SERVER),
        their_cookie.clone(),
        5,
        CLIENT_CHALLENGE,
    );
    let mut honest_next: Vec<Vec<u8>> = bodies(&hello);
    let mut sent_challenge = false;
    let mut claimed: Option<String> = None;
    for op in input.to_acceptor.iter().take(8) {
        let body = match op {
            Op::Raw(bytes) => bytes.clone(),
            Op::Framed(bytes) => match bodies(bytes).into_iter().next() {
                Some(body) => body,
                None => continue,
            },
            Op::Honest => match honest_next.pop() {
                Some(body) => body,
                None => continue,
            },
            Op::Reply { challenge, digest } => {
                let mut body = vec![b'r'];
                body.extend_from_slice(&challenge.to_be_bytes());
                body.extend_from_slice(digest);
                body
            }
        };
        let state_name = acceptor.claimed_name().map(str::to_string);
        match acceptor.on_message(&body) {
            Ok(AcceptStep::Send(out)) => {
                assert!(!sent_challenge, "one challenge only");
                sent_challenge = true;
                claimed = acceptor.claimed_name().map(str::to_string);
                let messages = bodies(&out);
                assert_eq!(messages[0], b"sok");
                assert_eq!(messages.len(), 2);
                // Hand the status and challenge to the honest initiator.
                for message in &messages {
                    if let Ok(InitStep::Send(reply)) = honest.on_message(message) {
                        honest_next = bodies(&reply);
                    }
                }
            }
            Ok(AcceptStep::Done { peer, .. }) => {
                assert!(sent_challenge);
                assert_eq!(Some(&peer.name), claimed.as_ref());
                assert_eq!(Some(peer.name.clone()), state_name);
                // Only the exact digest gets here.
                assert_eq!(&body[5..21], &digest(&cookie, SERVER_CHALLENGE));
                assert!(flags::acceptable(peer.flags));
                break;
            }
            Err(_) => {}
        }
    }
    // The initiator, against arbitrary input.
    let (mut initiator, _) = Initiator::with_challenge(
        &name(CLIENT),
        &name(SERVER),
        cookie.clone(),
        5,
        CLIENT_CHALLENGE,
    );
    let mut honest_acceptor =
        Acceptor::with_challenge(&name(SERVER), their_cookie, 9, SERVER_CHALLENGE);
    let mut honest_out = match honest_acceptor.on_message(&bodies(&hello)[0]) {
        Ok(AcceptStep::Send(out)) => bodies(&out),
        _ => Vec::new(),
    };
    honest_out.reverse();
    let mut replies = 0;
    for op in input.to_initiator.iter().take(8) {
        let body = match op {
            Op::Raw(bytes) => bytes.clone(),
            Op::Framed(bytes) => match bodies(bytes).into_iter().next() {
                Some(body) => body,
                None => continue,
            },
            Op::Honest => match honest_out.pop() {
                Some(body) => body,
                None => continue,
            },
            Op::Reply { digest, .. } => {
                let mut body = vec![b'a'];
                body.extend_from_slice(digest);
                body
            }
        };
        match initiator.on_message(&body) {
            Ok(InitStep::Send(reply)) => {
                replies += 1;
                assert_eq!(replies, 1, "one challenge_reply only");
                if let Ok(AcceptStep::Done { ack, .. }) =
                    honest_acceptor.on_message(&bodies(&reply)[0])
                {
                    honest_out = bodies(&ack);
                }
            }
            Ok(InitStep::Done { peer }) => {
                assert_eq!(peer.name, SERVER);
                assert_eq!(&body[1..17], &digest(&cookie, CLIENT_CHALLENGE));
                break;
            }
            Ok(InitStep::Wait) | Err(_) => {}
        }
    }
});
