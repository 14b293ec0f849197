//! The hardening list, reproduced on 127.0.0.1: small handshake frames, a separate pool
//! for connections still in their handshake, escaped and rate-limited logs, every
//! message counted by the flood limit, a limit on private messages to one member, and
//! SIGHUP as a clean leave.

use std::net::Ipv4Addr;
use std::time::Duration;

use chat_tests::chaos::memory;
use chat_tests::{COOKIE, Ctx, Incoming, LONG, RawClient, Signal, Stream, WAIT};
use protocol::{ClientMessage, HandshakeMessage, LeaveReason, PREAMBLE, Reply, ServerMessage};

/// A handshake frame over the handshake's few hundred bytes is refused from its length
/// prefix, long before the handshake timeout.
#[test]
fn a_handshake_frame_over_640_bytes_is_refused_at_once() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--handshake-timeout", "60"]);
    let mut raw = RawClient::connect("big-hello", server.port());
    raw.send_preamble();
    raw.write_bytes(&641u32.to_be_bytes());
    raw.write_bytes(&[0u8; 100]);
    raw.expect_closed(WAIT);
}

/// Stalled handshakes hold little memory: one that sent a partial hello of the largest
/// size holds a buffer of the handshake's size, not a session's; one that announced a
/// 60 KB frame and sent half of it was closed at its length prefix.
#[test]
fn stalled_handshakes_hold_little_memory() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--handshake-timeout", "60"]);
    let pid = server.proc.pid();
    let stall = |announced: u32, sent: usize| {
        let mut bytes = PREAMBLE.to_vec();
        bytes.extend_from_slice(&announced.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, sent));
        bytes
    };
    let (largest, huge) = (stall(640, 600), stall(60_000, 30_000));
    let open = |count: u8| -> Vec<RawClient> {
        // From several addresses: one host alone may hold only so many handshakes.
        (0..count)
            .map(|i| {
                let from = Ipv4Addr::new(127, 0, 1, 1 + i % 4);
                let mut raw = RawClient::connect_from("stalled", from, server.port());
                // The server may close a huge one before it is all written.
                let bytes = if i % 2 == 0 { &largest } else { &huge };
                let _ = raw.write_bytes_within(bytes, WAIT);
                raw
            })
            .collect()
    };
    // A first batch warms the allocator up; the second is measured.
    let _warm = open(100);
    let before = memory(pid).rss_kib;
    let stalled = open(200);
    // Each stalled connection has been read: its bytes are in the server's buffer.
    let mut probe = RawClient::connect("probe", server.port());
    assert!(
        probe
            .handshake("probe@localhost", server.name(), COOKIE)
            .is_ok()
    );
    let after = memory(pid).rss_kib;
    let per_connection = after.saturating_sub(before) * 1024 / stalled.len() as u64;
    assert!(
        per_connection < 6 * 1024,
        "{per_connection} bytes of RSS per stalled handshake ({before} -> {after} KiB)"
    );
}

/// Idle sockets from one host fill only that host's share of the handshake pool, never
/// the members' places: cookie holders still get in.
#[test]
fn idle_sockets_from_one_host_do_not_lock_out_cookie_holders() {
    let ctx = Ctx::new();
    let server = ctx.start_server(
        "server@localhost",
        &["--max-clients", "20", "--handshake-timeout", "60"],
    );
    let squatter = Ipv4Addr::new(127, 0, 0, 5);
    let mut idle: Vec<RawClient> = (0..200)
        .map(|i| RawClient::connect_from(&format!("idle-{i}"), squatter, server.port()))
        .collect();
    // Past the per-address share (128), the server says it is full and closes.
    let refused = idle.last_mut().expect("200 sockets");
    match refused.read_message::<HandshakeMessage>(WAIT) {
        Incoming::Message(HandshakeMessage::Refused { reason }) => {
            assert_eq!(reason.to_string(), "server is full");
        }
        other => panic!("expected a refusal past the per-address share, got {other:?}"),
    }
    refused.expect_closed(WAIT);
    // 200 idle sockets, 20 places for members: all of them still free.
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.send("still room for us");
    ann.expect_say("bob", "still room for us");
}

