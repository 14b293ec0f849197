//! chat-client joining an Erlang ExMessenger server: the project's Elixir server script
//! (a GenServer registered as message_server, written from the original's term shapes),
//! with an original-style Elixir client in the same room. The screens must be those of
//! chat-client against chat-server. Skipped without Elixir unless `CHAT_REQUIRE_ELIXIR`
//! is set.

use chat_tests::beam::{BEAM_COOKIE, ElixirServer, elixir_or_skip};
use chat_tests::net::epmd_names;
use chat_tests::nodes::{ClientBuilder, strings};
use chat_tests::{Ctx, LONG, Signal, WAIT};

/// Without Elixir, `None` (the test is skipped, unless `CHAT_REQUIRE_ELIXIR` makes that
/// a failure); otherwise a test context with the Elixir server running as `server`.
fn elixir_room() -> Option<(Ctx, ElixirServer)> {
    if !elixir_or_skip() {
        return None;
    }
    let ctx = Ctx::new();
    let server = ctx.elixir_server("server", BEAM_COOKIE);
    Some((ctx, server))
}

/// A chat-client for the Elixir server as `nick`, with the BEAM cookie.
fn elixir_client<'c>(ctx: &'c Ctx, server: &ElixirServer, nick: &str) -> ClientBuilder<'c> {
    ctx.client(nick)
        .server_arg(server.name(), server.name())
        .cookie(BEAM_COOKIE)
}

/// Acceptance 3: every command against the Elixir server, as against chat-server.
#[test]
fn chat_client_speaks_to_an_elixir_exmessenger_server() {
    let Some((ctx, server)) = elixir_room() else {
        return;
    };
    let mut ann = elixir_client(&ctx, &server, "ann").spawn();
    assert_eq!(ann.expect_banner(), strings(&["ann"]));
    let mut carl = ctx.beam_client(server.name(), "carl").join();
    ann.expect_joined("carl");

    // Says both ways.
    ann.send("hello from Rust");
    carl.expect_say("ann", "hello from Rust");
    carl.send("hello from Elixir");
    ann.expect_say("carl", "hello from Elixir");
    ann.expect_not_received("hello from Rust");
    // Private messages both ways, marked as such.
    ann.send("/pm carl psst");
    carl.expect_private("ann", "psst");
    carl.send("/pm ann psst back");
    ann.expect_private("carl", "psst back");
    // Users, as chat-server lists them.
    assert_eq!(ann.users(), strings(&["ann", "carl"]));
    // Leave and rejoin.
    ann.send("/leave");
    ann.expect("You have exited the chatroom, you can rejoin with /join or quit with /quit");
    carl.expect("* ann has left *");
    ann.send("hello?");
    ann.expect("You are not in the chatroom; use /join");
    ann.send("/join");
    assert_eq!(ann.expect_banner(), strings(&["ann", "carl"]));
    carl.expect("* ann has joined *");
    // Refused joins: the original's reasons, exit 1 at start-up.
    let mut twin = elixir_client(&ctx, &server, "carl").spawn();
    twin.expect("Could not join chatroom: nick carl is in use; pick another with --nick");
    twin.proc.expect_failure(LONG);
    let mut reserved = elixir_client(&ctx, &server, "server").spawn();
    reserved.expect(
        "Could not join chatroom: nick server is reserved for the server; pick another with --nick",
    );
    reserved.proc.expect_failure(LONG);
    // The other leaves.
    carl.send("/quit");
    carl.proc.expect_success(LONG);
    ann.expect_left("carl");
    // Quit.
    ann.send("/quit");
    ann.proc.expect_success(LONG);
}

/// A wrong cookie: the Erlang node closes the handshake; ours says why and exits 1.
#[test]
fn a_wrong_cookie_against_an_erlang_node_is_not_allowed() {
    let Some((ctx, server)) = elixir_room() else {
        return;
    };
    let mut client = elixir_client(&ctx, &server, "ann")
        .cookie("not-the-cookie")
        .spawn();
    client.proc.expect_stderr_line(
        "Could not connect to server@localhost: not allowed (check the cookie)",
        WAIT,
    );
    assert_eq!(client.proc.expect_failure(LONG), 1);
}

/// `--erlang` with an explicit port skips the port mapper and still speaks
/// distribution.
#[test]
fn an_explicit_port_with_erlang_skips_the_port_mapper() {
    let Some((ctx, server)) = elixir_room() else {
        return;
    };
    let names = epmd_names(ctx.epmd_port()).expect("the port mapper answers");
    let port = names
        .iter()
        .find(|(name, _)| name == "server")
        .map(|(_, port)| *port)
        .expect("the Elixir server is registered");
    let mut ann = ctx
        .client("ann")
        .server_arg(&format!("{}:{port}", server.name()), server.name())
        .cookie(BEAM_COOKIE)
        .args(&["--erlang"])
        .spawn();
    assert_eq!(ann.expect_banner(), strings(&["ann"]));
    assert_eq!(ann.users(), strings(&["ann"]));
}

/// Reconnect: the Elixir server restarts; chat-client says so, comes back and rejoins.
#[test]
fn chat_client_reconnects_after_the_elixir_server_restarts() {
    let Some((ctx, mut server)) = elixir_room() else {
        return;
    };
    let mut ann = elixir_client(&ctx, &server, "ann").reconnect().spawn();
    ann.expect_banner();
    server.proc.signal(Signal::Kill);
    ann.expect(
        "Connection to server@localhost lost: the server closed the connection; reconnecting...",
    );
    ctx.wait_unregistered("server");
    let _again = ctx.elixir_server("server", BEAM_COOKIE);
    // The new node may be reachable before its message_server is registered; then the
    // rejoin goes unanswered and the client reconnects again (with backoff) until it is.
    ann.expect("* Reconnected to server@localhost *");
    ann.proc.expect_line("* Joined the chatroom *", LONG * 3);
    ann.expect("* Users in the room: ann *");
    ann.send("/users");
    assert_eq!(ann.expect_users_answer(), strings(&["ann"]));
}

/// The terminal front end is the same against an Erlang server: incoming lines go above
/// the half-typed one, which survives them.
#[test]
fn the_line_editor_works_against_an_elixir_server() {
    let Some((ctx, server)) = elixir_room() else {
        return;
    };
    let mut ann = elixir_client(&ctx, &server, "ann").join_pty();
    let mut carl = ctx.beam_client(server.name(), "carl").join();
    ann.expect_from_server("* carl has joined *");
    ann.press("hello wor", "hello wor");
    carl.send("one");
    ann.expect_from_server("carl: one");
    ann.expect_input("hello wor");
    ann.type_line("ld");
    carl.expect_say("ann", "hello world");
    ann.submit("/users");
    ann.expect_exact_row("* Users in the room: ann, carl *");
}
