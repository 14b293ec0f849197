//! A scripted in-process server and an output that records lines, shared by the client
//! library's tests.
//!
//! Each test drives the server side by hand (accept, handshake, then exact messages), so
//! it controls exactly what the client sees, and waits for the client's output lines
//! instead of sleeping.

// Each test file uses its own subset of the helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use chat_client::connect::{self, ConnectError, ServerTarget};
use chat_client::reconnect::{ReconnectPolicy, Redial};
use chat_client::session::{JoinOutcome, Output, Session};
use futures_util::{SinkExt, StreamExt};
use protocol::secure::ServerStep;
use protocol::{
    ClientMessage, Cookie, LeaveReason, NodeName, Reply, SecureCodec, ServerHandshake,
    ServerMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// How long a test waits for anything before failing.
pub const LIMIT: Duration = Duration::from_secs(5);

/// The cookie both sides use unless a test says otherwise.
pub const COOKIE: &str = "c";

/// The server's side of a session.
pub type ServerSide = Framed<TcpStream, SecureCodec<ClientMessage>>;

/// Records output lines, and lets a test wait for one.
pub struct Lines(watch::Sender<Vec<String>>);

impl Default for Lines {
    fn default() -> Self {
        Self(watch::channel(Vec::new()).0)
    }
}

impl Output for Lines {
    fn line(&self, line: &str) {
        self.0.send_modify(|lines| lines.push(line.to_string()));
    }
}

impl Lines {
    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0.borrow().clone()
    }

    /// Waits until `line` has been shown; fails the test after [`LIMIT`].
    pub async fn wait_for(&self, line: &str) {
        let mut rx = self.0.subscribe();
        let seen = timeout(LIMIT, rx.wait_for(|lines| lines.iter().any(|l| l == line))).await;
        assert!(
            matches!(seen, Ok(Ok(_))),
            "never saw {line:?}; lines: {:#?}",
            self.all()
        );
    }

    /// The lines shown after the first occurrence of `line` (empty if it was not shown).
    pub fn after(&self, line: &str) -> Vec<String> {
        let all = self.all();
        match all.iter().position(|l| l == line) {
            Some(i) => all[i + 1..].to_vec(),
            None => Vec::new(),
        }
    }
}

/// The fake server's node name.
pub fn server_name() -> NodeName {
    NodeName::parse_long("server@127.0.0.1").unwrap()
}

/// The client's node name.
pub fn own_name() -> NodeName {
    NodeName::parse_long("ann@127.0.0.1").unwrap()
}

/// Accepts one client and authenticates it with `cookie`; `None` if the handshake failed.
pub async fn accept(listener: &TcpListener, cookie: &str) -> Option<ServerSide> {
    let (mut tcp, _) = timeout(LIMIT, listener.accept())
        .await
        .expect("the client did not connect")
        .unwrap();
    let mut preamble = [0u8; 4];
    tcp.read_exact(&mut preamble).await.unwrap();
    assert_eq!(preamble, protocol::PREAMBLE);
    let mut framed = Framed::new(tcp, protocol::codec::handshake_framing());
    let mut machine = ServerHandshake::new(server_name(), Cookie::new(cookie).unwrap(), 60_000);
    loop {
        // A client that finds the cookie wrong hangs up without a word.
        let payload = framed.next().await?.unwrap();
        match machine.on_frame(&payload) {
            ServerStep::Send(reply) => framed.get_mut().write_all(&reply).await.unwrap(),
            ServerStep::Accept { reply, channel, .. } => {
                framed.get_mut().write_all(&reply).await.unwrap();
                return Some(framed.map_codec(|_| SecureCodec::new(*channel)));
            }
            ServerStep::Refuse { reply, .. } => {
                let _ = framed.get_mut().write_all(&reply).await;
                return None;
            }
        }
    }
}

/// The next message from the client; `None` when it closed the connection.
pub async fn next(server: &mut ServerSide) -> Option<ClientMessage> {
    timeout(LIMIT, server.next())
        .await
        .expect("the client said nothing")
        .map(|msg| msg.unwrap())
}

/// Sends `msg` to the client.
pub async fn send(server: &mut ServerSide, msg: ServerMessage) {
    server.send(msg).await.unwrap();
}

/// Tells the client the server is closing its connection, for `reason`.
pub async fn closing(server: &mut ServerSide, reason: LeaveReason) {
    send(server, ServerMessage::Closing { reason }).await;
}

/// Expects the client to join as `nick` and answers with `answer`.
pub async fn answer_join(server: &mut ServerSide, nick: &str, answer: Reply) {
    assert_eq!(
        next(server).await,
        Some(ClientMessage::Join {
            nick: nick.into(),
            backlog: 0
        })
    );
    send(server, ServerMessage::Reply(answer)).await;
}

/// The ticket the scripted server gives.
pub const TICKET: protocol::SessionTicket = protocol::SessionTicket {
    id: 1,
    secret: [7; 16],
};

/// The scripted server's flood limit: 10 messages/s, bursts of 20.
pub const LIMITS: protocol::FloodLimits = protocol::FloodLimits {
    interval_us: 100_000,
    burst: 20,
};

/// The reply to a successful join with `users` in the room (epoch 1, at room number 0).
pub fn joined(users: &[&str]) -> Reply {
    joined_at(users, 1, 0)
}

