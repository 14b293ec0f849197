//! A reconnecting session against a scripted server that goes away and comes back: the
//! loss is reported, the session reconnects and resumes (what was missed printed once,
//! what was not acknowledged sent again with its id, lines typed meanwhile sent), a
//! restarted server is joined afresh, a nick taken meanwhile is reported with where the
//! user stands, lasting failures and being kicked for flooding end the session, and
//! quitting while reconnecting returns at once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chat_client::connect::ServerTarget;
use chat_client::plain::{self, PlainOutput};
use chat_client::reconnect::ReconnectPolicy;
use chat_client::session::{Flow, JoinOutcome, Session, SessionError, Undelivered};
use common::{
    COOKIE, LIMIT, Lines, Mode, ServerSide, accept, ack_leave, ack_private, ack_say, answer_join,
    answer_leave, closing, joined, joined_at, joined_session, listen, next, quick_policy, resume,
    resumed, said, send,
};
use protocol::{ClientMessage, LeaveReason, Reply, ResumeFailure, ServerMessage};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::timeout;

const LOST_SHUTDOWN: &str =
    "Connection to server@127.0.0.1 lost: server shutting down; reconnecting...";
const LOST_CLOSED: &str =
    "Connection to server@127.0.0.1 lost: the server closed the connection; reconnecting...";
const RECONNECTED: &str = "* Reconnected to server@127.0.0.1 *";
const NOT_SENT: &str = "Not connected to server@127.0.0.1 (reconnecting); not sent";
const BACK: &str = "* Back in the chatroom *";
const NOT_IN_ROOM: &str = "You are not in the chatroom; use /join to try again";

/// Waits for the client's next connection, expects it to resume after `last_seq`, and
/// answers with `answer`.
async fn answer_resume(listener: &TcpListener, last_seq: u64, answer: Reply) -> ServerSide {
    let mut server = accept(listener, COOKIE).await.unwrap();
    assert_eq!(next(&mut server).await, Some(resume(last_seq)));
    send(&mut server, ServerMessage::Reply(answer)).await;
    server
}

/// Waits long enough that any wait for the next attempt would show.
fn slow_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial: Duration::from_secs(60),
        ..ReconnectPolicy::default()
    }
}

/// A reconnecting session with `policy`, joined as `ann`, and the listener that stands
/// for the server it reconnects to.
async fn reconnecting(
    policy: ReconnectPolicy,
) -> (TcpListener, ServerTarget, Session, ServerSide, Arc<Lines>) {
    let (listener, target) = listen().await;
    let (session, server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(policy)).await;
    (listener, target, session, server, lines)
}

#[tokio::test]
async fn a_lost_session_is_resumed_and_what_was_missed_printed_once() {
    let (listener, _, mut session, mut server, lines) = reconnecting(quick_policy()).await;
    let mut lost = session.lost_signal();
    send(&mut server, said(1, "bob", "before")).await;
    lines.wait_for("server@127.0.0.1> bob: before").await;
    closing(&mut server, LeaveReason::ServerShutdown).await;
    drop(server);

    // The same listener stands for the server, which kept the session.
    let mut server = answer_resume(&listener, 1, resumed(&["ann", "bob", "cy"], 2, 0, 3)).await;
    for event in [
        said(2, "bob", "missed one"),
        said(3, "cy", "missed two"),
        said(3, "cy", "missed two"),
        said(4, "bob", "live"),
    ] {
        send(&mut server, event).await;
    }
    lines.wait_for("server@127.0.0.1> bob: live").await;
    assert_eq!(
        lines.after("server@127.0.0.1> bob: before"),
        [
            LOST_SHUTDOWN,
            RECONNECTED,
            BACK,
            "* 2 messages while you were away *",
            "server@127.0.0.1> bob: missed one",
            "server@127.0.0.1> cy: missed two",
            "server@127.0.0.1> bob: live",
        ]
    );
    assert_eq!(session.members().snapshot(), ["ann", "bob", "cy"]);
    assert!(session.is_joined());

    // Cut again at once: nothing was missed, nothing is replayed.
    drop(server);
    let mut server = answer_resume(&listener, 4, resumed(&["ann", "bob", "cy"], 0, 0, 4)).await;
    send(&mut server, said(4, "bob", "live")).await;
    send(&mut server, said(5, "bob", "again live")).await;
    lines.wait_for("server@127.0.0.1> bob: again live").await;
    assert_eq!(
        lines.after("server@127.0.0.1> bob: live"),
        [
            LOST_CLOSED,
            RECONNECTED,
            BACK,
            "server@127.0.0.1> bob: again live"
        ]
    );

    // A reconnecting session is never lost for good by a lost connection.
    assert!(timeout(Duration::ZERO, lost.wait()).await.is_err());
    let (quit, ()) = tokio::join!(session.handle_line("/quit"), answer_leave(&mut server));
    assert_eq!(quit, Ok(Flow::Quit));
}

