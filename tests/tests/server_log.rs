//! The server's log (its stderr) as an operator reads it: one line per event, with the
//! true reason (issue 10).

use chat_tests::{Client, Ctx, LONG, Server, Signal, Stream, WAIT};

#[track_caller]
fn expect_one(server: &mut Server, lines: Vec<String>, want: &[&str]) {
    if lines.len() != 1 || !want.iter().all(|w| lines[0].contains(w)) {
        server.proc.fail(&format!(
            "expected one log line containing {want:?}, got {lines:#?}"
        ));
    }
}

#[test]
fn each_departure_is_one_line_with_its_true_reason() {
    let ctx = Ctx::new();
    let mut server = ctx.start_server("server@localhost", &["--tick", "0.2"]);
    let mut bob = ctx.join(&server, "bob");

    // A clean /quit: one line, `quit`, not also a lost connection.
    let mut ann = ctx.join(&server, "ann");
    bob.expect_joined("ann");
    ann.send("/quit");
    ann.proc.expect_success(LONG);
    bob.expect_left("ann");
    server.proc.expect_stderr_line("left nick=ann", WAIT);

    // A refused join is logged, with the nick and why.
    let mut twin = ctx.client("bob").to(&server).spawn();
    twin.expect("Could not join chatroom");
    assert_eq!(twin.proc.expect_failure(LONG), 1);
    let refused = server.proc.expect_stderr_line("join refused", WAIT);
    assert!(
        refused.contains("nick=bob") && refused.contains("nick in use"),
        "{refused:?}"
    );

    // A member silent for too long: one line.
    let mut cy = ctx.join(&server, "cy");
    bob.expect_joined("cy");
    cy.proc.signal(Signal::Stop);
    bob.expect_left("cy");
    server.proc.expect_stderr_line("left nick=cy", WAIT);
    cy.proc.signal(Signal::Cont);

    // A graceful shutdown: why, every member's `left`, then `bye`, last.
    server.proc.signal(Signal::Term);
    server.proc.wait_exit(LONG);
    let all = server.proc.lines(Stream::Stderr);
    expect_one(
        &mut server,
        departures_of_in(&all, &ann),
        &["left nick=ann", "reason=\"quit\""],
    );
    expect_one(
        &mut server,
        departures_of_in(&all, &cy),
        &["left nick=cy", "reason=\"timed out\""],
    );
    expect_one(
        &mut server,
        departures_of_in(&all, &bob),
        &["left nick=bob", "reason=\"server shutting down\""],
    );
    let shutting = all.iter().position(|l| l.contains("server shutting down"));
    let bob_left = all.iter().position(|l| l.contains("left nick=bob"));
    let bye = all.iter().position(|l| l.ends_with(" bye"));
    match (shutting, bob_left, bye) {
        (Some(s), Some(b), Some(y)) if s < b && b < y && y + 1 == all.len() => {}
        _ => server.proc.fail(&format!(
            "expected `server shutting down`, then `left nick=bob`, then `bye` last: {all:#?}"
        )),
    }
    drop(bob);
}

/// The lines about `client`'s node other than its `connected` and `joined`.
fn departures_of_in(lines: &[String], client: &Client) -> Vec<String> {
    let node = format!(
        "node={}",
        client.own_name().expect("the harness names clients")
    );
    lines
        .iter()
        .filter(|line| line.contains(&node))
        .filter(|line| !line.contains(" connected ") && !line.contains(" joined "))
        .cloned()
        .collect()
}
