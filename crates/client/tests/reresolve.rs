//! Reconnecting asks the port mapper again: a server restarted on another port under the
//! same name is found, at once when its name shows up again (not after the backoff).
//!
//! Alone in its own test binary because it points `ERL_EPMD_PORT` at an in-process port
//! mapper, and the environment is per process.

mod common;

use std::future;
use std::net::SocketAddr;
use std::time::Duration;

use chat_client::connect::ServerTarget;
use chat_client::reconnect::ReconnectPolicy;
use chat_client::session::Flow;
use common::{Mode, accept, joined_session, next, resume, resumed, send};
use protocol::{ClientMessage, Reply, ServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Registers `server` at `port` as a chat-server does (with its marker in Extra),
/// retrying while the mapper still holds the previous registration (it notices a dropped
/// one when its connection closes).
async fn register(mapper: SocketAddr, port: u16) -> portmap::Registration {
    let mut node = protocol::epmd::NodeRegistration::normal("server", port);
    node.extra = protocol::erlang::EPMD_EXTRA_MARKER.to_vec();
    let registering = async {
        loop {
            match portmap::register_node(mapper, &node).await {
                Ok(registration) => return registration,
                Err(portmap::PortmapError::NameTaken(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("cannot register: {e}"),
            }
        }
    };
    tokio::time::timeout(common::LIMIT, registering)
        .await
        .expect("the old registration never went away")
}

/// Forwards connections from a new port to `mapper`, counting them: the client's
/// look-ups, seen from outside.
async fn counting_forwarder(mapper: SocketAddr) -> (SocketAddr, watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (count_tx, count) = watch::channel(0);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count_tx.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(mapper).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

/// Waits until the mapper has forgotten `server`.
async fn wait_unregistered(mapper: SocketAddr) {
    let gone = async {
        while portmap::lookup(mapper, "server").await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(common::LIMIT, gone)
        .await
        .expect("the mapper kept the registration");
}

#[tokio::test]
async fn a_server_back_on_another_port_is_found_at_once_through_the_mapper() {
    let mapper = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mapper_addr = mapper.local_addr().unwrap();
    tokio::spawn(portmap::serve(mapper, future::pending()));
    let (seen_addr, mut lookups) = counting_forwarder(mapper_addr).await;
    // SAFETY: this is the only test in this binary, and nothing else reads or writes the
    // environment while it runs.
    unsafe { std::env::set_var(portmap::PORT_ENV_VAR, seen_addr.port().to_string()) };

    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registration = register(mapper_addr, first.local_addr().unwrap().port()).await;
    let target: ServerTarget = "server@127.0.0.1".parse().unwrap();
    // The first attempt would wait a minute: only the watch on the mapper can bring the
    // client back within the test's time limit.
    let policy = ReconnectPolicy {
        initial: Duration::from_secs(60),
        lookup_every: Duration::from_millis(20),
        ..ReconnectPolicy::default()
    };
    let (mut session, server, lines) =
        joined_session(&first, &target, Mode::Reconnect(policy)).await;

    // The server stops; the mapper forgets it.
    drop(registration);
    wait_unregistered(mapper_addr).await;
    drop(server);
    drop(first);
    lines
        .wait_for(
            "Connection to server@127.0.0.1 lost: the server closed the connection; reconnecting...",
        )
        .await;
    // Two look-ups by the client: the first one (at least) found the name gone.
    let before = *lookups.borrow_and_update();
    let two_more = lookups.wait_for(|n| *n >= before + 2);
    tokio::time::timeout(common::LIMIT, two_more)
        .await
        .expect("the client does not watch the mapper")
        .unwrap();

    // It comes back on a new port.
    let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _registration = register(mapper_addr, second.local_addr().unwrap().port()).await;
    let mut server = accept(&second, common::COOKIE).await.unwrap();
    assert_eq!(next(&mut server).await, Some(resume(0)));
    send(
        &mut server,
        ServerMessage::Reply(resumed(&["ann"], 0, 0, 0)),
    )
    .await;
    lines.wait_for("* Back in the chatroom *").await;

    let script = async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        send(&mut server, ServerMessage::Reply(Reply::Left)).await;
    };
    let (quit, ()) = tokio::join!(session.handle_line("/quit"), script);
    assert_eq!(quit, Ok(Flow::Quit));
}
