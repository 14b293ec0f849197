//! A reconnecting session against a scripted server that goes away and comes back: the
//! loss is reported, the session reconnects and rejoins with the same nick, a nick taken
//! meanwhile is reported, and quitting while reconnecting returns at once.

mod common;

use std::time::Duration;

use chat_client::plain::{self, PlainOutput};
use chat_client::reconnect::ReconnectPolicy;
use chat_client::session::{Flow, JoinOutcome};
use common::{
    LIMIT, Mode, accept, answer_join, joined, joined_session, listen, next, quick_policy, send,
};
use protocol::{ClientMessage, Event, EventKind, LeaveReason, Reply, ServerMessage};
use tokio::time::timeout;

const LOST_SHUTDOWN: &str =
    "Connection to server@127.0.0.1 lost: server shutting down; reconnecting...";
const LOST_CLOSED: &str =
    "Connection to server@127.0.0.1 lost: the server closed the connection; reconnecting...";
const RECONNECTED: &str = "* Reconnected to server@127.0.0.1 *";
const NOT_SENT: &str = "Not connected to server@127.0.0.1 (reconnecting); not sent";

#[tokio::test]
async fn a_lost_server_is_reconnected_and_the_room_rejoined() {
    let (listener, target) = listen().await;
    let (mut session, mut server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(quick_policy())).await;
    let mut lost = session.lost_signal();

    send(
        &mut server,
        ServerMessage::Closing {
            reason: LeaveReason::ServerShutdown,
        },
    )
    .await;
    drop(server);

    // The same listener stands for the restarted server.
    let mut server = accept(&listener, common::COOKIE).await.unwrap();
    answer_join(&mut server, "ann", joined(&["ann", "bob", "cy"])).await;
    lines.wait_for("* Users in the room: ann, bob, cy *").await;
    assert_eq!(
        lines.after("* Type /help for options *"),
        [
            LOST_SHUTDOWN,
            RECONNECTED,
            "* Joined the chatroom *",
            "* Users in the room: ann, bob, cy *",
            "* Type /help for options *",
        ]
    );
    assert_eq!(session.members().snapshot(), ["ann", "bob", "cy"]);

    // Messages flow both ways again.
    assert_eq!(session.handle_line("back again").await, Ok(Flow::Continue));
    assert_eq!(
        next(&mut server).await,
        Some(ClientMessage::Say {
            id: 0,
            text: "back again".into()
        })
    );
    assert!(session.is_joined());
    let event = Event {
        seq: 1,
        kind: EventKind::Message {
            from: "bob".into(),
            text: "welcome back".into(),
        },
    };
    send(&mut server, ServerMessage::Event(event)).await;
    lines.wait_for("server@127.0.0.1> bob: welcome back").await;

    // A reconnecting session is never lost for good.
    assert!(timeout(Duration::ZERO, lost.wait()).await.is_err());

    let script = async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        send(&mut server, ServerMessage::Reply(Reply::Left)).await;
        assert_eq!(next(&mut server).await, None);
    };
    let (quit, ()) = tokio::join!(session.handle_line("/quit"), script);
    assert_eq!(quit, Ok(Flow::Quit));
}

#[tokio::test]
async fn a_nick_taken_meanwhile_is_reported_and_join_works_again() {
    let (listener, target) = listen().await;
    let (mut session, server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(quick_policy())).await;
    drop(server);

    let mut server = accept(&listener, common::COOKIE).await.unwrap();
    answer_join(&mut server, "ann", Reply::NickInUse).await;
    let refused = "Could not join chatroom, reason: nick_in_use";
    lines.wait_for(refused).await;
    assert_eq!(
        lines.after("* Type /help for options *"),
        [LOST_CLOSED, RECONNECTED, refused]
    );
    assert!(!session.is_joined());
    assert!(session.members().snapshot().is_empty());

    // Once the nick is free again, /join gets back in.
    let (flow, ()) = tokio::join!(
        session.handle_line("/join"),
        answer_join(&mut server, "ann", joined(&["ann"]))
    );
    assert_eq!(flow, Ok(Flow::Continue));
    assert!(session.is_joined());
    assert_eq!(lines.all().last().unwrap(), "* Type /help for options *");
}

#[tokio::test]
async fn a_join_cut_short_is_retried_after_reconnecting() {
    let (listener, target) = listen().await;
    let (mut session, mut server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(quick_policy())).await;
    let (left, ()) = tokio::join!(session.leave(), async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        send(&mut server, ServerMessage::Reply(Reply::Left)).await;
    });
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

    let mut server = accept(&listener, common::COOKIE).await.unwrap();
    answer_join(&mut server, "ann", joined(&["ann"])).await;
    lines.wait_for(RECONNECTED).await;
    lines.wait_for("* Users in the room: ann *").await;
}

#[tokio::test]
async fn left_rooms_are_not_rejoined() {
    let (listener, target) = listen().await;
    let (mut session, mut server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(quick_policy())).await;
    let (left, ()) = tokio::join!(session.leave(), async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        send(&mut server, ServerMessage::Reply(Reply::Left)).await;
    });
    assert_eq!(left, Ok(()));
    drop(server);

    let mut server = accept(&listener, common::COOKIE).await.unwrap();
    // The first thing the client says after reconnecting is what the user typed.
    lines.wait_for(RECONNECTED).await;
    // The new connection is handed over as the line is printed.
    assert!(session.is_connected());
    session.handle_line("/users").await.unwrap();
    assert_eq!(next(&mut server).await, Some(ClientMessage::ListUsers));
}

#[tokio::test]
async fn quitting_while_reconnecting_returns_at_once() {
    let (listener, target) = listen().await;
    // Waits long enough that any wait for the next attempt would show.
    let slow = ReconnectPolicy {
        initial: Duration::from_secs(60),
        ..ReconnectPolicy::default()
    };
    let (mut session, server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(slow)).await;
    drop(server);
    drop(listener);
    lines.wait_for(LOST_CLOSED).await;

    for line in ["hello?", "/users", "/pm bob psst", "/join", "/leave"] {
        let before = lines.all().len();
        assert_eq!(session.handle_line(line).await, Ok(Flow::Continue));
        assert_eq!(lines.all()[before..], [NOT_SENT], "{line}");
    }
    // Local commands still work.
    let before = lines.all().len();
    session.handle_line("/help").await.unwrap();
    assert_eq!(lines.all()[before..], chat_client::command::help());

    let quit = timeout(Duration::from_secs(1), session.handle_line("/quit")).await;
    assert_eq!(quit.expect("/quit waited"), Ok(Flow::Quit));
}

#[tokio::test]
async fn end_of_input_while_reconnecting_returns_at_once() {
    let (listener, target) = listen().await;
    let slow = ReconnectPolicy {
        initial: Duration::from_secs(60),
        ..ReconnectPolicy::default()
    };
    let (mut session, server, lines) =
        joined_session(&listener, &target, Mode::Reconnect(slow)).await;
    drop(server);
    drop(listener);
    lines.wait_for(LOST_CLOSED).await;

    let input: &[u8] = b"one more\n";
    let output = PlainOutput::new(None, false);
    let ended = timeout(LIMIT / 5, plain::run(input, &mut session, &output)).await;
    assert_eq!(ended.expect("the end of input waited"), Ok(()));
    assert_eq!(lines.all().last().unwrap(), NOT_SENT);
}
