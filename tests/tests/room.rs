//! The room, as three users see it: banners, says, private messages, `/users`,
//! `/leave` and `/join`, `/quit`, piped input, and the client's own commands.

use chat_tests::nodes::{sorted, strings};
use chat_tests::{Client, Ctx, LONG, Server, Stream, WAIT};

/// A server and ann, bob and carol joined, in that order, each having seen the later
/// ones join.
fn room() -> (Ctx, Server, Client, Client, Client) {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    let carol = ctx.join(&server, "carol");
    ann.expect_joined("carol");
    bob.expect_joined("carol");
    (ctx, server, ann, bob, carol)
}

#[track_caller]
fn assert_line_ends_with(client: &mut Client, line: &str, end: &str) {
    if !line.ends_with(end) {
        client
            .proc
            .fail(&format!("expected the line {line:?} to end with {end:?}"));
    }
}

#[test]
fn join_banners_and_user_lists() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);

    let mut ann = ctx.client("ann").to(&server).spawn();
    let own = ann
        .own_name()
        .expect("the harness names clients")
        .to_string();
    ann.expect(&format!("Connecting to server@localhost from {own} ..."));
    ann.expect("Connected");
    assert_eq!(ann.expect_banner(), strings(&["ann"]));
    ann.expect("* Type /help for options *");

    let mut bob = ctx.client("bob").to(&server).spawn();
    assert_eq!(sorted(&bob.expect_banner()), strings(&["ann", "bob"]));
    let line = ann.expect_joined("bob");
    assert_eq!(line, "server@localhost> * bob has joined *");

    let mut carol = ctx.join(&server, "carol");
    // The banner is printed by `join`; ask again to see the list it had.
    assert_eq!(carol.users(), strings(&["ann", "bob", "carol"]));
    ann.expect_joined("carol");
    bob.expect_joined("carol");

    // Nobody is told about their own join.
    bob.expect_not_received("* bob has joined *");
    carol.expect_not_received("* carol has joined *");

    // `/users` answers with everybody, sorted.
    for client in [&mut ann, &mut bob, &mut carol] {
        assert_eq!(client.users(), strings(&["ann", "bob", "carol"]));
    }
}

#[test]
fn banner_lists_users_on_join() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let _ann = ctx.join(&server, "ann");
    let _bob = ctx.join(&server, "bob");
    let mut carol = ctx.client("carol").to(&server).spawn();
    assert_eq!(
        sorted(&carol.expect_banner()),
        strings(&["ann", "bob", "carol"])
    );
}

#[test]
fn client_default_own_node_name_is_nick_at_host() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.client("ann").to(&server).default_own_name().spawn();
    let line = ann.expect("Connecting to server@localhost from ann@");
    if !line.ends_with(" ...") {
        ann.proc
            .fail(&format!("unexpected connecting line {line:?}"));
    }
    ann.expect_banner();
}

#[test]
fn nick_defaults_to_user() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut zed = ctx.client("zed").to(&server).nick_from_user().join();
    assert_eq!(zed.users(), strings(&["zed"]));
}

#[test]
fn join_while_joined_is_refused_without_ending_the_client() {
    let (_ctx, _server, mut ann, mut bob, _carol) = room();
    ann.send("/join");
    ann.expect("Could not join chatroom: you are already in the room");
    bob.expect_not_received("ann has joined");
    ann.send("still in");
    bob.expect_say("ann", "still in");
}

#[test]
fn a_say_reaches_exactly_the_other_two() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    ann.send("hello from ann, with\ttab and ☃");
    let line = bob.expect_say("ann", "hello from ann");
    assert_eq!(
        line,
        "server@localhost> ann: hello from ann, with\ttab and ☃"
    );
    carol.expect_say("ann", "hello from ann, with\ttab and ☃");
    // The sender is not echoed its own message.
    ann.expect_not_received("hello from ann");

    // And the other way round, to see it is not about who joined first.
    carol.send("carol says hi");
    ann.expect_say("carol", "carol says hi");
    bob.expect_say("carol", "carol says hi");
    carol.expect_not_received("carol says hi");
}

