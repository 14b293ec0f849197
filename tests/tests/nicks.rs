//! Nick rules: the reserved `server`, nicks in use, invalid nicks, and nicks freed by
//! leaving, quitting or a dropped connection.

use chat_tests::nodes::{sorted, strings};
use chat_tests::{COOKIE, Client, Ctx, LONG, RawClient, Server, Signal};
use protocol::Reply;

/// Joins cost five messages against the flood limit; the tests that try many nicks in a
/// row get a limit that lets them.
const FLOOD_ROOM: &[&str] = &["--rate", "100", "--burst", "100"];

/// Starts a client that must be refused at start-up with `reason` (the words after
/// `Could not join chatroom: `, or their start); checks the message and the exit
/// status 1, and returns the refusal line.
#[track_caller]
fn expect_refused(ctx: &Ctx, server: &Server, nick: &str, reason: &str) -> String {
    let mut client = ctx.client(nick).to(server).spawn();
    let line = client
        .proc
        .expect_output(&format!("Could not join chatroom: {reason}"), LONG);
    let code = client.proc.expect_failure(LONG);
    if code != 1 {
        client.proc.fail(&format!(
            "expected exit status 1 after a refused join, got {code}"
        ));
    }
    line
}

#[test]
fn server_is_refused_in_any_letter_case() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    for nick in ["server", "SERVER", "Server"] {
        expect_refused(
            &ctx,
            &server,
            nick,
            &format!("nick {nick} is reserved for the server; pick another with --nick"),
        );
    }
    // Nobody joined, as far as the room can tell.
    ann.expect_not_received("has joined");
    assert_eq!(ann.users(), strings(&["ann"]));
}

#[test]
fn server_is_refused_over_the_protocol_too() {
    // The server enforces the rule itself, whatever a client checks first.
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", FLOOD_ROOM);
    let mut raw = RawClient::open("raw", server.port(), "raw@localhost", server.name(), COOKIE);
    for nick in ["server", "SERVER", "Server", "sErVeR"] {
        assert_eq!(raw.join(nick), Reply::NickNotAllowed, "nick {nick:?}");
    }
    // The connection is still good for a valid nick.
    assert!(matches!(raw.join("servers"), Reply::Joined { .. }));
}

#[test]
fn nick_in_use_is_refused() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");

    expect_refused(
        &ctx,
        &server,
        "ann",
        "nick ann is in use; pick another with --nick",
    );

    // The first ann is untouched: still in the room, still chatting, nobody saw a leave.
    ann.send("I am the real ann");
    bob.proc
        .expect_no_line_before("has left", "ann: I am the real ann", chat_tests::WAIT);
    assert_eq!(bob.users(), strings(&["ann", "bob"]));
}

#[test]
fn invalid_nicks_are_refused_with_a_reason() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");

    let too_long = "a".repeat(33);
    for nick in [too_long.as_str(), "jo hn"] {
        let line = expect_refused(
            &ctx,
            &server,
            nick,
            &format!("nick {nick} is not allowed ("),
        );
        let reason = line
            .split(" is not allowed (")
            .nth(1)
            .and_then(|r| r.strip_suffix("); pick another with --nick"))
            .unwrap_or("");
        assert!(
            !reason.trim().is_empty(),
            "no reason given for {nick:?}: {line:?}"
        );
    }
    // 32 bytes is still fine.
    let longest = "b".repeat(32);
    let mut b = ctx.join(&server, &longest);
    assert_eq!(sorted(&b.users()), vec!["ann".to_string(), longest.clone()]);
    ann.expect_joined(&longest);
}

#[test]
fn invalid_nicks_are_refused_by_the_server_with_a_reason() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", FLOOD_ROOM);
    let mut ann = ctx.join(&server, "ann");
    let mut raw = RawClient::open("raw", server.port(), "raw@localhost", server.name(), COOKIE);
    let too_long = "x".repeat(33);
    for nick in [
        "jo hn",
        "",
        too_long.as_str(),
        "tab\there",
        "esc\u{1b}[2J",
        "new\nline",
    ] {
        match raw.join(nick) {
            Reply::InvalidNick { reason } => {
                assert!(!reason.trim().is_empty(), "empty reason for {nick:?}")
            }
            other => panic!("nick {nick:?}: expected InvalidNick, got {other:?}"),
        }
    }
    // None of them reached the room.
    ann.expect_not_received("has joined");
    assert_eq!(ann.users(), strings(&["ann"]));
}