#[test]
fn logs_escape_and_cap_peer_strings_and_bound_refusals() {
    let ctx = Ctx::new();
    let mut server = ctx.start_server("server@localhost", &[]);
    // A hello asking for a node whose name carries a terminal escape and a lot of text.
    let evil = format!("x\u{1b}]0;pwned\u{7}\u{1b}[2J{}@localhost", "A".repeat(400));
    let hello = protocol::codec::encode_frame(&HandshakeMessage::Hello {
        version: protocol::PROTOCOL_VERSION,
        from: "eve@localhost".into(),
        to: evil,
        pake: [0; 32],
    })
    .expect("a hello encodes");
    for i in 0..200 {
        let mut raw = RawClient::connect(&format!("evil-{i}"), server.port());
        raw.send_preamble();
        raw.write_bytes(&hello);
        // Read the refusal: the server has logged (or not) by then.
        assert!(matches!(
            raw.read_message::<HandshakeMessage>(WAIT),
            Incoming::Message(HandshakeMessage::Refused { .. })
        ));
    }
    // A line the server certainly writes after all of those.
    let _ann = ctx.join(&server, "ann");
    server.proc.expect_stderr_line("joined", WAIT);
    let lines = server.proc.lines(Stream::Stderr);
    let refusals: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    assert!(
        !refusals.is_empty() && refusals.len() <= 60,
        "{} refusal lines for 200 refusals",
        refusals.len()
    );
    for line in &lines {
        assert!(
            !line.contains('\u{1b}') && !line.contains('\u{7}'),
            "a raw control character in the log: {line:?}"
        );
        assert!(
            line.len() < 600,
            "an uncapped log line of {} bytes",
            line.len()
        );
    }
    assert!(
        refusals[0].contains("\\u{1b}"),
        "the escape is not shown escaped: {:?}",
        refusals[0]
    );
}

/// Joins a member to a server allowing 1 message/s in bursts of 5, sends `count` pings
/// `gap` apart without reading (stopping early if the server has hung up), then reads
/// everything: it must have been told to slow down, then why it was disconnected.
fn flood_with_pings_then_read(count: usize, gap: Duration) {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--rate", "1", "--burst", "5"]);
    let (mut flooder, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "flooder");
    for _ in 0..count {
        if flooder.try_send(&ClientMessage::Ping, WAIT).is_err() {
            break;
        }
        std::thread::sleep(gap);
    }
    let mut slowed = false;
    loop {
        match flooder.recv(WAIT) {
            Incoming::Message(ServerMessage::Reply(Reply::SlowDown)) => slowed = true,
            Incoming::Message(ServerMessage::Closing { reason }) => {
                assert_eq!(reason, LeaveReason::Flooding);
                break;
            }
            Incoming::Message(_) => {}
            Incoming::Closed => panic!("closed without saying why"),
            Incoming::TimedOut => panic!("{count} pings in a row were all answered"),
        }
    }
    assert!(slowed, "no slow-down before the disconnect");
}

#[test]
fn pings_count_against_the_flood_limit() {
    flood_with_pings_then_read(40, Duration::ZERO);
}

/// A flooder that keeps sending after it is cut off, and reads only at the end, still
/// finds out why: the server reads and discards until it hangs up rather than closing on
/// unread bytes (which resets the connection and can destroy the last lines).
#[test]
fn a_kicked_flooder_still_reads_why_it_was_kicked() {
    flood_with_pings_then_read(60, Duration::from_millis(20));
}

#[test]
fn joins_and_leaves_cost_more_than_a_message() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--rate", "0.01", "--burst", "20"]);
    let mut raw = RawClient::open(
        "churn",
        server.port(),
        "churn@localhost",
        server.name(),
        COOKIE,
    );
    // 20 tokens: four joins or leaves at 5 each, where 20 says would pass.
    assert!(matches!(raw.join("churn"), Reply::Joined { .. }));
    raw.send(&ClientMessage::Leave);
    assert_eq!(raw.expect_reply(), Reply::Left);
    assert!(matches!(raw.join("churn"), Reply::Joined { .. }));
    raw.send(&ClientMessage::Leave);
    assert_eq!(raw.expect_reply(), Reply::Left);
    assert_eq!(raw.join("churn"), Reply::SlowDown);
}

#[test]
fn private_messages_to_one_member_are_limited() {
    let ctx = Ctx::new();
    let server = ctx.start_server(
        "server@localhost",
        &[
            "--pm-rate",
            "0.01",
            "--pm-burst",
            "3",
            "--rate",
            "100",
            "--burst",
            "100",
        ],
    );
    let (mut victim, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "victim");
    let (mut a, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "a");
    let (mut b, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "b");
    let pm = |text: &str| ClientMessage::Private {
        id: 0,
        to: "victim".into(),
        text: text.into(),
    };
    for text in ["one", "two", "three"] {
        a.send(&pm(text));
        victim.expect_event(
            text,
            |k| matches!(k, protocol::EventKind::Private { text: t, .. } if t == text),
        );
    }
    // The victim has had its share: from anyone, the next one is refused.
    b.send(&pm("four"));
    assert_eq!(
        b.expect_reply(),
        Reply::RecipientBusy {
            nick: "victim".into()
        }
    );
    // Others can still be written to.
    a.send(&ClientMessage::Private {
        id: 0,
        to: "b".into(),
        text: "hi b".into(),
    });
    b.expect_event("hi b", |k| matches!(k, protocol::EventKind::Private { .. }));
}

#[test]
fn sighup_leaves_the_room_cleanly() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.proc.signal(Signal::Hup);
    bob.proc.expect_success(LONG);
    // A clean leave: no reason after it, as with Ctrl-D.
    let line = ann.expect_left("bob");
    assert!(line.ends_with("* bob has left *"), "{line:?}");
}
