//! The secure channel, tried as an attacker would: a recording proxy reads nothing, a
//! relay that tampers with one record gets the connection closed, a fake server that
//! guesses the cookie gets nothing to test guesses against offline, and failed
//! handshakes are rate-limited per source address.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};

use chat_tests::net::{RecordingProxy, contains_bytes};
use chat_tests::relay::{Tamper, TamperingRelay};
use chat_tests::{COOKIE, Ctx, LONG, RawClient, WAIT};
use hmac::{Hmac, Mac};
use protocol::codec::{self, HEADER_LEN};
use protocol::secure::{ServerStep, record::TAG_LEN};
use protocol::{Cookie, HandshakeMessage, NodeName, PREAMBLE, ServerHandshake};
use sha2::Sha256;

/// Splits a recorded direction into its length-prefixed units (after `skip` bytes).
fn units(bytes: &[u8], skip: usize) -> Vec<&[u8]> {
    let mut rest = &bytes[skip..];
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(unit) = rest.get(..4 + len) else {
            break;
        };
        out.push(unit);
        rest = &rest[4 + len..];
    }
    out
}

#[test]
fn a_recording_proxy_sees_no_say_pm_or_nick_after_the_handshake() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut bob = ctx.join(&server, "bob");
    let proxy = RecordingProxy::start(server.port());
    let via_proxy = format!("server@localhost:{}", proxy.port());
    // The client's node name (which the hello names in clear) contains the nick; what
    // matters is that nothing after the handshake does.
    let mut ann = ctx
        .client("Zanzibar-Quokka")
        .server_arg(&via_proxy, "server@localhost")
        .join();
    bob.expect_joined("Zanzibar-Quokka");
    ann.send("the launch code is 4-8-15-16-23-42");
    bob.expect_say("Zanzibar-Quokka", "the launch code is 4-8-15-16-23-42");
    ann.send("/pm bob my password is hunter2");
    bob.expect_private("Zanzibar-Quokka", "my password is hunter2");
    bob.send("roger that, Zanzibar-Quokka");
    ann.expect_say("bob", "roger that, Zanzibar-Quokka");
    assert!(ann.users().contains(&"Zanzibar-Quokka".to_string()));

    let rec = proxy.recorded();
    let up = units(&rec.upstream, PREAMBLE.len());
    let down = units(&rec.downstream, 0);
    // Upstream: hello, confirmation, then records; downstream: challenge, then records.
    assert!(up.len() > 3 && down.len() > 2, "too little recorded");
    let after_handshake: Vec<u8> = up[2..]
        .iter()
        .chain(&down[1..])
        .flat_map(|u| u.iter().copied())
        .collect();
    for secret in [
        &b"Zanzibar-Quokka"[..],
        b"launch code",
        b"4-8-15-16-23-42",
        b"hunter2",
        b"roger that",
        b"bob",
    ] {
        assert!(
            !contains_bytes(&after_handshake, secret),
            "{:?} crossed the wire in clear",
            String::from_utf8_lossy(secret)
        );
    }
    // What was sent went as records: each one longer than its tag.
    assert!(up[2..].iter().all(|u| u.len() > 4 + TAG_LEN));
}

/// Joins `mallory` through a relay doing `tamper` to upstream record 1 (her first say;
/// record 0 is her join); checks that the server closes her connection and that the
/// room sees her leave and never sees the say.
fn tampered_say_is_refused(tamper: Tamper) {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    let relay = TamperingRelay::start(server.port(), tamper.clone());
    let (mut mallory, _) = RawClient::open_joined(relay.port(), server.name(), COOKIE, "mallory");
    ann.expect_joined("mallory");
    mallory.say("forged-or-not: transfer the money");
    // Dropped records only show when the next one fails to open.
    let _ = mallory.try_send(
        &protocol::ClientMessage::Say {
            id: 0,
            text: "second say".into(),
        },
        WAIT,
    );
    mallory.expect_closed(WAIT);
    let left = ann.expect_left("mallory");
    assert!(left.ends_with("(protocol error)"), "{tamper:?}: {left:?}");
    // Not even altered: "transfer the monex" would be a forged line too.
    ann.expect_not_received("transfer the mone");
    ann.expect_not_received("second say");
    ann.expect_not_received("injected by the relay");
}

