//! Nothing said is lost (issue 12): a client whose link is cut silently comes back,
//! resumes its session with its nick, prints exactly what it missed, once and in order,
//! then live lines; a say typed during the cut reaches the room once; a gap older than
//! the server's history and a server restart are told; a newcomer sees the backlog.
//!
//! The cut client talks to the server through a [`FaultProxy`]; the server ticks every
//! 4 s, so the client gives up on the silent link after 10 s (two ticks and its grace)
//! and is back before the server would give up on it (four ticks, 16 s). Each cut costs
//! a test about ten seconds.

use chat_tests::faults::FaultProxy;
use chat_tests::nodes::ClientBuilder;
use chat_tests::{Client, Ctx, LONG, Server, Signal, Stream, WAIT};

const NAME: &str = "server@localhost";

/// The server's liveness tick for these tests, in seconds.
const TICK: &str = "4";

/// `S> nick: text`, as every client prints a say.
fn say_line(nick: &str, text: &str) -> String {
    format!("{NAME}> {nick}: {text}")
}

/// A reconnecting client that reaches `server` through `proxy`.
fn through<'a>(ctx: &'a Ctx, server: &Server, proxy: &FaultProxy, nick: &str) -> ClientBuilder<'a> {
    ctx.client(nick)
        .server_arg(
            &format!("{}:{}", server.name(), proxy.port()),
            server.name(),
        )
        .reconnect()
}

/// Every stdout line of `client` so far.
fn stdout(client: &mut Client) -> Vec<String> {
    client.proc.lines(Stream::Stdout)
}

/// How many stdout lines of `client` are exactly `line`.
fn count(client: &mut Client, line: &str) -> usize {
    stdout(client).iter().filter(|l| *l == line).count()
}

/// The stdout lines of `client` after the last one that is exactly `marker`.
#[track_caller]
fn after_last(client: &mut Client, marker: &str) -> Vec<String> {
    let lines = stdout(client);
    match lines.iter().rposition(|l| l == marker) {
        Some(i) => lines[i + 1..].to_vec(),
        None => client.proc.fail(&format!("no line {marker:?}")),
    }
}

/// Waits for the cut client to notice, reconnect and be back in the room.
#[track_caller]
fn expect_resumed(client: &mut Client) {
    client
        .proc
        .expect_line(&format!("* Reconnected to {NAME} *"), LONG);
    client.proc.expect_line("* Back in the chatroom *", WAIT);
}

#[test]
fn twenty_messages_said_during_a_cut_are_printed_once_in_order_then_live_lines() {
    let ctx = Ctx::new();
    let server = ctx.start_server(NAME, &["--tick", TICK]);
    let proxy = FaultProxy::start(server.port());
    let mut ann = through(&ctx, &server, &proxy, "ann").join();
    let mut bob = ctx.join(&server, "bob");
    let mut cy = ctx.join(&server, "cy");
    ann.expect_joined("bob");
    ann.expect_joined("cy");
    bob.send("before the cut");
    ann.expect_say("bob", "before the cut");

    proxy.cut();
    // Typed by ann during the cut: it goes into the void, unacknowledged.
    ann.send("typed during the cut");
    let said: Vec<String> = (1..=20).map(|i| format!("m{i:02}")).collect();
    for text in &said {
        bob.send(text);
    }
    cy.expect_say("bob", "m20");

    expect_resumed(&mut ann);
    ann.proc
        .expect_line("* 20 messages while you were away *", WAIT);
    ann.expect_say("bob", "m20");
    bob.send("live again");
    ann.expect_say("bob", "live again");

    // Exactly the twenty, in order, once, then the live line.
    let mut expected: Vec<String> = said.iter().map(|t| say_line("bob", t)).collect();
    expected.push(say_line("bob", "live again"));
    assert_eq!(
        after_last(&mut ann, "* 20 messages while you were away *"),
        expected
    );
    for text in &said {
        assert_eq!(count(&mut ann, &say_line("bob", text)), 1, "{text}");
    }
    // The nick came back at once: no refusal, and nobody saw ann leave.
    assert!(!ann.proc.seen("nick_in_use"));

    // The say typed during the cut reached the others once, after the reconnect; what
    // ann says next comes after it.
    ann.send("after the cut");
    for other in [&mut bob, &mut cy] {
        other.expect_say("ann", "after the cut");
        assert_eq!(
            count(other, &say_line("ann", "typed during the cut")),
            1,
            "{}",
            other.nick()
        );
        assert!(!other.proc.seen("* ann has left *"), "{}", other.nick());
        assert!(!other.proc.seen("* ann has joined *"), "{}", other.nick());
    }
}

