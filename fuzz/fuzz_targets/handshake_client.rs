//! The client side of the PAKE handshake, fed arbitrary sequences of frame payloads:
//! made-up challenges and acceptances, raw bytes, and an honest server's (with the right
//! or a wrong cookie).
//!
//! Invariants:
//! - it never panics;
//! - it sends nothing but one `Confirm`, and only after a challenge from the honest
//!   server with the right cookie (a made-up challenge never verifies);
//! - it finishes only on that server's acceptance record, with the server's tick, and
//!   the channel it gets talks to that server's channel both ways.
#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::codec::{self, HEADER_LEN};
use protocol::secure::{ClientStep, ServerStep};
use protocol::{ClientHandshake, Cookie, HandshakeMessage, NodeName, ServerHandshake};

const SERVER: &str = "server@h";
const CLIENT: &str = "john@h";
const COOKIE: &str = "chocolate-chip";

#[derive(Arbitrary, Debug)]
enum Op {
    /// The honest server's answer to our hello (right or wrong cookie).
    HonestChallenge { right_cookie: bool },
    /// The honest server's answer to our confirmation, if it has one.
    HonestAccept,
    /// A challenge of the fuzzer's making.
    Challenge { server_name: bool, pake: [u8; 32], confirm: [u8; 32] },
    /// An acceptance in clear (it must never count).
    AcceptedInClear { tick_ms: u64 },
    /// Any payload at all.
    Wire(Vec<u8>),
}

fn name(s: &str) -> NodeName {
    NodeName::parse_long(s).unwrap()
}

fuzz_target!(|ops: Vec<Op>| {
    let (mut client, hello) =
        ClientHandshake::new(name(CLIENT), name(SERVER), Cookie::new(COOKIE).unwrap());
    let mut server: Option<(ServerHandshake, bool)> = None;
    let mut confirm: Option<Vec<u8>> = None;
    let mut sent_confirm = false;
    for op in ops.iter().take(8) {
        let (input, honest) = match op {
            Op::HonestChallenge { right_cookie } => {
                let cookie = if *right_cookie { COOKIE } else { "oatmeal" };
                let mut machine = ServerHandshake::new(name(SERVER), Cookie::new(cookie).unwrap(), 15_000);
                let ServerStep::Send(challenge) = machine.on_frame(&hello[HEADER_LEN..]) else {
                    panic!("the honest server refused the hello");
                };
                server = Some((machine, *right_cookie));
                (challenge[HEADER_LEN..].to_vec(), true)
            }
            Op::HonestAccept => {
                let (Some((machine, _)), Some(confirm)) = (server.as_mut(), confirm.as_ref()) else {
                    continue;
                };
                match machine.on_frame(confirm) {
                    ServerStep::Accept { reply, .. } => (reply[HEADER_LEN..].to_vec(), true),
                    _ => panic!("the honest server refused an honest confirmation"),
                }
            }
            Op::Challenge { server_name, pake, confirm } => {
                let msg = HandshakeMessage::Challenge {
                    name: if *server_name { SERVER.into() } else { CLIENT.into() },
                    pake: *pake,
                    confirm: *confirm,
                };
                (codec::encode_frame(&msg).unwrap()[HEADER_LEN..].to_vec(), false)
            }
            Op::AcceptedInClear { tick_ms } => {
                let msg = HandshakeMessage::Accepted { tick_ms: *tick_ms };
                (codec::encode_frame(&msg).unwrap()[HEADER_LEN..].to_vec(), false)
            }
            Op::Wire(bytes) => (bytes.clone(), false),
        };
        match client.on_frame(&input) {
            Ok(ClientStep::Send(reply)) => {
                assert!(honest && !sent_confirm, "confirmed something no honest server sent");
                assert!(server.as_ref().is_some_and(|(_, right)| *right), "confirmed a wrong cookie");
                assert!(matches!(
                    codec::decode::<HandshakeMessage>(&reply[HEADER_LEN..]),
                    Ok(HandshakeMessage::Confirm { .. })
                ));
                confirm = Some(reply[HEADER_LEN..].to_vec());
                sent_confirm = true;
            }
            Ok(ClientStep::Done { tick_ms, mut channel }) => {
                assert!(honest && sent_confirm, "finished without the honest acceptance");
                assert_eq!(tick_ms, 15_000);
                let _ = &mut channel;
                // The channel works one way at least: what the client seals is not the
                // plaintext.
                let mut wire = BytesMut::new();
                channel.sealer.seal_stream([&b"ping"[..]], &mut wire).unwrap();
                assert!(!wire.windows(4).any(|w| w == b"ping"));
                return;
            }
            // Any error ends the handshake; the connection closes.
            Err(_) => return,
        }
    }
});
