//! BEAM nodes in chat-server's room: the Elixir ExMessenger client script (written from
//! the original's term shapes) next to native chat-clients, and a raw distribution peer
//! for what no well-behaved BEAM sends. Skipped without Elixir unless
//! `CHAT_REQUIRE_ELIXIR` is set.

use std::process::Command;
use std::time::{Duration, Instant};

use chat_tests::beam::{BEAM_COOKIE, RawBeam, elixir_or_skip};
use chat_tests::chaos::scaled;
use chat_tests::nodes::strings;
use chat_tests::{
    BIG_TEXTS_NO_FLOOD_LIMIT, Client, Ctx, LONG, RawClient, Server, Signal, Stream, WAIT,
};
use protocol::erlang::exmessenger::{self, Request};
use protocol::erlang::term::Term;

/// Waits for `nick`'s join on any client: natives print `S> * nick has joined *`, the
/// original client `S> nick: * nick has joined *`.
#[track_caller]
fn joined(client: &mut Client, nick: &str) {
    client.expect(&format!("* {nick} has joined *"));
}

/// Waits for `nick`'s departure on any client; returns the line.
#[track_caller]
fn left(client: &mut Client, nick: &str) -> String {
    client.expect(&format!("* {nick} has left *"))
}

/// Without Elixir, `None` (the test is skipped, unless `CHAT_REQUIRE_ELIXIR` makes that
/// a failure); otherwise a test context and chat-server with the BEAM cookie and `args`.
fn beam_server(args: &[&str]) -> Option<(Ctx, Server)> {
    if !elixir_or_skip() {
        return None;
    }
    let ctx = Ctx::new();
    let server = ctx
        .server("server@localhost")
        .cookie(BEAM_COOKIE)
        .args(args)
        .start();
    Some((ctx, server))
}

/// A native chat-client joined to `server` as `nick`, with the BEAM cookie.
fn native(ctx: &Ctx, server: &Server, nick: &str) -> Client {
    ctx.client(nick).to(server).cookie(BEAM_COOKIE).join()
}

/// A raw distribution peer named `<alive>@localhost`, through the handshake with
/// `server`.
fn raw_peer(server: &Server, alive: &str) -> RawBeam {
    RawBeam::connect(
        server.port(),
        &format!("{alive}@localhost"),
        server.name(),
        BEAM_COOKIE,
    )
    .expect("handshake")
}

/// Joins `nick` through `raw` with the original's `connect` call; fails unless the
/// answer is `{ok, ...}`.
fn raw_join(raw: &mut RawBeam, nick: &str) {
    let answer = raw
        .call(Request::Connect(nick.into()).to_term())
        .expect("join answer");
    assert_eq!(
        answer.as_tuple().map(|t| t[0].clone()),
        Some(Term::atom("ok")),
        "{nick}: {answer:?}"
    );
}

/// The room of acceptance 2: two native clients and two BEAM nodes.
#[test]
fn native_and_beam_clients_share_one_room() {
    let Some((ctx, server)) = beam_server(&[]) else {
        return;
    };
    let mut ann = native(&ctx, &server, "ann");
    let mut carl = ctx.beam_client(server.name(), "carl").join();
    joined(&mut ann, "carl");
    let mut bob = ctx.client("bob").to(&server).cookie(BEAM_COOKIE).spawn();
    assert_eq!(bob.expect_banner(), strings(&["ann", "bob", "carl"]));
    joined(&mut carl, "bob");
    let mut dave = ctx.beam_client(server.name(), "dave").spawn();
    // The BEAM join answer is the original's {ok, "a:b:c"}.
    assert_eq!(dave.expect_banner(), strings(&["ann:bob:carl:dave"]));
    for member in [&mut ann, &mut bob, &mut carl] {
        joined(member, "dave");
    }

    // Says reach exactly the others, in both directions.
    carl.send("hello from the BEAM");
    for member in [&mut ann, &mut bob, &mut dave] {
        member.expect_say("carl", "hello from the BEAM");
    }
    carl.expect_not_received("hello from the BEAM");
    ann.send("hello from Rust");
    for member in [&mut bob, &mut carl, &mut dave] {
        member.expect_say("ann", "hello from Rust");
    }
    ann.expect_not_received("hello from Rust");

    // Private messages both ways, seen by nobody else.
    carl.send("/pm ann psst from carl");
    ann.expect_private("carl", "psst from carl");
    bob.send("/pm dave psst from bob");
    dave.expect_private("bob", "psst from bob");
    for other in [&mut bob, &mut dave] {
        other.expect_not_received("psst from carl");
    }
    for other in [&mut ann, &mut carl] {
        other.expect_not_received("psst from bob");
    }
    // A private message to nobody: the BEAM sender is told (the original was silent).
    carl.send("/pm nobody hello?");
    carl.expect_from_server("server: no user named nobody in the room; message not sent");

    // Users listed the same way to both kinds.
    assert_eq!(carl.users(), strings(&["ann", "bob", "carl", "dave"]));
    assert_eq!(bob.users(), strings(&["ann", "bob", "carl", "dave"]));

    // Leave and rejoin.
    dave.send("/leave");
    dave.expect("You have exited the chatroom, you can rejoin with /join or quit with /quit");
    for member in [&mut ann, &mut bob, &mut carl] {
        left(member, "dave");
    }
    dave.send("/join");
    dave.expect_banner();
    joined(&mut ann, "dave");
    bob.send("/leave");
    bob.expect("You have exited the chatroom");
    left(&mut carl, "bob");
    bob.send("/join");
    joined(&mut carl, "bob");

    // Quit: the BEAM node disconnects and halts; the room sees a plain leave.
    carl.send("/quit");
    carl.proc.expect_success(LONG);
    let line = left(&mut ann, "carl");
    assert!(line.ends_with("has left *"), "{line}");
    ann.send("/quit");
    ann.proc.expect_success(LONG);
    left(&mut dave, "ann");
}