#[tokio::test]
async fn unacknowledged_says_are_sent_again_with_their_ids_and_lines_typed_away_after() {
    let (listener, _, mut session, mut server, lines) = reconnecting(quick_policy()).await;

    session.handle_line("one").await.unwrap();
    session.handle_line("two").await.unwrap();
    ack_say(&mut server, 1, "one", 1).await;
    // "two" reaches the server, but its acknowledgement is lost with the connection.
    assert!(matches!(
        next(&mut server).await,
        Some(ClientMessage::Say { id: 2, .. })
    ));
    drop(server);
    lines.wait_for(LOST_CLOSED).await;

    // Typed while away: queued, shown as pending. The listener is busy elsewhere, so
    // the client cannot be back yet.
    let pending = "Not connected to server@127.0.0.1 (reconnecting); will be sent once back";
    assert_eq!(session.handle_line("three").await, Ok(Flow::Continue));
    lines.wait_for(&format!("{pending} (2 pending)")).await;
    session.handle_line("/pm bob four").await.unwrap();
    lines.wait_for(&format!("{pending} (3 pending)")).await;
    // Other commands are not queued.
    session.handle_line("/users").await.unwrap();
    assert_eq!(lines.all().last().unwrap(), NOT_SENT);

    let mut server = answer_resume(&listener, 0, resumed(&["ann", "bob"], 0, 0, 2)).await;
    // The server has "two" already: it acknowledges it again and does not repeat it.
    ack_say(&mut server, 2, "two", 0).await;
    ack_say(&mut server, 3, "three", 3).await;
    ack_private(&mut server, 4, "bob", "four", 4).await;
    lines.wait_for("* 2 messages typed while away sent *").await;

    let (quit, ()) = tokio::join!(session.handle_line("/quit"), answer_leave(&mut server));
    assert_eq!(quit, Ok(Flow::Quit));
    assert!(session.undelivered().is_empty());
}

#[tokio::test]
async fn a_restarted_server_is_told_and_joined_afresh_with_the_backlog() {
    let (listener, _, mut session, mut server, lines) = reconnecting(quick_policy()).await;
    session.set_backlog(5);
    session.handle_line("said before").await.unwrap();
    // Written, never acknowledged: the restarted server cannot tell whether it had it.
    assert!(matches!(
        next(&mut server).await,
        Some(ClientMessage::Say { id: 1, .. })
    ));
    drop(server);
    lines.wait_for(LOST_CLOSED).await;

    let failed = Reply::ResumeFailed {
        reason: ResumeFailure::EpochChanged,
    };
    let mut server = answer_resume(&listener, 0, failed).await;
    assert_eq!(
        next(&mut server).await,
        Some(ClientMessage::Join {
            nick: "ann".into(),
            backlog: 5
        })
    );
    send(
        &mut server,
        ServerMessage::Reply(joined_at(&["ann", "bob"], 2, 1)),
    )
    .await;
    send(&mut server, said(1, "bob", "since the restart")).await;
    send(&mut server, said(2, "bob", "live")).await;
    lines.wait_for("server@127.0.0.1> bob: live").await;
    assert_eq!(
        lines.after(RECONNECTED),
        [
            "* server restarted; what was said while it was down is not available *",
            "* Joined the chatroom *",
            "* Users in the room: ann, bob *",
            "* 1 message sent just before the connection was lost may not have reached the room *",
            "[earlier] server@127.0.0.1> bob: since the restart",
            "server@127.0.0.1> bob: live",
        ]
    );
    // The next say starts the new session's ids where the old ones stopped.
    session.handle_line("after").await.unwrap();
    ack_say(&mut server, 2, "after", 3).await;
    let (quit, ()) = tokio::join!(session.handle_line("/quit"), answer_leave(&mut server));
    assert_eq!(quit, Ok(Flow::Quit));
    assert_eq!(
        session.undelivered(),
        Undelivered {
            unacknowledged: 1,
            ..Undelivered::default()
        }
    );
}