#[test]
fn two_cuts_in_a_row_replay_nothing_twice() {
    let ctx = Ctx::new();
    let server = ctx.start_server(NAME, &["--tick", TICK]);
    let proxy = FaultProxy::start(server.port());
    let mut ann = through(&ctx, &server, &proxy, "ann").join();
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.send("one");
    ann.expect_say("bob", "one");

    proxy.cut();
    bob.send("two");
    bob.send("three");
    bob.users();
    expect_resumed(&mut ann);
    ann.proc
        .expect_line("* 2 messages while you were away *", WAIT);
    ann.expect_say("bob", "three");

    // Cut again at once, with nothing said in between.
    proxy.cut();
    expect_resumed(&mut ann);
    bob.send("four");
    ann.expect_say("bob", "four");

    assert_eq!(
        after_last(&mut ann, "* Back in the chatroom *"),
        [say_line("bob", "four")]
    );
    for text in ["one", "two", "three", "four"] {
        assert_eq!(count(&mut ann, &say_line("bob", text)), 1, "{text}");
    }
    assert_eq!(count(&mut ann, "* 2 messages while you were away *"), 1);
    assert_eq!(count(&mut ann, "* Back in the chatroom *"), 2);
}

#[test]
fn a_gap_older_than_the_history_is_told_with_the_count() {
    let ctx = Ctx::new();
    // The history keeps thirty events (enough for members to keep up live: a member
    // whose writer falls out of the history is a slow consumer).
    let server = ctx.start_server(NAME, &["--tick", TICK, "--history", "30"]);
    let proxy = FaultProxy::start(server.port());
    let mut ann = through(&ctx, &server, &proxy, "ann").join();
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.send("before the cut");
    ann.expect_say("bob", "before the cut");

    proxy.cut();
    for i in 1..=50 {
        bob.send(&format!("m{i:02}"));
    }
    // bob's own barrier: his says are in the room's order once /users is answered.
    bob.users();

    expect_resumed(&mut ann);
    ann.expect_say("bob", "m50");
    let expected: Vec<String> = [
        "* 20 earlier messages are no longer available *".to_string(),
        "* 30 messages while you were away *".to_string(),
    ]
    .into_iter()
    .chain((21..=50).map(|i| say_line("bob", &format!("m{i:02}"))))
    .collect();
    assert_eq!(after_last(&mut ann, "* Back in the chatroom *"), expected);
    assert_eq!(count(&mut ann, &say_line("bob", "before the cut")), 1);
}

#[test]
fn a_server_restart_is_told_and_nothing_is_printed_twice() {
    let ctx = Ctx::new();
    let mut server = ctx.start_server(NAME, &[]);
    let mut ann = ctx.client("ann").to(&server).reconnect().join();
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.send("before the restart");
    ann.expect_say("bob", "before the restart");

    server.proc.signal(Signal::Kill);
    server.proc.wait_exit(LONG);
    ctx.wait_unregistered(server.alive());
    let server = ctx.start_server(NAME, &[]);

    ann.proc.expect_line(
        "* server restarted; what was said while it was down is not available *",
        LONG,
    );
    ann.expect_banner();
    let mut cy = ctx.join(&server, "cy");
    ann.expect_joined("cy");
    cy.send("after the restart");
    ann.expect_say("cy", "after the restart");

    assert_eq!(count(&mut ann, &say_line("bob", "before the restart")), 1);
    assert_eq!(
        count(
            &mut ann,
            "* server restarted; what was said while it was down is not available *"
        ),
        1
    );
    assert!(!ann.proc.seen("while you were away"));
}

#[test]
fn a_newcomer_sees_the_last_messages_marked_as_earlier() {
    let ctx = Ctx::new();
    let server = ctx.start_server(NAME, &[]);
    let mut bob = ctx.join(&server, "bob");
    let mut cy = ctx.join(&server, "cy");
    for i in 1..=12 {
        bob.send(&format!("b{i:02}"));
    }
    cy.expect_say("bob", "b12");

    // The default backlog is ten messages.
    let mut ann = ctx.join(&server, "ann");
    bob.expect_joined("ann");
    bob.send("live");
    ann.expect_say("bob", "live");
    let mut expected: Vec<String> = (3..=12)
        .map(|i| format!("[earlier] {}", say_line("bob", &format!("b{i:02}"))))
        .collect();
    expected.push(say_line("bob", "live"));
    assert_eq!(after_last(&mut ann, "* Type /help for options *"), expected);

    // --backlog 0: none.
    let mut dan = ctx
        .client("dan")
        .to(&server)
        .args(&["--backlog", "0"])
        .join();
    bob.expect_joined("dan");
    bob.send("live 2");
    dan.expect_say("bob", "live 2");
    assert_eq!(
        after_last(&mut dan, "* Type /help for options *"),
        [say_line("bob", "live 2")]
    );
}
