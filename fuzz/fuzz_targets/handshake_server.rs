//! The server side of the handshake, fed arbitrary sequences of messages: made-up ones,
//! ones decoded from raw bytes, and the honest client's (so the fuzzer reaches the
//! proof and acceptance states too).
//!
//! Invariants:
//! - it never panics, and two machines fed the same sequence take the same steps;
//! - the only thing it sends before deciding is one `Challenge` with its own name and
//!   nonce, in answer to the first message, a valid `Hello` addressed to it;
//! - it accepts only a `Proof` carrying exactly the HMAC the cookie holder would compute
//!   for the hello it answered, names the hello's sender as the peer, and its `Accepted`
//!   tag convinces that honest client; nothing follows an acceptance but refusals;
//! - every refusal replies `Refused`, and a failed proof is the generic `NotAllowed`.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use protocol::codec;
use protocol::handshake::{ClientStep, HandshakeError, RefuseReason, ServerStep};
use protocol::{
    ClientHandshake, Cookie, HandshakeMessage, NodeName, PROTOCOL_VERSION, ServerHandshake,
};

const SERVER: &str = "server@h";
const CLIENT: &str = "john@h";
const COOKIE: &str = "chocolate-chip";
const SERVER_NONCE: [u8; 32] = [7; 32];
const CLIENT_NONCE: [u8; 32] = [9; 32];

#[derive(Arbitrary, Debug, Clone)]
enum Name {
    Server,
    Client,
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Server => SERVER.into(),
            Name::Client => CLIENT.into(),
            Name::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    /// The honest client's hello.
    HonestHello,
    /// The honest client's answer to the last challenge, with the right or a wrong cookie.
    HonestProof {
        right_cookie: bool,
    },
    Hello {
        version: u8,
        from: Name,
        to: Name,
        nonce: [u8; 32],
    },
    Challenge {
        name: Name,
        nonce: [u8; 32],
    },
    Proof {
        tag: [u8; 32],
    },
    Accepted {
        tag: [u8; 32],
        tick_ms: u64,
    },
    Refused,
    /// Whatever these bytes decode to (skipped if they do not).
    Wire(Vec<u8>),
}

fn name(s: &str) -> NodeName {
    NodeName::parse_long(s).unwrap()
}

fn honest_client(cookie: &str) -> (ClientHandshake, HandshakeMessage) {
    ClientHandshake::with_nonce(
        name(CLIENT),
        name(SERVER),
        Cookie::new(cookie).unwrap(),
        CLIENT_NONCE,
    )
}

/// The proof a client named `from` with `nonce` and the real cookie would send.
fn expected_proof(
    from: &NodeName,
    nonce: [u8; 32],
    challenge: &HandshakeMessage,
) -> HandshakeMessage {
    let (mut client, _) = ClientHandshake::with_nonce(
        from.clone(),
        name(SERVER),
        Cookie::new(COOKIE).unwrap(),
        nonce,
    );
    match client.on_message(challenge.clone()) {
        Ok(ClientStep::Send(proof)) => proof,
        other => panic!("client refused the server's own challenge: {other:?}"),
    }
}

/// Turns the ops into messages (the honest proof depends on what the server sent).
fn message(op: &Op, last_challenge: Option<&HandshakeMessage>) -> Option<HandshakeMessage> {
    Some(match op {
        Op::HonestHello => honest_client(COOKIE).1,
        Op::HonestProof { right_cookie } => {
            let (mut client, _) = honest_client(if *right_cookie { COOKIE } else { "oatmeal" });
            match client.on_message(last_challenge?.clone()) {
                Ok(ClientStep::Send(proof)) => proof,
                _ => return None,
            }
        }
        Op::Hello {
            version,
            from,
            to,
            nonce,
        } => HandshakeMessage::Hello {
            version: *version,
            from: from.text(),
            to: to.text(),
            nonce: *nonce,
        },
        Op::Challenge { name, nonce } => HandshakeMessage::Challenge {
            name: name.text(),
            nonce: *nonce,
        },
        Op::Proof { tag } => HandshakeMessage::Proof { tag: *tag },
        Op::Accepted { tag, tick_ms } => HandshakeMessage::Accepted {
            tag: *tag,
            tick_ms: *tick_ms,
        },
        Op::Refused => HandshakeMessage::Refused {
            reason: RefuseReason::NotAllowed,
        },
        Op::Wire(bytes) => codec::decode::<HandshakeMessage>(bytes).ok()?,
    })
}

fuzz_target!(|ops: Vec<Op>| {
    let server = || {
        ServerHandshake::with_nonce(
            name(SERVER),
            Cookie::new(COOKIE).unwrap(),
            15_000,
            SERVER_NONCE,
        )
    };
    let mut machine = server();
    let mut twin = server();
    assert!(machine.claimed_name().is_none());

    // What the server has said so far: the challenge and the hello it answered.
    let mut answered: Option<(NodeName, [u8; 32], HandshakeMessage)> = None;
    let mut accepted = false;
    let mut fed = 0usize;
    for op in ops.iter().take(16) {
        let Some(msg) = message(op, answered.as_ref().map(|a| &a.2)) else {
            continue;
        };
        let step = machine.on_message(msg.clone());
        assert_eq!(
            step,
            twin.on_message(msg.clone()),
            "same input, different step"
        );
        fed += 1;
        match step {
            ServerStep::Send(challenge) => {
                assert!(!accepted, "spoke after accepting");
                assert_eq!(fed, 1, "a challenge only answers the first message");
                let HandshakeMessage::Hello {
                    version,
                    from,
                    to,
                    nonce,
                } = msg
                else {
                    panic!("challenged {msg:?}");
                };
                assert_eq!(version, PROTOCOL_VERSION);
                assert_eq!(name(&to), name(SERVER));
                assert_eq!(
                    challenge,
                    HandshakeMessage::Challenge {
                        name: SERVER.into(),
                        nonce: SERVER_NONCE
                    }
                );
                let from = NodeName::parse_long(&from).expect("challenged a bad name");
                assert_eq!(machine.claimed_name(), Some(&from));
                answered = Some((from, nonce, challenge));
            }
            ServerStep::Accept { reply, peer } => {
                assert!(!accepted, "accepted twice");
                assert_eq!(fed, 2, "accepted at message {fed}");
                let (from, nonce, challenge) = answered.clone().expect("accepted without a hello");
                assert_eq!(peer, from);
                assert_eq!(
                    msg,
                    expected_proof(&from, nonce, &challenge),
                    "accepted a wrong proof"
                );
                // The server's own proof convinces the honest client.
                let (mut client, _) = ClientHandshake::with_nonce(
                    from,
                    name(SERVER),
                    Cookie::new(COOKIE).unwrap(),
                    nonce,
                );
                assert!(matches!(
                    client.on_message(challenge),
                    Ok(ClientStep::Send(_))
                ));
                assert_eq!(
                    client.on_message(reply),
                    Ok(ClientStep::Done { tick_ms: 15_000 })
                );
                accepted = true;
            }
            ServerStep::Refuse { reply, error } => {
                let HandshakeMessage::Refused { reason } = reply else {
                    panic!("refusal replied {reply:?}");
                };
                if error == HandshakeError::BadClientProof {
                    assert_eq!(reason, RefuseReason::NotAllowed);
                }
                // The connection closes after a refusal; what the machine does with input
                // fed after that is outside its contract.
                return;
            }
        }
    }
});
