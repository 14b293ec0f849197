//! The client library against a scripted in-process server: the handshake, the session's
//! answers to pings, quitting cleanly, and noticing a server that goes away.
//!
//! The real `chat-server` is exercised by the workspace's integration tests; here the
//! server is a few lines of script, so each test controls exactly what the client sees.

mod common;

use chat_client::plain::{self, PlainOutput};
use chat_client::session::{JoinOutcome, Session, SessionError, Undelivered};
use common::{
    LIMIT, Lines, Mode, ServerSide, accept, ack_private, ack_say, answer_leave, closing,
    connect_client, joined_at, listen, next, said,
};
use futures_util::SinkExt;
use protocol::{ClientMessage, Event, EventKind, LeaveReason, Reply, ServerMessage};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;

/// Starts a session that does not reconnect, joined as `ann`.
async fn joined_session() -> (Session, ServerSide, Arc<Lines>) {
    let (listener, target) = listen().await;
    common::joined_session(&listener, &target, Mode::Once).await
}

#[tokio::test]
async fn wrong_cookie_is_not_allowed() {
    let (listener, target) = listen().await;
    let (server, client) =
        tokio::join!(accept(&listener, "right"), connect_client(&target, "wrong"));
    assert!(server.is_none());
    let err = client.err().unwrap();
    assert_eq!(err.to_string(), "not allowed (check the cookie)");
}

#[tokio::test]
async fn session_prints_answers_pings_and_quits_cleanly() {
    let (mut session, mut server, lines) = joined_session().await;
    let mut lost = session.lost_signal();
    assert_eq!(
        lines.all(),
        [
            "* Joined the chatroom *",
            "* Users in the room: ann, bob *",
            "* Type /help for options *"
        ]
    );

    server.send(ServerMessage::Ping).await.unwrap();
    assert_eq!(next(&mut server).await, Some(ClientMessage::Pong));

    let event = Event {
        seq: 3,
        kind: EventKind::Message {
            from: "bob".into(),
            text: "hi\u{1b}[2J".into(),
        },
    };
    server.send(ServerMessage::Event(event)).await.unwrap();

    let client = async {
        session.handle_line("hello  there").await.unwrap();
        session.handle_line("/pm bob  psst").await.unwrap();
        session.handle_line("/nope").await.unwrap();
        session.quit().await
    };
    let script = async {
        // Every say and private message has the next id; leaving waits for the
        // acknowledgements.
        ack_say(&mut server, 1, "hello  there", 4).await;
        ack_private(&mut server, 2, "bob", "psst", 5).await;
        // The leave is confirmed, then the client hangs up.
        answer_leave(&mut server).await;
    };
    let (quit, ()) = tokio::join!(client, script);
    assert_eq!(quit, Ok(()));
    assert!(session.undelivered().is_empty());
    // Hanging up on purpose is not losing the server, not even a moment later.
    let lost = timeout(Duration::from_millis(100), lost.wait()).await;
    assert!(lost.is_err(), "{lost:?}");
    let all = lines.all();
    assert!(
        all.contains(&"server@127.0.0.1> bob: hi\u{FFFD}[2J".to_string()),
        "{all:?}"
    );
    assert!(all.contains(&"Unknown command /nope; type /help for the list".to_string()));
    // Leaving to quit does not suggest rejoining.
    assert!(
        !all.iter().any(|l| l.starts_with("You have exited")),
        "{all:?}"
    );
}

#[tokio::test]
async fn end_of_input_leaves_the_room() {
    let (mut session, mut server, _lines) = joined_session().await;
    let output = PlainOutput::new(None, false);
    let input: &[u8] = b"/users\n\n//slash\n";
    let client = plain::run(input, &mut session, &output);
    let script = async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::ListUsers));
        ack_say(&mut server, 1, "/slash", 1).await;
        answer_leave(&mut server).await;
    };
    let (result, ()) = tokio::join!(client, script);
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn a_closing_server_is_a_lost_connection() {
    let (session, mut server, _lines) = joined_session().await;
    let mut lost = session.lost_signal();
    closing(&mut server, LeaveReason::ServerShutdown).await;
    drop(server);
    let why = timeout(LIMIT, lost.wait()).await.unwrap();
    assert_eq!(why, SessionError::Lost("server shutting down".into()));
}

