//! The cookie: a wrong one is refused and logged, it never crosses the wire, and the
//! default `~/.erlang.cookie` is created and used.

use std::os::unix::fs::PermissionsExt;

use chat_tests::net::{RecordingProxy, contains_bytes};
use chat_tests::nodes::strings;
use chat_tests::{COOKIE, Ctx, Incoming, LONG, RawClient, WAIT};
use protocol::HandshakeMessage;
use protocol::secure::RefuseReason;

#[test]
fn a_wrong_cookie_is_refused_logged_and_unseen_by_the_room() {
    let ctx = Ctx::new();
    let mut server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");

    let mut mallory = ctx
        .client("mallory")
        .to(&server)
        .cookie("not-the-right-cookie")
        .spawn();
    let own = mallory
        .own_name()
        .expect("named by the harness")
        .to_string();
    mallory.proc.expect_stderr_line(
        "Could not connect to server@localhost: not allowed (check the cookie)",
        LONG,
    );
    let code = mallory.proc.expect_failure(LONG);
    assert_eq!(code, 1, "exit status after a refused cookie");
    if mallory.proc.seen("* Joined the chatroom *") {
        mallory.proc.fail("joined the room with a wrong cookie");
    }

    // The room saw nothing.
    ann.expect_not_received("mallory");
    assert_eq!(ann.users(), strings(&["ann"]));

    // The server logged a warning with the peer address and the claimed name.
    let log = server.proc.expect_stderr_line("handshake refused", WAIT);
    assert!(log.contains("WARN"), "not a WARN line: {log:?}");
    assert!(log.contains("127.0.0.1"), "no peer address in {log:?}");
    assert!(
        log.contains(&own),
        "no claimed node name {own:?} in {log:?}"
    );
    assert!(
        !log.contains(COOKIE) && !log.contains("not-the-right-cookie"),
        "a cookie in the log: {log:?}"
    );
}

#[test]
fn a_wrong_cookie_is_refused_at_the_protocol_level() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    // The client finds out first: the server's key confirmation does not verify.
    let mut raw = RawClient::connect("raw", server.port());
    let result = raw.handshake("raw@localhost", server.name(), "guess");
    assert_eq!(
        result,
        Err("the key confirmation failed (a different cookie?)".to_string())
    );

    // A client that confirms anyway is refused with the generic reason, and closed.
    let mut liar = RawClient::connect("liar", server.port());
    let (_machine, hello) = protocol::ClientHandshake::new(
        protocol::NodeName::parse_long("liar@localhost").unwrap(),
        protocol::NodeName::parse_long(server.name()).unwrap(),
        protocol::Cookie::new("guess").unwrap(),
    );
    liar.send_preamble();
    liar.write_bytes(&hello);
    assert!(matches!(
        liar.read_message::<HandshakeMessage>(WAIT),
        Incoming::Message(HandshakeMessage::Challenge { .. })
    ));
    liar.send_handshake(&HandshakeMessage::Confirm { confirm: [7; 32] });
    match liar.read_message::<HandshakeMessage>(WAIT) {
        Incoming::Message(HandshakeMessage::Refused {
            reason: RefuseReason::NotAllowed,
        }) => {}
        other => panic!("expected a generic refusal, got {other:?}"),
    }
    liar.expect_closed(WAIT);

    // And the right cookie works on the same server.
    let mut ok = RawClient::connect("ok", server.port());
    assert!(ok.handshake("ok@localhost", server.name(), COOKIE).is_ok());
}

#[test]
fn the_cookie_never_appears_on_the_wire() {
    let cookie = "s3cret-Cookie-that-must-never-leak-7f3a9";
    let ctx = Ctx::new();
    let server = ctx.server("server@localhost").cookie(cookie).start();
    let proxy = RecordingProxy::start(server.port());
    let via_proxy = format!("server@localhost:{}", proxy.port());

    let mut bob = ctx.client("bob").to(&server).cookie(cookie).join();
    // A whole session through the proxy: join, say, pm, users, leave, join, quit.
    let mut ann = ctx
        .client("ann")
        .server_arg(&via_proxy, "server@localhost")
        .cookie(cookie)
        .join();
    bob.expect_joined("ann");
    ann.send("a public message through the proxy");
    bob.expect_say("ann", "a public message through the proxy");
    ann.send("/pm bob a private one");
    bob.expect_private("ann", "a private one");
    bob.send("bob answers");
    ann.expect_say("bob", "bob answers");
    assert_eq!(ann.users(), strings(&["ann", "bob"]));
    ann.send("/leave");
    bob.expect_left("ann");
    ann.send("/join");
    ann.expect("* Joined the chatroom *");
    bob.expect_joined("ann");
    ann.send("/quit");
    ann.proc.expect_success(LONG);
    bob.expect_left("ann");

    // A refused attempt through the proxy, with another cookie, leaks nothing either.
    let wrong = "w r o n g-cookie-also-secret";
    let mut eve = ctx
        .client("eve")
        .server_arg(&via_proxy, "server@localhost")
        .cookie(wrong)
        .spawn();
    eve.proc
        .expect_stderr_line("not allowed (check the cookie)", LONG);
    eve.proc.expect_failure(LONG);

    let rec = proxy.recorded();
    assert_eq!(rec.connections, 2, "both clients went through the proxy");
    // The recording works (it has the preamble), and nothing said is in it: the
    // session is encrypted.
    assert!(rec.upstream.starts_with(b"EXM"), "no preamble recorded");
    for said in [
        &b"a public message through the proxy"[..],
        b"a private one",
        b"bob answers",
    ] {
        assert!(
            !contains_bytes(&rec.upstream, said) && !contains_bytes(&rec.downstream, said),
            "{:?} crossed the wire in clear",
            String::from_utf8_lossy(said)
        );
    }
    for secret in [cookie, wrong] {
        assert!(
            !contains_bytes(&rec.upstream, secret.as_bytes()),
            "the cookie {secret:?} was sent to the server"
        );
        assert!(
            !contains_bytes(&rec.downstream, secret.as_bytes()),
            "the cookie {secret:?} was sent to the client"
        );
    }
}