#[test]
fn a_flipped_bit_closes_the_connection() {
    tampered_say_is_refused(Tamper::FlipUp(1));
}

#[test]
fn a_dropped_record_closes_the_connection() {
    tampered_say_is_refused(Tamper::DropUp(1));
}

#[test]
fn a_replayed_record_closes_the_connection() {
    // The join, replayed before the say.
    tampered_say_is_refused(Tamper::ReplayUp(0, 1));
}

#[test]
fn an_injected_record_closes_the_connection() {
    // What a forger would inject: a well-formed say, as the protocol frames it.
    let fake = codec::encode_frame(&protocol::ClientMessage::Say {
        id: 0,
        text: "injected by the relay".into(),
    })
    .expect("a say encodes");
    tampered_say_is_refused(Tamper::InjectUp(1, fake.to_vec()));
}

#[test]
fn a_flipped_bit_towards_the_client_ends_its_session_unseen() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    // Downstream records: 0 acceptance, 1 join answer, 2 the next event (ann's say).
    let relay = TamperingRelay::start(server.port(), Tamper::FlipDown(2));
    let mut bob = ctx
        .client("bob")
        .server_arg(
            &format!("server@localhost:{}", relay.port()),
            "server@localhost",
        )
        .join();
    ann.expect_joined("bob");
    ann.send("this line is tampered with on its way to bob");
    let lost = bob
        .proc
        .expect_stderr_line("Connection to server@localhost lost", LONG);
    assert!(lost.contains("record failed to authenticate"), "{lost:?}");
    assert_eq!(bob.proc.expect_failure(LONG), 1);
    assert!(
        !bob.proc.seen("tampered with"),
        "bob printed the tampered line"
    );
}

/// The old (protocol v1) client proof, as `main` computed it before the secure channel:
/// HMAC-SHA256 keyed by the cookie over a label, both nonces and both names.
fn v1_proof(
    cookie: &str,
    client_nonce: &[u8; 32],
    server_nonce: &[u8; 32],
    client: &str,
    server: &str,
) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(cookie.as_bytes()).expect("any key length");
    for part in [
        &b"exmessenger client proof v1"[..],
        client_nonce,
        server_nonce,
        client.as_bytes(),
        server.as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

const DICTIONARY: [&str; 6] = [
    "password",
    "sunshine2024",
    "hunter2",
    "letmein",
    COOKIE,
    "oatmeal-raisin",
];

#[test]
fn a_fake_server_guessing_the_cookie_gets_nothing_to_test_offline() {
    assert!(
        DICTIONARY.contains(&COOKIE),
        "the dictionary holds the real cookie"
    );
    // The fake server follows the protocol with a wrong guess and records what the real
    // client sends.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake server");
    let port = listener.local_addr().expect("address").port();
    let fake = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("the client connects");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut captured = Vec::new();
        let mut preamble = [0u8; 4];
        stream.read_exact(&mut preamble).expect("preamble");
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).expect("hello length");
        let mut hello = vec![0u8; u32::from_be_bytes(head) as usize];
        stream.read_exact(&mut hello).expect("hello");
        captured.push(hello.clone());
        let mut machine = ServerHandshake::new(
            NodeName::parse_long("server@localhost").unwrap(),
            Cookie::new("my-best-guess").unwrap(),
            15_000,
        );
        let ServerStep::Send(challenge) = machine.on_frame(&hello) else {
            panic!("the fake server refused the hello");
        };
        stream.write_all(&challenge).expect("challenge");
        // Everything else the client sends, until it hangs up.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        captured.push(rest);
        captured
    });
    let ctx = Ctx::new();
    let mut client = ctx
        .client("ann")
        .server_arg(&format!("server@localhost:{port}"), "server@localhost")
        .spawn();
    client.proc.expect_stderr_line(
        &format!("Could not connect to server@localhost:{port}: not allowed (check the cookie)"),
        LONG,
    );
    assert_eq!(client.proc.expect_failure(LONG), 1);
    let captured = fake.join().expect("the fake server");
    let (hello, after_challenge) = (&captured[0], &captured[1]);
    // The client noticed the wrong cookie first and said nothing more: no confirmation,
    // nothing keyed by the cookie.
    assert!(
        after_challenge.is_empty(),
        "the client answered: {after_challenge:?}"
    );

    // Offline: keyed with each word, does the protocol accept what was captured? Only the
    // hello was, so a fresh server keyed with the word is fed it, and, to be generous, a
    // confirmation made from that very server's answer by a client keyed with the word
    // would be needed; the capture holds none, and the hello alone accepts nothing.
    for word in DICTIONARY {
        let mut server = ServerHandshake::new(
            NodeName::parse_long("server@localhost").unwrap(),
            Cookie::new(word).unwrap(),
            15_000,
        );
        let step = server.on_frame(hello);
        assert!(
            !matches!(step, ServerStep::Accept { .. }),
            "{word:?} verified"
        );
    }
}

