//! Pipes never drop a line (issue 12): a client fed from a pipe paces itself within the
//! flood limit the server announced, so `seq 1 1000 | chat-client` delivers every line
//! in order and exits 0; a server that kicks it anyway is told on standard error, with
//! what did not reach the room, and the exit status is 1.
//!
//! The thousand lines take about 100 s at the default 10 messages per second: the time
//! the server's own limit asks for.

use chat_tests::faults::FaultProxy;
use chat_tests::net::poll_until;
use chat_tests::{COOKIE, Ctx, Incoming, LONG, RawClient, Stream, WAIT};
use protocol::{Event, EventKind, ServerMessage};

const NAME: &str = "server@localhost";

/// Standard-error lines that would be raw logs rather than sentences.
fn raw_log_lines(lines: &[String]) -> Vec<&String> {
    lines
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("panicked"))
        .collect()
}

#[test]
fn a_thousand_piped_lines_all_arrive_in_order_and_the_client_exits_zero() {
    let ctx = Ctx::new();
    let server = ctx.start_server(NAME, &[]);
    let (mut watcher, _) = RawClient::open_joined(server.port(), server.name(), COOKIE, "watcher");
    // As a user would run it: reconnecting, with the server's default limits.
    let mut p = ctx.client("p").to(&server).reconnect().join();
    let input: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    p.proc.write_stdin(input.as_bytes());
    p.close_stdin();

    let mut next = 1;
    while next <= 1000 {
        match watcher.recv(WAIT) {
            Incoming::Message(ServerMessage::Event(Event {
                kind: EventKind::Message { from, text },
                ..
            })) if from == "p" => {
                assert_eq!(text, next.to_string(), "line {next} out of order");
                next += 1;
            }
            Incoming::Message(_) => {}
            Incoming::Closed => panic!("the watcher was disconnected after line {}", next - 1),
            Incoming::TimedOut => p
                .proc
                .fail(&format!("nothing more after line {} of 1000", next - 1)),
        }
    }
    p.proc.expect_success(LONG);
    let stderr = p.proc.lines(Stream::Stderr);
    assert!(raw_log_lines(&stderr).is_empty(), "{stderr:#?}");
    assert!(!p.proc.seen("slow down"));
    assert!(!p.proc.seen("did not reach the room"));
}

#[test]
fn a_server_that_kicks_the_client_for_flooding_is_told_and_the_exit_status_is_1() {
    let ctx = Ctx::new();
    // Two messages at once, five a second: the client paces itself within that, so
    // only a stall that delivers its lines all at once can make it flood.
    let server = ctx.start_server(NAME, &["--burst", "2", "--rate", "5"]);
    let proxy = FaultProxy::start(server.port());
    let mut p = ctx
        .client("p")
        .server_arg(&format!("{NAME}:{}", proxy.port()), NAME)
        .reconnect()
        .join();

    proxy.pause();
    let input: String = (1..=40).map(|i| format!("flood {i:02}\n")).collect();
    p.proc.write_stdin(input.as_bytes());
    // About ten says (15 bytes each) held by the stalled network, then all at once.
    assert!(
        poll_until(WAIT, || proxy.held_upstream() >= 150),
        "the client sent nothing while the network stalled"
    );
    proxy.release();

    p.proc.expect_stderr_line(
        &format!(
            "Connection to {NAME} lost: the server disconnected this client for sending too fast (excess flood)"
        ),
        LONG,
    );
    // The server took a few of them before it gave up on the client, acknowledging
    // some or none: for the rest the client cannot tell which arrived, and says so.
    let summary = p
        .proc
        .expect_stderr_line("of yours did not reach the room", WAIT);
    assert!(summary.contains("never acknowledged"), "{summary}");
    assert_eq!(p.proc.expect_failure(LONG), 1);
    // Told once, in sentences: no reconnecting after being kicked, no raw log lines.
    assert!(!p.proc.seen("Reconnected"));
    let stderr = p.proc.lines(Stream::Stderr);
    assert!(raw_log_lines(&stderr).is_empty(), "{stderr:#?}");
}