#[tokio::test]
async fn a_nick_taken_meanwhile_is_reported_with_where_the_user_stands() {
    let (listener, _, mut session, server, lines) = reconnecting(quick_policy()).await;
    drop(server);

    let failed = Reply::ResumeFailed {
        reason: ResumeFailure::NickInUse,
    };
    let mut server = answer_resume(&listener, 0, failed).await;
    lines.wait_for(NOT_IN_ROOM).await;
    assert_eq!(
        lines.after("* Type /help for options *"),
        [
            LOST_CLOSED,
            RECONNECTED,
            "* the nick ann was taken while you were away *",
            NOT_IN_ROOM
        ]
    );
    assert!(!session.is_joined());
    assert!(session.members().snapshot().is_empty());
    session.handle_line("anyone?").await.unwrap();
    assert_eq!(
        lines.all().last().unwrap(),
        "You are not in the chatroom; use /join"
    );

    // Once the nick is free again, /join gets back in.
    let (flow, ()) = tokio::join!(
        session.handle_line("/join"),
        answer_join(&mut server, "ann", joined(&["ann"]))
    );
    assert_eq!(flow, Ok(Flow::Continue));
    assert!(session.is_joined());
    // The hint to /help came with the first join only.
    assert_eq!(lines.all().last().unwrap(), "* Users in the room: ann *");
}

#[tokio::test]
async fn a_refused_fresh_join_says_where_the_user_stands() {
    let (listener, _, _session, server, lines) = reconnecting(quick_policy()).await;
    drop(server);
    let failed = Reply::ResumeFailed {
        reason: ResumeFailure::UnknownSession,
    };
    let mut server = answer_resume(&listener, 0, failed).await;
    answer_join(&mut server, "ann", Reply::NickInUse).await;
    lines.wait_for(NOT_IN_ROOM).await;
    assert_eq!(
        lines.after(RECONNECTED),
        [
            "* the server no longer knows this session; joining again (what was said meanwhile is not available) *",
            "Could not join chatroom: nick ann is in use; pick another with --nick",
            NOT_IN_ROOM
        ]
    );
}

#[tokio::test]
async fn a_join_cut_short_is_retried_after_reconnecting() {
    let (listener, _, mut session, mut server, lines) = reconnecting(quick_policy()).await;
    let (left, ()) = tokio::join!(session.leave(), ack_leave(&mut server));
    assert_eq!(left, Ok(()));

    // The server goes away between the join and its answer.
    let (outcome, ()) = tokio::join!(session.join(), async {
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Join {
                nick: "ann".into(),
                backlog: 0
            })
        );
        drop(server);
    });
    assert_eq!(outcome, Ok(JoinOutcome::Disconnected));

    // Having left, there is no session to resume: a plain join.
    let mut server = accept(&listener, COOKIE).await.unwrap();
    answer_join(&mut server, "ann", joined(&["ann"])).await;
    lines.wait_for(RECONNECTED).await;
    lines.wait_for("* Users in the room: ann *").await;
}

#[tokio::test]
async fn left_rooms_are_not_rejoined() {
    let (listener, _, mut session, mut server, lines) = reconnecting(quick_policy()).await;
    let (left, ()) = tokio::join!(session.leave(), ack_leave(&mut server));
    assert_eq!(left, Ok(()));
    drop(server);

    let mut server = accept(&listener, COOKIE).await.unwrap();
    // The first thing the client says after reconnecting is what the user typed.
    lines.wait_for(RECONNECTED).await;
    // The new connection is handed over as the line is printed.
    assert!(session.is_connected());
    session.handle_line("/users").await.unwrap();
    assert_eq!(next(&mut server).await, Some(ClientMessage::ListUsers));
}

#[tokio::test]
async fn quitting_while_reconnecting_returns_at_once() {
    let (listener, _, mut session, server, lines) = reconnecting(slow_policy()).await;
    drop(server);
    drop(listener);
    lines.wait_for(LOST_CLOSED).await;

    for line in ["/users", "/join", "/leave"] {
        let before = lines.all().len();
        assert_eq!(session.handle_line(line).await, Ok(Flow::Continue));
        assert_eq!(lines.all()[before..], [NOT_SENT], "{line}");
    }
    session.handle_line("hello?").await.unwrap();
    session.handle_line("/pm bob psst").await.unwrap();
    // Local commands still work.
    let before = lines.all().len();
    session.handle_line("/help").await.unwrap();
    assert_eq!(lines.all()[before..], chat_client::command::help());

    let quit = timeout(Duration::from_secs(1), session.handle_line("/quit")).await;
    assert_eq!(quit.expect("/quit waited"), Ok(Flow::Quit));
    // What was typed meanwhile never went out, and that is counted.
    assert_eq!(
        session.undelivered(),
        Undelivered {
            not_sent: 2,
            ..Undelivered::default()
        }
    );
}

