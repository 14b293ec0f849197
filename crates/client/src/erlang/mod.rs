//! chat-client joining an Erlang node that serves ExMessenger's `message_server` (the
//! original Elixir server, or anything speaking its terms).
//!
//! [`connect`] runs the distribution handshake as a hidden node named after
//! `--name`/`--sname` and returns a [`Connection`] whose stream is an adapter
//! ([`connection::BeamTransport`]): the rest of the client (session, message handler,
//! reconnect, front ends) runs unchanged on it, so the screens are the same as against
//! chat-server.
//!
//! - [`adapter`]: our messages <-> the original's calls, casts and replies (pure).
//! - [`connection`]: the handshake over TCP and the task that owns the socket.

pub mod adapter;
pub mod connection;

use protocol::{Cookie, NodeName};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::connect::{ConnectError, Connection, HANDSHAKE_TIMEOUT};

/// Authenticates on `tcp` to the Erlang node `server` as `own`, and starts the adapter.
pub async fn connect(
    mut tcp: TcpStream,
    own: &NodeName,
    server: &NodeName,
    cookie: Cookie,
) -> Result<Connection, ConnectError> {
    // A node's incarnation; any non-zero value does for a node that does not register.
    let creation = rand::random::<u32>().max(1);
    let leftover = timeout(
        HANDSHAKE_TIMEOUT,
        connection::handshake(&mut tcp, own, server, cookie, creation),
    )
    .await
    .map_err(|_| ConnectError::HandshakeTimeout)??;
    let transport = connection::start(tcp, leftover, own, creation);
    Ok(Connection {
        stream: Box::pin(transport),
        tick: Some(connection::TICK),
    })
}