#[test]
fn without_a_cookie_flag_the_erlang_cookie_file_is_created_and_used() {
    let ctx = Ctx::new();
    let cookie_file = ctx.home().join(".erlang.cookie");
    assert!(!cookie_file.exists());

    let server = ctx.server("server@localhost").no_cookie().start();
    let meta = std::fs::metadata(&cookie_file)
        .unwrap_or_else(|e| panic!("{} was not created: {e}", cookie_file.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o400,
        "mode of {}",
        cookie_file.display()
    );
    let contents = std::fs::read_to_string(&cookie_file).expect("cookie file is readable");
    let secret = contents.trim().to_string();
    assert!(secret.len() >= 8, "a weak default cookie: {secret:?}");

    let mut ann = ctx.client("ann").to(&server).no_cookie().join();
    let mut bob = ctx.client("bob").to(&server).cookie(&secret).join();
    ann.expect_joined("bob");
    bob.send("the file cookie works");
    ann.expect_say("bob", "the file cookie works");

    // The file's cookie is really enforced.
    let mut eve = ctx.client("eve").to(&server).cookie("some-other").spawn();
    eve.proc
        .expect_stderr_line("not allowed (check the cookie)", LONG);
    eve.proc.expect_failure(LONG);

    // The file was not rewritten by the client.
    assert_eq!(
        std::fs::read_to_string(&cookie_file).expect("cookie file is readable"),
        contents
    );
}

#[test]
fn the_cookie_can_come_from_the_environment_or_a_file() {
    let ctx = Ctx::new();
    let server = ctx
        .server("server@localhost")
        .no_cookie()
        .env("CHAT_COOKIE", "env-cookie-123")
        .start();
    let mut ann = ctx
        .client("ann")
        .to(&server)
        .no_cookie()
        .env("CHAT_COOKIE", "env-cookie-123")
        .join();

    let file = ctx.home().join("my-cookie");
    std::fs::write(&file, "env-cookie-123\n").expect("write the cookie file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        .expect("make the cookie file private");
    let file = file.to_str().expect("utf-8 temp path").to_string();
    let _bob = ctx
        .client("bob")
        .to(&server)
        .no_cookie()
        .args(&["--cookie-file", &file])
        .join();
    ann.expect_joined("bob");

    // --cookie wins over the environment.
    let mut eve = ctx
        .client("eve")
        .to(&server)
        .cookie("flag-cookie")
        .env("CHAT_COOKIE", "env-cookie-123")
        .spawn();
    eve.proc
        .expect_stderr_line("not allowed (check the cookie)", LONG);
    eve.proc.expect_failure(LONG);
    // No default cookie file was needed.
    assert!(!ctx.home().join(".erlang.cookie").exists());
}

#[test]
fn a_cookie_file_others_can_read_is_refused_with_erlangs_advice() {
    let ctx = Ctx::new();
    let file = ctx.home().join(".erlang.cookie");
    std::fs::write(&file, "shared-by-accident\n").expect("write the cookie file");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod the cookie file");
    let expected = format!(
        "cookie file {} must be accessible by owner only",
        file.display()
    );
    let mut server = ctx.server("server@localhost").no_cookie().spawn();
    let line = server.expect_stderr_line(&expected, LONG);
    assert!(line.contains("chmod 400"), "no advice in {line:?}");
    assert_ne!(server.expect_failure(LONG), 0);
    let mut client = ctx
        .client("ann")
        .no_cookie()
        .server_arg("server@localhost:1", "server@localhost")
        .spawn();
    client.proc.expect_stderr_line(&expected, LONG);
    assert_ne!(client.proc.expect_failure(LONG), 0);
}