#[test]
fn pm_reaches_exactly_one() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    ann.send("/pm bob psst, only for bob");
    let line = bob.expect_private("ann", "psst, only for bob");
    assert_eq!(line, "server@localhost> ann (private): psst, only for bob");
    // bob has it, so the server has handled it: carol's barrier is now meaningful.
    carol.expect_not_received("psst, only for bob");
    ann.expect_not_received("ann (private): psst");

    // A line with /pm in the middle is an ordinary say (a defect of the original).
    carol.send("try /pm bob hey");
    ann.expect_say("carol", "try /pm bob hey");
    bob.expect_say("carol", "try /pm bob hey");
}

#[test]
fn pm_to_unknown_nick_is_reported_to_the_sender_only() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    ann.send("/pm dave are you there?");
    let line = ann.expect_from_server("server: no user named dave in the room; message not sent");
    assert_eq!(
        line,
        "server@localhost> server: no user named dave in the room; message not sent"
    );
    bob.expect_not_received("are you there?");
    carol.expect_not_received("are you there?");
    bob.expect_not_received("no user named dave");
}

#[test]
fn pm_usage_is_explained() {
    let (_ctx, _server, mut ann, mut bob, _carol) = room();
    ann.send("/pm bob");
    ann.expect("Usage: /pm <nick> <message>");
    ann.send("/pm");
    ann.expect("Usage: /pm <nick> <message>");
    bob.expect_not_received("(private)");
}

#[test]
fn users_reflects_joins_and_departures() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    assert_eq!(ann.users(), strings(&["ann", "bob", "carol"]));
    carol.send("/quit");
    carol.proc.expect_success(LONG);
    ann.expect_left("carol");
    assert_eq!(ann.users(), strings(&["ann", "bob"]));
    bob.expect_left("carol");
    assert_eq!(bob.users(), strings(&["ann", "bob"]));
}

#[test]
fn leave_then_join_with_the_same_nick() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();

    ann.send("/leave");
    ann.expect("You have exited the chatroom, you can rejoin with /join or quit with /quit");
    let line = bob.expect_left("ann");
    assert_line_ends_with(&mut bob, &line, "> * ann has left *");
    let line = carol.expect_left("ann");
    assert_line_ends_with(&mut carol, &line, "> * ann has left *");
    assert_eq!(bob.users(), strings(&["bob", "carol"]));

    // While out, ann gets nothing from the room and cannot say anything.
    bob.send("while ann is away");
    carol.expect_say("bob", "while ann is away");
    ann.send("am I still here?");
    ann.expect("You are not in the chatroom; use /join");
    bob.expect_not_received("am I still here?");
    carol.expect_not_received("am I still here?");

    ann.send("/join");
    // bob's say was handled before this join, so it would have come first.
    ann.proc
        .expect_no_line_before("while ann is away", "* Joined the chatroom *", WAIT);
    let users = ann.proc.expect_line("* Users in the room: ", WAIT);
    assert_eq!(
        sorted(&chat_tests::nodes::parse_list(&users, "* Users in the room: ", " *").unwrap()),
        strings(&["ann", "bob", "carol"])
    );
    // The hint to /help came with the first join only (the same list answers /users).
    ann.send("/users");
    ann.proc
        .expect_no_line_before("* Type /help for options *", "* Users in the room: ", WAIT);
    bob.expect_joined("ann");
    carol.expect_joined("ann");

    ann.send("back again");
    bob.expect_say("ann", "back again");
    carol.expect_say("ann", "back again");
    assert_eq!(carol.users(), strings(&["ann", "bob", "carol"]));
}

#[test]
fn quit_tells_the_others_and_exits_zero() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    ann.send("/quit");
    ann.proc.expect_success(LONG);
    let line = bob.expect_left("ann");
    assert_line_ends_with(&mut bob, &line, "> * ann has left *");
    let line = carol.expect_left("ann");
    assert_line_ends_with(&mut carol, &line, "> * ann has left *");
    assert_eq!(bob.users(), strings(&["bob", "carol"]));
}