#[test]
fn a_passive_capture_of_a_good_session_verifies_no_guess_even_the_real_one() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let proxy = RecordingProxy::start(server.port());
    let mut ann = ctx
        .client("ann")
        .server_arg(
            &format!("server@localhost:{}", proxy.port()),
            "server@localhost",
        )
        .join();
    ann.send("/quit");
    ann.proc.expect_success(LONG);
    let rec = proxy.recorded();
    let up = units(&rec.upstream, PREAMBLE.len());
    let (hello, confirm) = (&up[0][HEADER_LEN..], &up[1][HEADER_LEN..]);
    assert!(matches!(
        codec::decode::<HandshakeMessage>(confirm),
        Ok(HandshakeMessage::Confirm { .. })
    ));
    // Replaying the captured hello and confirmation to a server keyed with each word:
    // none is accepted, not even the real cookie, because the confirmation depends on
    // the recorded server's secret exponent, which never left it.
    for word in DICTIONARY {
        let mut server = ServerHandshake::new(
            NodeName::parse_long("server@localhost").unwrap(),
            Cookie::new(word).unwrap(),
            15_000,
        );
        assert!(matches!(server.on_frame(hello), ServerStep::Send(_)));
        assert!(
            !matches!(server.on_frame(confirm), ServerStep::Accept { .. }),
            "{word:?} verified against the capture"
        );
    }
}

#[test]
fn the_same_dictionary_test_finds_the_cookie_in_an_old_hmac_proof() {
    // What the v1 handshake put on the wire for a client with the real cookie, and what
    // an attacker did with it: one HMAC per dictionary word, offline.
    let (client_nonce, server_nonce) = ([1u8; 32], [2u8; 32]);
    let captured = v1_proof(
        COOKIE,
        &client_nonce,
        &server_nonce,
        "ann@localhost",
        "server@localhost",
    );
    let found: Vec<&str> = DICTIONARY
        .into_iter()
        .filter(|word| {
            v1_proof(
                word,
                &client_nonce,
                &server_nonce,
                "ann@localhost",
                "server@localhost",
            ) == captured
        })
        .collect();
    assert_eq!(found, [COOKIE]);
}

#[test]
fn failed_handshakes_are_rate_limited_per_source_address() {
    let ctx = Ctx::new();
    let server = ctx.start_server(
        "server@localhost",
        &["--auth-failures", "3", "--auth-retry", "3600"],
    );
    let attacker = Ipv4Addr::new(127, 0, 0, 3);
    for guess in ["one", "two", "three"] {
        let mut raw = RawClient::connect_from(guess, attacker, server.port());
        let result = raw.handshake("eve@localhost", server.name(), guess);
        assert_eq!(
            result,
            Err("the key confirmation failed (a different cookie?)".to_string())
        );
    }
    // Out of guesses: even the right cookie must wait now.
    let mut raw = RawClient::connect_from("fourth", attacker, server.port());
    assert_eq!(
        raw.handshake("eve@localhost", server.name(), COOKIE),
        Err("refused: too many failed attempts from this address; try again later".to_string())
    );
    // Other addresses are not affected.
    let mut other = RawClient::connect_from("other", Ipv4Addr::new(127, 0, 0, 4), server.port());
    assert!(
        other
            .handshake("ok@localhost", server.name(), COOKIE)
            .is_ok()
    );
    let _ann = ctx.join(&server, "ann");
}
