//! Reconnecting asks the port mapper again: a server restarted on another port under the
//! same name is found.
//!
//! Alone in its own test binary because it points `ERL_EPMD_PORT` at an in-process port
//! mapper, and the environment is per process.

mod common;

use std::future;
use std::net::SocketAddr;

use chat_client::connect::ServerTarget;
use chat_client::session::Flow;
use common::{Mode, accept, answer_join, joined, joined_session, next, quick_policy, send};
use protocol::{ClientMessage, Reply, ServerMessage};
use tokio::net::TcpListener;

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

#[tokio::test]
async fn a_server_restarted_on_another_port_is_found_again() {
    let mapper = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mapper_addr = mapper.local_addr().unwrap();
    tokio::spawn(portmap::serve(mapper, future::pending()));
    // SAFETY: this is the only test in this binary, and nothing else reads or writes the
    // environment while it runs.
    unsafe { std::env::set_var(portmap::PORT_ENV_VAR, mapper_addr.port().to_string()) };

    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registration = register(mapper_addr, first.local_addr().unwrap().port()).await;
    let target: ServerTarget = "server@127.0.0.1".parse().unwrap();
    let (mut session, server, lines) =
        joined_session(&first, &target, Mode::Reconnect(quick_policy())).await;

    // The server stops and comes back on a new port.
    drop(server);
    drop(first);
    drop(registration);
    let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _registration = register(mapper_addr, second.local_addr().unwrap().port()).await;

    let mut server = accept(&second, common::COOKIE).await.unwrap();
    answer_join(&mut server, "ann", joined(&["ann"])).await;
    lines.wait_for("* Users in the room: ann *").await;

    let script = async {
        assert_eq!(next(&mut server).await, Some(ClientMessage::Leave));
        send(&mut server, ServerMessage::Reply(Reply::Left)).await;
    };
    let (quit, ()) = tokio::join!(session.handle_line("/quit"), script);
    assert_eq!(quit, Ok(Flow::Quit));
}
