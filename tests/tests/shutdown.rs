//! Graceful shutdown: on SIGTERM or SIGINT every client is told, and the server exits 0
//! within a bounded time, whatever its connections are doing.

use chat_tests::net::{epmd_names, poll_until};
use chat_tests::{COOKIE, Client, Ctx, Incoming, LONG, RawClient, Signal, Stream, WAIT};
use protocol::{LeaveReason, ServerMessage};

/// The client was told the server went away: the contract's line on stderr, a reason
/// that says the server is shutting down, and exit status 1 (it runs with
/// `--no-reconnect`).
#[track_caller]
fn expect_told_of_shutdown(client: &mut Client) {
    let line = client
        .proc
        .expect_stderr_line("Connection to server@localhost lost", LONG);
    let code = client.proc.expect_failure(LONG);
    if code != 1 {
        client.proc.fail(&format!(
            "expected exit status 1 after losing the server, got {code}"
        ));
    }
    let all = client.proc.lines(Stream::Any).join("\n");
    if !all.to_lowercase().contains("shutting down") {
        client.proc.fail(&format!(
            "the client was not told the server is shutting down (lost line: {line:?})"
        ));
    }
}

fn shutdown_with(signal: Signal) {
    let ctx = Ctx::new();
    let mut server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    let (mut watcher, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "watcher");
    ann.expect_joined("watcher");
    // Connections that must not hold the shutdown up: one that never reads, one that
    // never finishes its handshake.
    let (_deaf, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "deaf");
    ann.expect_joined("deaf");
    let mut stalled = RawClient::connect("stalled", server.port());
    stalled.send_preamble();

    server.proc.signal(signal);
    server.proc.expect_success(LONG);
    // Its stdout had exactly one line: the ready line.
    let out = server.proc.lines(Stream::Stdout);
    assert_eq!(out.len(), 1, "server stdout: {out:?}");

    // At the protocol level: a Closing message saying why, then the connection closes.
    let mut told = None;
    loop {
        match watcher.recv(WAIT) {
            Incoming::Message(ServerMessage::Closing { reason }) => told = Some(reason),
            Incoming::Message(other) => {
                assert!(told.is_none(), "{other:?} came after the Closing message")
            }
            Incoming::Closed => break,
            Incoming::TimedOut => panic!("the watcher's connection is still open"),
        }
    }
    assert_eq!(
        told,
        Some(LeaveReason::ServerShutdown),
        "the watcher was not told the server is shutting down before the close"
    );
    stalled.expect_closed(WAIT);

    expect_told_of_shutdown(&mut ann);
    expect_told_of_shutdown(&mut bob);

    // And the server is gone from the map.
    let gone = poll_until(WAIT, || {
        epmd_names(ctx.epmd_port()).is_ok_and(|l| l.iter().all(|(n, _)| n != "server"))
    });
    assert!(gone, "still registered: {:?}", epmd_names(ctx.epmd_port()));
}

#[test]
fn sigterm_tells_every_client_and_exits_zero() {
    shutdown_with(Signal::Term);
}

#[test]
fn sigint_tells_every_client_and_exits_zero() {
    shutdown_with(Signal::Int);
}

/// SIGTERM as soon as the server says it is ready (as a service manager or a script
/// may do): "ready" must include being ready to shut down cleanly.
#[test]
fn sigterm_right_after_the_ready_line_exits_zero() {
    let ctx = Ctx::new();
    let mut server = ctx.start_server("server@localhost", &[]);
    server.terminate();
}

#[test]
fn a_server_that_dies_is_reported_as_lost_by_its_clients() {
    let ctx = Ctx::new();
    let mut server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.join(&server, "ann");
    server.proc.signal(Signal::Kill);
    ann.proc
        .expect_stderr_line("Connection to server@localhost lost: ", LONG);
    assert_eq!(ann.proc.expect_failure(LONG), 1);
}
