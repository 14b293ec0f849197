//! The client library against a scripted in-process server: the handshake, the session's
//! answers to pings, quitting cleanly, and noticing a server that goes away.
//!
//! The real `chat-server` is exercised by the workspace's integration tests; here the
//! server is a few lines of script, so each test controls exactly what the client sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::connect::{self, ConnectError, ServerTarget};
use chat_client::plain::{self, PlainOutput};
use chat_client::session::{JoinOutcome, Output, Session, SessionError};
use futures_util::{SinkExt, StreamExt};
use protocol::handshake::ServerStep;
use protocol::{
    ClientMessage, Cookie, Event, EventKind, HandshakeMessage, LeaveReason, MessageCodec, NodeName,
    Reply, ServerHandshake, ServerMessage,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;

const LIMIT: Duration = Duration::from_secs(5);

type ServerSide = Framed<TcpStream, MessageCodec<ClientMessage>>;

/// Collects output lines.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl Output for Lines {
    fn line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

fn server_name() -> NodeName {
    NodeName::parse_long("server@127.0.0.1").unwrap()
}

/// Accepts one client and authenticates it with `cookie`; `None` if the handshake failed.
async fn accept(listener: &TcpListener, cookie: &str) -> Option<ServerSide> {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut preamble = [0u8; 4];
    tcp.read_exact(&mut preamble).await.unwrap();
    assert_eq!(preamble, protocol::PREAMBLE);
    let mut framed = Framed::new(tcp, MessageCodec::<HandshakeMessage>::new());
    let mut machine = ServerHandshake::new(server_name(), Cookie::new(cookie).unwrap(), 60_000);
    loop {
        let msg = framed.next().await.unwrap().unwrap();
        match machine.on_message(msg) {
            ServerStep::Send(reply) => framed.send(reply).await.unwrap(),
            ServerStep::Accept { reply, .. } => {
                framed.send(reply).await.unwrap();
                return Some(framed.map_codec(|_| MessageCodec::new()));
            }
            ServerStep::Refuse { reply, .. } => {
                framed.send(reply).await.unwrap();
                return None;
            }
        }
    }
}

async fn next(server: &mut ServerSide) -> Option<ClientMessage> {
    timeout(LIMIT, server.next())
        .await
        .expect("the client said nothing")
        .map(|msg| msg.unwrap())
}

async fn listen() -> (TcpListener, ServerTarget) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = format!("server@127.0.0.1:{port}").parse().unwrap();
    (listener, target)
}

async fn connect_client(
    target: &ServerTarget,
    cookie: &str,
) -> Result<connect::Connection, ConnectError> {
    let own = NodeName::parse_long("ann@127.0.0.1").unwrap();
    connect::connect(target, &own, Cookie::new(cookie).unwrap()).await
}

/// Starts a joined session; returns it, the server's side and the output.
async fn joined_session() -> (Session, ServerSide, Arc<Lines>) {
    let (listener, target) = listen().await;
    let (server, connection) = tokio::join!(accept(&listener, "c"), connect_client(&target, "c"));
    let mut server = server.unwrap();
    let lines = Arc::new(Lines::default());
    let mut session = Session::start(
        connection.unwrap(),
        &server_name(),
        "ann".into(),
        Arc::clone(&lines) as _,
    );
    let script = async {
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Join { nick: "ann".into() })
        );
        let joined = Reply::Joined {
            users: vec!["ann".into(), "bob".into()],
        };
        server.send(ServerMessage::Reply(joined)).await.unwrap();
    };
    let (outcome, ()) = tokio::join!(session.join(), script);
    assert_eq!(outcome, Ok(JoinOutcome::Joined));
    (session, server, lines)
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
                text: "hello  there".into()
            })
        );
        assert_eq!(
            next(&mut server).await,
            Some(ClientMessage::Private {
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