#[test]
fn piped_stdin_is_handled_in_order_and_end_of_input_leaves_cleanly() {
    let (ctx, server, _ann, mut bob, mut carol) = room();
    // Everything is written at once, before the client has even connected, and the
    // input ends right after: the client must handle every line, in order, then leave.
    let mut dan = ctx.client("dan").to(&server).spawn();
    dan.proc
        .write_stdin(b"first line\nsecond line\n/pm bob third, private\nfourth line\n");
    dan.close_stdin();

    bob.expect_joined("dan");
    bob.expect_say("dan", "first line");
    bob.expect_say("dan", "second line");
    bob.expect_private("dan", "third, private");
    bob.expect_say("dan", "fourth line");
    let line = bob.expect_left("dan");
    assert_line_ends_with(&mut bob, &line, "> * dan has left *");

    carol.expect_joined("dan");
    carol.expect_say("dan", "first line");
    carol.expect_say("dan", "second line");
    let line = carol
        .proc
        .expect_no_line_before("third, private", "* dan has left *", WAIT);
    assert_line_ends_with(&mut carol, &line, "> * dan has left *");
    if !carol
        .proc
        .lines(Stream::Stdout)
        .iter()
        .any(|l| l.ends_with("> dan: fourth line"))
    {
        carol.proc.fail("carol never saw dan's fourth line");
    }

    dan.proc.expect_success(LONG);
    dan.proc.expect_line("* Joined the chatroom *", WAIT);
    assert_eq!(bob.users(), strings(&["ann", "bob", "carol"]));
}

#[test]
fn double_slash_sends_a_literal_slash() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    ann.send("//etc/motd is a path, not a command");
    let line = bob.expect_say("ann", "/etc/motd is a path");
    assert_eq!(
        line,
        "server@localhost> ann: /etc/motd is a path, not a command"
    );
    carol.expect_say("ann", "/etc/motd is a path, not a command");
}

#[test]
fn unknown_command_prints_an_error_and_sends_nothing() {
    let (_ctx, _server, mut ann, mut bob, mut carol) = room();
    ann.send("/frobnicate now");
    ann.expect("Unknown command /frobnicate; type /help for the list");
    bob.expect_not_received("frobnicate");
    carol.expect_not_received("frobnicate");
    // The client is still fine.
    ann.send("still here");
    bob.expect_say("ann", "still here");
}

#[test]
fn empty_lines_are_ignored() {
    let (_ctx, _server, mut ann, mut bob, _carol) = room();
    ann.send("");
    ann.send("after the empty line");
    // Any say from ann before this one would be the empty line.
    bob.proc.expect_no_line_before(
        "server@localhost> ann: ",
        "server@localhost> ann: after the empty line",
        WAIT,
    );
}

#[test]
fn help_lists_the_commands() {
    let (_ctx, _server, mut ann, mut bob, _carol) = room();
    let before = ann.proc.lines(Stream::Stdout).len();
    ann.send("/help");
    // The answer to /users comes after all of the help text.
    ann.users();
    let lines = ann.proc.lines(Stream::Stdout);
    let help = lines[before..].join("\n");
    for command in ["/join", "/leave", "/users", "/pm", "/quit"] {
        if !help.contains(command) {
            ann.proc
                .fail(&format!("/help does not mention {command}:\n{help}"));
        }
    }
    bob.expect_not_received("/help");
}

#[test]
fn commands_ignore_letter_case_and_accept_irc_names() {
    let (_ctx, _server, mut ann, mut bob, _carol) = room();
    // A private message is echoed to its sender, as IRC clients show it.
    ann.send("/PM bob psst");
    bob.expect_private("ann", "psst");
    ann.expect("-> bob: psst");
    ann.send("/msg bob again");
    bob.expect_private("ann", "again");
    ann.expect("-> bob: again");
    ann.send("/Names");
    ann.expect_users_answer();
    // A command that takes nothing refuses what it is given, rather than ignore it.
    ann.send("/users extra");
    ann.expect("Usage: /users (it takes no arguments)");
    ann.send("/me waves");
    ann.expect("There is no /me here");
    bob.expect_not_received("waves");
    ann.send("/help");
    for name in ["/part", "/names", "/msg", "/me"] {
        ann.expect(name);
    }
    ann.send("/part");
    ann.expect("You have exited the chatroom");
    bob.expect_left("ann");
}
