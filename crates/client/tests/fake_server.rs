//! The client library against a scripted in-process server: the handshake, the session's
//! answers to pings, quitting cleanly, and noticing a server that goes away.
//!
//! The real `chat-server` is exercised by the workspace's integration tests; here the
//! server is a few lines of script, so each test controls exactly what the client sees.

mod common;

use chat_client::plain::{self, PlainOutput};
use chat_client::session::{Session, SessionError};
use common::{LIMIT, Lines, Mode, ServerSide, accept, connect_client, listen, next};
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
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Say {
                id: 0,
                text: "hello  there".into()
            })
        );
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Private {
                id: 0,
                to: "bob".into(),
                text: "psst".into()
            })
        );
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        server
            .send(ServerMessage::Reply(Reply::Left))
            .await
            .unwrap();
        // After the confirmation the client hangs up.
        assert_eq!(next(&mut server).await, None);
    };
    let (quit, ()) = tokio::join!(client, script);
    assert_eq!(quit, Ok(()));
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
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Say {
                id: 0,
                text: "/slash".into()
            })
        );
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        server
            .send(ServerMessage::Reply(Reply::Left))
            .await
            .unwrap();
        assert_eq!(next(&mut server).await, None);
    };
    let (result, ()) = tokio::join!(client, script);
    assert_eq!(result, Ok(()));
}

#[tokio::test]
async fn a_closing_server_is_a_lost_connection() {
    let (session, mut server, _lines) = joined_session().await;
    let mut lost = session.lost_signal();
    server
        .send(ServerMessage::Closing {
            reason: LeaveReason::ServerShutdown,
        })
        .await
        .unwrap();
    drop(server);
    let why = timeout(LIMIT, lost.wait()).await.unwrap();
    assert_eq!(why, "server shutting down");
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