/// The reply to a successful join with `users` in the room, in `epoch` at `seq`.
pub fn joined_at(users: &[&str], epoch: u64, seq: u64) -> Reply {
    Reply::Joined {
        users: nicks(users),
        more: 0,
        ticket: TICKET,
        epoch,
        seq,
        limits: LIMITS,
    }
}

/// Owned nicks.
pub fn nicks(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

/// The resume of the session [`joined`] started, after `last_seq`.
pub fn resume(last_seq: u64) -> ClientMessage {
    ClientMessage::Resume {
        ticket: TICKET,
        epoch: 1,
        last_seq,
    }
}

/// The reply to a resume: `missed` events follow, up to room number `seq`.
pub fn resumed(users: &[&str], missed: u32, lost: u64, seq: u64) -> Reply {
    Reply::Resumed {
        missed,
        lost,
        rejoined: false,
        users: nicks(users),
        more: 0,
        seq,
        limits: LIMITS,
    }
}

/// A room event: `from` said `text`, numbered `seq`.
pub fn said(seq: u64, from: &str, text: &str) -> ServerMessage {
    ServerMessage::Event(protocol::Event {
        seq,
        kind: protocol::EventKind::Message {
            from: from.into(),
            text: text.into(),
        },
    })
}

/// Expects a say with `id` and `text`, and acknowledges it as room number `seq`.
pub async fn ack_say(server: &mut ServerSide, id: u64, text: &str, seq: u64) {
    assert_eq!(
        next(server).await,
        Some(ClientMessage::Say {
            id,
            text: text.into()
        })
    );
    send(server, ServerMessage::Reply(Reply::Sent { id, seq })).await;
}

/// Expects a private message to `to` with `id` and `text`, and acknowledges it as room
/// number `seq`.
pub async fn ack_private(server: &mut ServerSide, id: u64, to: &str, text: &str, seq: u64) {
    assert_eq!(
        next(server).await,
        Some(ClientMessage::Private {
            id,
            to: to.into(),
            text: text.into()
        })
    );
    send(server, ServerMessage::Reply(Reply::Sent { id, seq })).await;
}

/// Expects the client to leave the room and confirms it.
pub async fn ack_leave(server: &mut ServerSide) {
    assert_eq!(next(server).await, Some(ClientMessage::Leave));
    send(server, ServerMessage::Reply(Reply::Left)).await;
}

/// Answers the client's leave and expects it to hang up: how a session quits.
pub async fn answer_leave(server: &mut ServerSide) {
    ack_leave(server).await;
    assert_eq!(next(server).await, None);
}

/// A listener on an ephemeral port and the target naming it.
pub async fn listen() -> (TcpListener, ServerTarget) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let target = format!("server@127.0.0.1:{port}").parse().unwrap();
    (listener, target)
}

/// Connects as `ann@127.0.0.1` with `cookie`.
pub async fn connect_client(
    target: &ServerTarget,
    cookie: &str,
) -> Result<connect::Connection, ConnectError> {
    connect::connect(target, &own_name(), Cookie::new(cookie).unwrap()).await
}

/// Short waits, so that reconnect tests run quickly.
pub fn quick_policy() -> ReconnectPolicy {
    ReconnectPolicy {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        jitter: 0.2,
        lookup_every: Duration::from_millis(20),
    }
}

/// How a test session is started.
pub enum Mode {
    /// [`Session::start`]: losing the server ends the session.
    Once,
    /// [`Session::start_reconnecting`] with this policy.
    Reconnect(ReconnectPolicy),
}

/// Connects a session as `ann` to `target` (served by `listener`), not yet joined;
/// returns the session, the server's side and the output.
pub async fn started_session(
    listener: &TcpListener,
    target: &ServerTarget,
    mode: Mode,
) -> (Session, ServerSide, Arc<Lines>) {
    let (server, connection) =
        tokio::join!(accept(listener, COOKIE), connect_client(target, COOKIE));
    let server = server.unwrap();
    let connection = connection.unwrap();
    let lines = Arc::new(Lines::default());
    let output = Arc::clone(&lines) as _;
    let session = match mode {
        Mode::Once => Session::start(connection, &server_name(), "ann".into(), output),
        Mode::Reconnect(policy) => {
            let redial = Redial {
                target: target.clone(),
                fallbacks: Vec::new(),
                own: own_name(),
                cookie: Cookie::new(COOKIE).unwrap(),
                policy,
            };
            Session::start_reconnecting(connection, "ann".into(), output, redial)
        }
    };
    (session, server, lines)
}

/// Connects a session as `ann` to `target` (served by `listener`) and joins the room
/// with `ann, bob` in it; returns the session, the server's side and the output.
pub async fn joined_session(
    listener: &TcpListener,
    target: &ServerTarget,
    mode: Mode,
) -> (Session, ServerSide, Arc<Lines>) {
    let (mut session, mut server, lines) = started_session(listener, target, mode).await;
    let (outcome, ()) = tokio::join!(
        session.join(),
        answer_join(&mut server, "ann", joined(&["ann", "bob"]))
    );
    assert_eq!(outcome, Ok(JoinOutcome::Joined));
    (session, server, lines)
}