fn room_with_ann_and_bob() -> (Ctx, Server, Client, Client) {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    bob.expect_not_received("has left");
    (ctx, server, ann, bob)
}

#[test]
fn nick_freed_by_leave_is_free_again() {
    let (ctx, server, mut ann, mut bob) = room_with_ann_and_bob();
    ann.send("/leave");
    ann.expect("You have exited the chatroom");
    bob.expect_left("ann");

    let mut ann2 = ctx.join(&server, "ann");
    bob.expect_joined("ann");
    ann2.send("new ann here");
    bob.expect_say("ann", "new ann here");

    // Now the first client cannot get its nick back.
    ann.send("/join");
    ann.expect("Could not join chatroom: nick ann is in use; pick another with --nick");
    assert!(
        ann.proc.try_status().is_none(),
        "a refused /join must not end the client"
    );
}

#[test]
fn nick_freed_by_quit_is_free_again() {
    let (ctx, server, mut ann, mut bob) = room_with_ann_and_bob();
    ann.send("/quit");
    ann.proc.expect_success(LONG);
    bob.expect_left("ann");

    let mut ann2 = ctx.join(&server, "ann");
    bob.expect_joined("ann");
    ann2.send("another ann");
    bob.expect_say("ann", "another ann");
}

#[test]
fn nick_freed_by_a_dropped_connection_is_free_again() {
    let (ctx, server, mut ann, mut bob) = room_with_ann_and_bob();
    ann.proc.signal(Signal::Kill);
    bob.expect_left("ann");

    let mut ann2 = ctx.join(&server, "ann");
    bob.expect_joined("ann");
    ann2.send("ann is back");
    bob.expect_say("ann", "ann is back");
    assert_eq!(bob.users(), strings(&["ann", "bob"]));
}

#[test]
fn look_alike_and_invisible_nicks_are_refused_with_a_reason() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", FLOOD_ROOM);
    let mut ann = ctx.join(&server, "ann");
    let mut raw = RawClient::open("raw", server.port(), "raw@localhost", server.name(), COOKIE);
    // Case, a combining accent (NFC makes it one letter) and a Cyrillic a: all `ann`.
    for nick in ["Ann", "ANN", "a\u{301}nn", "\u{e1}nn", "\u{430}nn"] {
        assert_eq!(raw.join(nick), Reply::NickInUse, "nick {nick:?}");
    }
    // Invisible and direction-changing characters: refused outright.
    for nick in ["ann\u{200b}", "\u{202e}nna", "a\u{ad}nn", "\u{2066}bob"] {
        match raw.join(nick) {
            Reply::InvalidNick { reason } => assert!(
                reason.contains("invisible, format or text-direction"),
                "{nick:?}: {reason}"
            ),
            other => panic!("{nick:?} was not refused as invalid: {other:?}"),
        }
    }
    // `server` in every disguise.
    for nick in ["\u{405}erver", "serv\u{435}r", "se\u{301}rver", "SERVER"] {
        assert_eq!(raw.join(nick), Reply::NickNotAllowed, "nick {nick:?}");
    }
    // The real client says why.
    expect_refused(
        &ctx,
        &server,
        "Ann",
        "nick Ann is in use; pick another with --nick",
    );
    ann.expect_not_received("has joined");
    assert_eq!(ann.users(), strings(&["ann"]));

    // A nick is shown as NFC, and texts that reverse their own direction are refused.
    assert!(matches!(raw.join("zo\u{65}\u{308}"), Reply::Joined { .. }));
    ann.expect_joined("zo\u{eb}");
    raw.say("open invoice\u{202e}fdp.exe");
    match raw.expect_reply() {
        Reply::InvalidText { reason } => assert!(reason.contains("text-direction"), "{reason}"),
        other => panic!("a bidi override was not refused: {other:?}"),
    }
    ann.expect_not_received("invoice");
}