/// A BEAM node killed with SIGKILL leaves at once, and its nick is free again.
#[test]
fn a_killed_beam_node_leaves_at_once_and_frees_its_nick() {
    let Some((ctx, server)) = beam_server(&[]) else {
        return;
    };
    let mut ann = native(&ctx, &server, "ann");
    let mut carl = ctx.beam_client(server.name(), "carl").join();
    joined(&mut ann, "carl");
    carl.proc.signal(Signal::Kill);
    let line = left(&mut ann, "carl");
    assert!(line.ends_with("(connection lost)"), "{line}");
    let mut again = ctx.beam_client(server.name(), "carl").join();
    joined(&mut ann, "carl");
    again.send("back");
    ann.expect_say("carl", "back");
}

/// A wrong cookie on either side is refused.
#[test]
fn a_wrong_cookie_is_refused_both_ways() {
    let Some((ctx, mut server)) = beam_server(&[]) else {
        return;
    };
    // The BEAM side: Node.connect answers false.
    let mut intruder = ctx
        .beam_client(server.name(), "eve")
        .cookie("not-the-cookie")
        .spawn();
    intruder.expect("Could not connect to server, reason: false");
    server.proc.expect_stderr_line("handshake refused", WAIT);
    // Ours, a native client with a wrong cookie, as ever.
    let mut client = ctx.client("mallory").to(&server).cookie("wrong").spawn();
    client
        .proc
        .expect_stderr_line("not allowed (check the cookie)", WAIT);
    // And a raw distribution peer with a wrong cookie is refused in the handshake.
    let refused = RawBeam::connect(
        server.port(),
        "raw@localhost",
        server.name(),
        "not-the-cookie",
    );
    assert!(refused.is_err(), "the handshake should fail");
}

/// Acceptance 4: Node.ping pongs with the right cookie and pangs with a wrong one, and
/// Erlang's own `epmd -names` lists chat-server.
#[test]
fn node_ping_and_epmd_names_see_chat_server() {
    let Some((ctx, server)) = beam_server(&[]) else {
        return;
    };
    let ping = |cookie: &str, alive: &str| {
        let out = ctx
            .command("elixir")
            .args(["--sname", &format!("{alive}@localhost"), "--cookie", cookie])
            .args(["-e", "IO.puts(Node.ping(:\"server@localhost\"))"])
            .output()
            .expect("elixir runs");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ping(BEAM_COOKIE, "pinger"), "pong");
    assert_eq!(ping("wrong", "panger"), "pang");
    let names = Command::new("epmd")
        .arg("-names")
        .env("ERL_EPMD_PORT", ctx.epmd_port().to_string())
        .output()
        .expect("epmd runs");
    let names = String::from_utf8_lossy(&names.stdout);
    assert!(
        names.contains(&format!("name server at port {}", server.port())),
        "{names}"
    );
}

/// `--no-erlang` refuses distribution: the BEAM cannot connect, natives still can.
#[test]
fn no_erlang_refuses_beam_nodes() {
    let Some((ctx, mut server)) = beam_server(&["--no-erlang"]) else {
        return;
    };
    let mut carl = ctx.beam_client(server.name(), "carl").spawn();
    carl.expect("Could not connect to server, reason: false");
    server
        .proc
        .expect_stderr_line("Erlang distribution refused (--no-erlang)", WAIT);
    native(&ctx, &server, "ann");
}