#[tokio::test]
async fn losing_the_server_while_waiting_is_an_error() {
    let (mut session, mut server, _lines) = joined_session().await;
    let client = session.leave();
    let script = async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        drop(server);
    };
    let (result, ()) = tokio::join!(client, script);
    assert_eq!(
        result,
        Err(SessionError::Lost(
            "the server closed the connection".into()
        ))
    );
}

#[tokio::test]
async fn the_backlog_is_marked_earlier_and_nothing_shows_twice() {
    let (listener, target) = listen().await;
    let (mut session, mut server, lines) =
        common::started_session(&listener, &target, Mode::Once).await;
    session.set_backlog(3);
    let script = async {
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Join {
                nick: "ann".into(),
                backlog: 3
            })
        );
        let answer = ServerMessage::Reply(joined_at(&["ann", "bob"], 1, 10));
        server.send(answer).await.unwrap();
    };
    let (joined, ()) = tokio::join!(session.join(), script);
    assert_eq!(joined, Ok(JoinOutcome::Joined));
    for event in [
        said(9, "bob", "nine"),
        said(10, "bob", "ten"),
        said(10, "bob", "ten"),
        said(11, "bob", "eleven"),
        said(9, "bob", "nine"),
    ] {
        server.send(event).await.unwrap();
    }
    server.send(said(12, "bob", "twelve")).await.unwrap();
    lines.wait_for("server@127.0.0.1> bob: twelve").await;
    assert_eq!(
        lines.after("* Type /help for options *"),
        [
            "[earlier] server@127.0.0.1> bob: nine",
            "[earlier] server@127.0.0.1> bob: ten",
            "server@127.0.0.1> bob: eleven",
            "server@127.0.0.1> bob: twelve",
        ]
    );
}

#[tokio::test]
async fn what_the_server_passes_over_is_counted_as_undelivered() {
    let (mut session, mut server, lines) = joined_session().await;
    let client = async {
        for line in ["one", "two", "/pm nobody psst", "three", "four"] {
            session.handle_line(line).await.unwrap();
        }
        session.quit().await
    };
    let script = async {
        ack_say(&mut server, 1, "one", 1).await;
        // "two" falls to the flood limit: no answer of its own.
        assert!(matches!(
            next(&mut server).await,
            Some(ClientMessage::Say { id: 2, .. })
        ));
        assert!(matches!(
            next(&mut server).await,
            Some(ClientMessage::Private { id: 3, .. })
        ));
        let no_such = Reply::NoSuchUser {
            nick: "nobody".into(),
        };
        server.send(ServerMessage::Reply(no_such)).await.unwrap();
        // "three" is refused for a reason the server tells.
        assert!(matches!(
            next(&mut server).await,
            Some(ClientMessage::Say { id: 4, .. })
        ));
        let invalid = Reply::InvalidText {
            reason: "too long".into(),
        };
        server.send(ServerMessage::Reply(invalid)).await.unwrap();
        ack_say(&mut server, 5, "four", 2).await;
        answer_leave(&mut server).await;
    };
    let (quit, ()) = tokio::join!(client, script);
    assert_eq!(quit, Ok(()));
    assert_eq!(
        session.undelivered(),
        Undelivered {
            flood: 1,
            ..Undelivered::default()
        }
    );
    let all = lines.all();
    assert!(
        all.contains(&"server@127.0.0.1> server: message not sent (too long)".to_string()),
        "{all:?}"
    );
}

#[tokio::test]
async fn a_server_that_kicks_for_flooding_ends_the_session_and_says_why() {
    let (session, mut server, _lines) = joined_session().await;
    let mut lost = session.lost_signal();
    closing(&mut server, LeaveReason::Flooding).await;
    let why = timeout(LIMIT, lost.wait()).await.unwrap();
    assert_eq!(
        why,
        SessionError::Lost(
            "the server disconnected this client for sending too fast (excess flood)".into()
        )
    );
}
