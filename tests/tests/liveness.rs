//! Liveness: dead clients leave the room promptly, half-open connections are dropped
//! after four silent ticks, and idle but responsive clients stay.

use std::time::{Duration, Instant};

use chat_tests::nodes::strings;
use chat_tests::{COOKIE, Ctx, LONG, RawClient, Signal, WAIT};
use protocol::EventKind;

#[test]
fn a_client_killed_with_sigkill_leaves_promptly_and_frees_its_nick() {
    let ctx = Ctx::new();
    // The default tick (15 s: a drop after 60 s of silence) is far longer than our wait,
    // so the leave must come from the closed socket, not from a timeout.
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    let mut carol = ctx.join(&server, "carol");
    ann.expect_joined("bob");
    ann.expect_joined("carol");
    bob.expect_joined("carol");

    carol.proc.signal(Signal::Kill);
    let started = Instant::now();
    ann.expect_left("carol");
    bob.expect_left("carol");
    assert!(
        started.elapsed() < WAIT,
        "the leave took {:?}",
        started.elapsed()
    );
    assert_eq!(ann.users(), strings(&["ann", "bob"]));

    let mut carol2 = ctx.join(&server, "carol");
    ann.expect_joined("carol");
    carol2.send("carol lives again");
    ann.expect_say("carol", "carol lives again");
    bob.expect_say("carol", "carol lives again");
}

#[test]
fn a_half_open_connection_is_dropped_after_four_ticks() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--tick", "0.2"]);
    let mut ann = ctx.join(&server, "ann");

    // The ghost joins, then never says anything again: no pongs, no messages, but its
    // socket stays open (no FIN), like a peer whose machine vanished.
    let (mut ghost, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "ghost");
    ghost.auto_pong = false;
    let joined = Instant::now();
    ann.expect_joined("ghost");

    let line = ann.proc.expect_line("* ghost has left *", LONG);
    let after = joined.elapsed();
    assert!(
        line.ends_with("> * ghost has left * (timed out)"),
        "unexpected leave line {line:?}"
    );
    // Four ticks of 0.2 s: not before about three of them (the server may check on tick
    // boundaries), and well within the generous wait.
    assert!(
        after >= Duration::from_millis(500),
        "dropped after only {after:?}, before four ticks of silence"
    );
    ghost.expect_closed(WAIT);
    assert_eq!(ann.users(), strings(&["ann"]));
}

#[test]
fn a_frozen_client_is_dropped_as_timed_out() {
    // A real client stopped with SIGSTOP keeps its socket open but answers nothing.
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--tick", "0.2"]);
    let mut ann = ctx.join(&server, "ann");
    let mut frozen = ctx.join(&server, "frozen");
    ann.expect_joined("frozen");

    frozen.proc.signal(Signal::Stop);
    let line = ann.proc.expect_line("* frozen has left *", LONG);
    assert!(
        line.ends_with("> * frozen has left * (timed out)"),
        "unexpected leave line {line:?}"
    );
    // The nick is free again.
    let _frozen2 = ctx.join(&server, "frozen");
    ann.expect_joined("frozen");
}

#[test]
fn a_raw_client_that_answers_pings_is_not_dropped() {
    // The protocol side of liveness: the server sends pings at its tick; a raw client
    // that answers them stays in the room.
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--tick", "0.2"]);
    let mut ann = ctx.join(&server, "ann");
    let (mut raw, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "pinger");
    ann.expect_joined("pinger");

    // Answer pings (auto_pong) for 10 ticks' worth of time while waiting for an event
    // that never comes.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let left = until.saturating_duration_since(Instant::now());
        match raw.recv(left) {
            chat_tests::Incoming::Message(protocol::ServerMessage::Event(ev)) => {
                if let EventKind::Left { nick, .. } = &ev.kind {
                    assert_ne!(nick, "pinger", "the pinger was told it left");
                }
            }
            chat_tests::Incoming::Message(_) | chat_tests::Incoming::TimedOut => {}
            chat_tests::Incoming::Closed => {
                panic!("the server dropped a client that answers pings")
            }
        }
    }
    ann.expect_not_received("pinger has left");
    raw.say("still here after ten ticks");
    ann.expect_say("pinger", "still here after ten ticks");
}

#[test]
fn an_idle_but_responsive_client_is_not_dropped() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--tick", "0.2"]);
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");

    // Fifteen ticks of idleness (a timed observation, not a readiness wait): four silent
    // ticks would drop either of them if they did not answer the pings.
    let forbidden = ["has left", "lost", "Could not"];
    ann.proc
        .expect_no_output_for(&forbidden, Duration::from_secs(3));
    // bob's output of the same three seconds (and since start-up) is checked too.
    bob.proc.expect_no_output_for(&forbidden, Duration::ZERO);
    assert!(ann.proc.try_status().is_none(), "ann exited while idle");
    assert!(bob.proc.try_status().is_none(), "bob exited while idle");

    bob.send("still here");
    ann.expect_say("bob", "still here");
    assert_eq!(ann.users(), strings(&["ann", "bob"]));
}