/// What a BEAM node may not do: unknown terms, requests for another node's nick,
/// oversized and malformed frames, flooding. Each is refused or drops that node alone;
/// the rest of the room carries on.
#[test]
fn misbehaving_beam_nodes_affect_nobody_else() {
    let Some((ctx, server)) = beam_server(&["--rate", "50"]) else {
        return;
    };
    let mut ann = native(&ctx, &server, "ann");
    let mut carl = ctx.beam_client(server.name(), "carl").join();
    let mut eve = ctx.beam_client(server.name(), "eve").join();
    joined(&mut ann, "carl");
    joined(&mut ann, "eve");

    // Unknown terms: a cast and a raw message are ignored, an unknown call answered.
    eve.send("/cast {:launch, :missiles}");
    eve.send("/send :hello");
    eve.send("/call {:launch, :missiles}");
    eve.expect("reply: :unknown_request");
    // Another node's nick: speaking or listing as carl is ignored; leaving as carl is
    // not allowed; leaving as nobody is user_not_found.
    eve.send("/cast {:say, \"carl\", \"I am carl\"}");
    eve.send("/cast {:private_message, \"carl\", \"ann\", \"trust me\"}");
    eve.send("/call {:disconnect, \"carl\"}");
    eve.expect("reply: :not_allowed");
    eve.send("/call {:disconnect, \"nobody\"}");
    eve.expect("reply: :user_not_found");
    ann.expect_not_received("I am carl");
    ann.expect_not_received("trust me");
    // Invalid nicks and texts are refused with the original's answers.
    eve.send("/call {:connect, \"server\"}");
    eve.expect("reply: :nick_not_allowed");
    eve.send("/call {:connect, \"has space\"}");
    eve.expect("reply: :nick_not_allowed");
    eve.send("/call {:connect, \"carl\"}");
    eve.expect("reply: :nick_in_use");
    eve.send("/cast {:say, \"eve\", \"bell\\a\"}");
    eve.expect_from_server("server: message not sent (message contains control characters)");
    ann.expect_not_received("bell");
    carl.send("still here");
    ann.expect_say("carl", "still here");

    // A raw peer: an oversized frame is refused from its length; the peer is dropped.
    let mut raw = raw_peer(&server, "raw1");
    raw_join(&mut raw, "rawone");
    joined(&mut ann, "rawone");
    raw.write_raw(&[0, 1, 0, 1]).unwrap();
    assert!(
        raw.closed_within(LONG),
        "an oversized frame must close the link"
    );
    let gone = left(&mut ann, "rawone");
    assert!(gone.ends_with("(protocol error)"), "{gone}");
    // A malformed term and an unknown control operation do the same.
    for junk in [
        &[0, 0, 0, 4, 112, 131, 104, 9][..],
        &[0, 0, 0, 6, 112, 131, 104, 1, 97, 200],
        &[0, 0, 0, 3, 68, 1, 2],
    ] {
        let mut raw = raw_peer(&server, "raw2");
        raw.write_raw(junk).unwrap();
        assert!(raw.closed_within(LONG), "{junk:?} must close the link");
    }
    // A deeply nested term is refused without harm.
    let mut raw = raw_peer(&server, "raw3");
    let mut nested = vec![112, 131, 104, 4, 97, 6];
    nested.extend_from_slice(&[88, 119, 1, b'a', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    nested.extend_from_slice(&[119, 0, 119, 14]);
    nested.extend_from_slice(b"message_server");
    nested.push(131);
    for _ in 0..10_000 {
        nested.extend_from_slice(&[104, 1]);
    }
    nested.push(106);
    let mut frame = (nested.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&nested);
    raw.write_raw(&frame).unwrap();
    assert!(
        raw.closed_within(LONG),
        "a too deeply nested term must close the link"
    );

    // Flooding: refused with a notice, then the node is dropped; nobody else notices.
    for i in 0..60 {
        eve.send(&format!("flood {i}"));
    }
    eve.expect_from_server("server: slow down, message dropped (flood limit)");
    let gone = left(&mut ann, "eve");
    assert!(gone.ends_with("(excess flood)"), "{gone}");
    carl.send("after the flood");
    ann.expect_say("carl", "after the flood");
    assert_eq!(ann.users(), strings(&["ann", "carl"]));
}

/// One BEAM node may hold several nicks; when its connection drops, all leave at once.
#[test]
fn every_nick_of_a_dropped_node_leaves_at_once() {
    let Some((ctx, server)) = beam_server(&[]) else {
        return;
    };
    let mut ann = native(&ctx, &server, "ann");
    let mut raw = raw_peer(&server, "multi");
    for nick in ["one", "two", "three"] {
        raw_join(&mut raw, nick);
        ann.expect_joined(nick);
    }
    // A message for one of its nicks reaches the node's message_handler.
    ann.send("/pm two hi two");
    loop {
        let Some((_, Some(message))) = raw.next_message().unwrap() else {
            continue;
        };
        if exmessenger::parse_handler_message(&message)
            == Some(("ann (private)".into(), "hi two".into()))
        {
            break;
        }
    }
    drop(raw);
    // In whatever order the registry notices (it may find the node's queue closed while
    // telling the room about the first departure).
    let mut gone: Vec<String> = (0..3)
        .map(|_| {
            let line = ann.expect(" has left *");
            let after = line.split_once("> * ").map_or("", |(_, rest)| rest);
            after.split(' ').next().unwrap_or_default().to_string()
        })
        .collect();
    gone.sort();
    assert_eq!(gone, strings(&["one", "three", "two"]));
    assert_eq!(ann.users(), strings(&["ann"]));
}

/// Liveness, Erlang's way: a peer silent for four ticks is dropped, and idle BEAM nodes
/// (which tick) stay. The short form scales ticks down (1 s, a node ticking every second);
/// `CHAOS_SCALE=long` idles 190 s with the defaults (15 s ticks, Erlang's 60 s
/// net_ticktime), the "at least 3 minutes" of acceptance 2.
#[test]
fn idle_beam_nodes_stay_and_silent_peers_are_dropped() {
    let long = chat_tests::chaos::long_form();
    let server_args: &[&str] = if long { &[] } else { &["--tick", "1"] };
    let Some((ctx, server)) = beam_server(server_args) else {
        return;
    };
    let mut ann = native(&ctx, &server, "ann");
    let erl_args = if long { "" } else { "-kernel net_ticktime 4" };
    let mut carl = ctx
        .beam_client(server.name(), "carl")
        .erl_args(erl_args)
        .join();
    joined(&mut ann, "carl");
    // A raw peer that never ticks.
    let mut raw = raw_peer(&server, "mute");
    raw_join(&mut raw, "mute");
    joined(&mut ann, "mute");
    let silence_limit = Duration::from_secs(if long { 60 } else { 4 });
    let left = ann
        .proc
        .expect_line("* mute has left * (timed out)", silence_limit + LONG);
    assert!(left.contains("server@localhost>"), "{left}");
    // The idle BEAM node is still there after many times the silence limit.
    let idle = Duration::from_secs(scaled(15, 190));
    ann.proc.expect_no_output_for(&["carl has left"], idle);
    carl.send("still alive");
    ann.expect_say("carl", "still alive");
    ann.send("so am I");
    carl.expect_say("ann", "so am I");
}

/// A BEAM node that stops reading is a slow consumer like any other: its queue fills, it
/// alone is dropped (`send queue exceeded`), and the others keep receiving everything.
#[test]
fn a_beam_node_that_stops_reading_is_dropped_as_a_slow_consumer() {
    let args = [&BIG_TEXTS_NO_FLOOD_LIMIT[..], &["--send-queue", "16"]].concat();
    let Some((ctx, server)) = beam_server(&args) else {
        return;
    };
    let mut ann = native(&ctx, &server, "ann");
    let mut sloth = raw_peer(&server, "sloth");
    sloth.shrink_receive_buffer(4096).unwrap();
    raw_join(&mut sloth, "sloth");
    joined(&mut ann, "sloth");
    let (mut talker, _) =
        RawClient::open_joined(server.port(), server.name(), BEAM_COOKIE, "talker");
    joined(&mut ann, "talker");
    // Batches that ann prints in full before the next: she never has more than a batch
    // queued, while the sloth's socket and then its queue fill up.
    let padding = "x".repeat(16000);
    let mut sent = 0;
    let mut dropped = None;
    let started = Instant::now();
    while sent < 2000 && dropped.is_none() {
        let first = sent;
        for _ in 0..8 {
            talker.say(&format!("msg {sent:05} {padding}"));
            sent += 1;
        }
        for i in first..sent {
            ann.proc
                .expect_line(&format!("> talker: msg {i:05} "), WAIT);
        }
        dropped = ann.proc.poll_line(Stream::Any, "* sloth has left *");
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "still sending"
        );
    }
    let Some(line) = dropped else {
        ann.proc
            .fail(&format!("the sloth was not dropped after {sent} messages"));
    };
    assert!(line.ends_with("(send queue exceeded)"), "{line}");
    assert_eq!(ann.users(), strings(&["ann", "talker"]));
}