#[tokio::test]
async fn a_full_queue_refuses_lines_typed_away_on_a_terminal() {
    let (_listener, _, mut session, server, lines) = reconnecting(slow_policy()).await;
    drop(server);
    lines.wait_for(LOST_CLOSED).await;
    for n in 0..chat_client::session::QUEUE_LIMIT {
        session.handle_line(&format!("line {n}")).await.unwrap();
    }
    session.handle_line("one too many").await.unwrap();
    assert_eq!(
        lines.all().last().unwrap(),
        "Not connected to server@127.0.0.1 (reconnecting); not sent: 100 messages are waiting already"
    );
}

#[tokio::test]
async fn end_of_input_while_reconnecting_returns_at_once() {
    let (listener, _, mut session, server, lines) = reconnecting(slow_policy()).await;
    drop(server);
    drop(listener);
    lines.wait_for(LOST_CLOSED).await;

    let input: &[u8] = b"/users\n";
    let output = PlainOutput::new(None, false);
    let ended = timeout(LIMIT / 5, plain::run(input, &mut session, &output)).await;
    assert_eq!(ended.expect("the end of input waited"), Ok(()));
    assert_eq!(lines.all().last().unwrap(), NOT_SENT);
}

#[tokio::test]
async fn a_patient_session_delivers_what_was_typed_away_before_leaving() {
    let (listener, _, mut session, server, lines) = reconnecting(quick_policy()).await;
    session.set_patient(true);
    drop(server);
    lines.wait_for(LOST_CLOSED).await;

    // The input ends while disconnected; the session waits for the server.
    let input: &[u8] = b"typed away\n";
    let output = PlainOutput::new(None, false);
    let script = async {
        let mut server = answer_resume(&listener, 0, resumed(&["ann"], 0, 0, 0)).await;
        ack_say(&mut server, 1, "typed away", 1).await;
        answer_leave(&mut server).await;
    };
    let (ended, ()) = tokio::join!(plain::run(input, &mut session, &output), script);
    assert_eq!(ended, Ok(()));
    assert!(session.undelivered().is_empty());
}

#[tokio::test]
async fn a_wrong_cookie_after_reconnecting_ends_the_session() {
    let (listener, _, session, server, lines) = reconnecting(quick_policy()).await;
    let mut lost = session.lost_signal();
    drop(server);
    // The server now has another cookie.
    assert!(accept(&listener, "another").await.is_none());
    let why = timeout(LIMIT, lost.wait())
        .await
        .expect("still reconnecting");
    assert_eq!(
        why,
        SessionError::Unreachable("not allowed (check the cookie)".into())
    );
    assert_eq!(lines.all().last().unwrap(), LOST_CLOSED);
}

#[tokio::test]
async fn each_reason_for_a_failed_attempt_is_told_once() {
    let (listener, target, _session, server, lines) = reconnecting(quick_policy()).await;
    drop(server);
    // Five attempts, each closed in the middle of the handshake (after reading what
    // the client sent, so that the close is an orderly one every time).
    for _ in 0..5 {
        let (mut tcp, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        let mut preamble_and_length = [0u8; 8];
        tcp.read_exact(&mut preamble_and_length).await.unwrap();
        let len = u32::from_be_bytes(preamble_and_length[4..].try_into().unwrap());
        let mut hello = vec![0u8; len as usize];
        tcp.read_exact(&mut hello).await.unwrap();
        drop(tcp);
    }
    let mut server = accept(&listener, COOKIE).await.unwrap();
    assert_eq!(next(&mut server).await, Some(resume(0)));
    let told: Vec<String> = lines
        .all()
        .into_iter()
        .filter(|l| l.contains("reconnect") || l.contains("retrying"))
        .collect();
    // The quick policy's waits all round to 1 s: no second line for the same reason.
    assert_eq!(told.len(), 2, "{told:#?}");
    assert_eq!(told[0], LOST_CLOSED);
    assert!(
        told[1].starts_with(&format!("Could not reconnect to {target}: "))
            && told[1].ends_with("; retrying in 1 s"),
        "{told:#?}"
    );
}

#[tokio::test]
async fn being_kicked_for_flooding_is_not_reconnected() {
    let (listener, _, session, mut server, lines) = reconnecting(quick_policy()).await;
    let mut lost = session.lost_signal();
    closing(&mut server, LeaveReason::Flooding).await;
    let why = timeout(LIMIT, lost.wait())
        .await
        .expect("still reconnecting");
    assert_eq!(
        why,
        SessionError::Lost(
            "the server disconnected this client for sending too fast (excess flood)".into()
        )
    );
    assert!(!lines.all().iter().any(|l| l == RECONNECTED));
    drop(listener);
}
