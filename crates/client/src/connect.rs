//! Getting from a server's node name to an authenticated session stream.
//!
//! 1. Resolve: `alive@host` asks the port mapper on `host` (port `$ERL_EPMD_PORT`, else
//!    4369) which port `alive` listens on, as Erlang nodes ask epmd; `alive@host:PORT`
//!    skips the mapper.
//! 2. Connect over TCP (with `TCP_NODELAY`: chat lines are small and should go at once).
//! 3. Send the protocol preamble, then run the cookie handshake
//!    ([`protocol::ClientHandshake`], a PAKE) within [`HANDSHAKE_TIMEOUT`].
//! 4. Hand back the same stream framed for session messages inside the secure channel
//!    ([`protocol::SecureCodec`]), keeping any bytes already read past the handshake.
//!
//! A server found through the port mapper whose registration lacks our marker
//! ([`protocol::erlang::EPMD_EXTRA_MARKER`] in epmd's Extra field) is an Erlang node:
//! after step 2 the connection goes to [`crate::erlang`] instead (so does `--erlang`,
//! needed only with an explicit `:PORT`, where there is no registration to look at).
//!
//! Every failure is a [`ConnectError`] whose `Display` is the `<why>` of the contract's
//! `Could not connect to <server>: <why>`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use futures_util::StreamExt;
use portmap::PortmapError;
use protocol::codec;
use protocol::secure::{ClientStep, RefuseReason};
use protocol::{
    ClientHandshake, CodecError, Cookie, HandshakeError, NodeName, NodeNameError, PREAMBLE,
    SecureCodec,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tracing::debug;

/// Time limit for the cookie handshake, from the preamble to the server's proof.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Time limit for establishing the TCP connection to the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The session stream: server messages in, client messages out (see
/// [`crate::transport`]).
pub type SessionStream = crate::transport::SessionStream;

/// The server to connect to, as given with `--server alive@host[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTarget {
    /// The server's node name.
    pub name: NodeName,
    /// The port, when given; `None` means "ask the port mapper".
    pub port: Option<u16>,
    /// Speak Erlang distribution whatever the port mapper says (`--erlang`).
    pub erlang: bool,
}

/// Why a `--server` value is not `alive@host[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerTargetError {
    /// The name part is not a node name.
    #[error(transparent)]
    Name(#[from] NodeNameError),
    /// The part after the last `:` is not a port number from 1 to 65535.
    #[error("{0:?} is not a port number (1-65535)")]
    Port(String),
}

impl FromStr for ServerTarget {
    type Err = ServerTargetError;

    /// Parses `alive@host`, `alive@host:PORT`, or a bare `alive` (on this host, as with
    /// `--sname`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, port) = match s.rsplit_once(':') {
            Some((name, port)) => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| ServerTargetError::Port(port.to_string()))?;
                (name, Some(port))
            }
            None => (s, None),
        };
        let name = if name.contains('@') {
            NodeName::parse_long(name)?
        } else {
            NodeName::parse_short(name)?
        };
        Ok(Self {
            name,
            port,
            erlang: false,
        })
    }
}

impl fmt::Display for ServerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

/// Why the client could not connect. The `Display` texts are the contract's `<why>`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server's host name does not resolve.
    #[error("cannot resolve host {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },
    /// No port mapper answers on the server's host.
    #[error("no port mapper on {host}:{port} (is chat-server running?)")]
    NoPortMapper {
        /// The server's host.
        host: String,
        /// The mapper port tried.
        port: u16,
    },
    /// The port mapper answered, but no node of that name is registered.
    #[error(
        "no node named {alive} on {host} (port mapper at {host}:{port}); start chat-server \
         there, or check the name given to --server{}",
        registered_there(known)
    )]
    NoSuchNode {
        /// The name asked for.
        alive: String,
        /// The server's host.
        host: String,
        /// The mapper port.
        port: u16,
        /// The names the port mapper does know (a few, escaped), to spot a typo.
        known: Vec<String>,
    },
    /// The port mapper failed in some other way.
    #[error("port mapper on {host}: {source}")]
    Portmap {
        /// The server's host.
        host: String,
        /// What went wrong.
        #[source]
        source: PortmapError,
    },
    /// Nothing listens on the server's port.
    #[error("connection refused by {host}:{port}")]
    Refused {
        /// The server's host.
        host: String,
        /// The port.
        port: u16,
    },
    /// The TCP connection did not complete in time.
    #[error("timed out connecting to {host}:{port}")]
    ConnectTimeout {
        /// The server's host.
        host: String,
        /// The port.
        port: u16,
    },
    /// Some other socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Another node answered at the server's address: the name given is not its name.
    /// `answered` is escaped (it came from the network).
    #[error("{answered} answered, not {asked}; to talk to it, use --server {answered}{}",
            port.map(|p| format!(":{p}")).unwrap_or_default())]
    WrongNode {
        /// The node asked for.
        asked: String,
        /// The node that answered, escaped.
        answered: String,
        /// The port given with `--server`, if any.
        port: Option<u16>,
    },
    /// The key exchange failed: the server has another cookie (or refused ours).
    #[error("not allowed (check the cookie)")]
    NotAllowed,
    /// The handshake failed for another reason (wrong node, version, server full...).
    /// Its text may quote what the server sent, escaped.
    #[error("{}", protocol::unicode::escape(&.0.to_string()))]
    Handshake(HandshakeError),
    /// The server did not complete the handshake in time.
    #[error("no answer to the handshake within {} seconds", HANDSHAKE_TIMEOUT.as_secs())]
    HandshakeTimeout,
    /// The server closed the connection in the middle of the handshake.
    #[error("the server closed the connection during the handshake")]
    ClosedInHandshake,
    /// The server sent something that is not a handshake message.
    #[error("{0}")]
    Codec(#[from] CodecError),
    /// The Erlang distribution handshake failed.
    #[error("{0}")]
    Erlang(protocol::erlang::handshake::HandshakeError),
}

/// `; the names registered there: a, b` for a non-empty list, else nothing.
fn registered_there(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!("; the names registered there: {}", known.join(", "))
    }
}

/// Most names of other nodes a "no node named" error lists.
const MAX_KNOWN_NAMES: usize = 8;

impl ConnectError {
    /// Names the node that answered when it is not `target`, with the advice to ask for
    /// it by its name; any other error is returned as it is.
    fn naming(self, target: &ServerTarget) -> Self {
        let answered = match &self {
            Self::Handshake(HandshakeError::Refused(RefuseReason::WrongNode { this_node })) => {
                this_node
            }
            Self::Handshake(HandshakeError::WrongServer { actual, .. }) => actual,
            _ => return self,
        };
        Self::WrongNode {
            asked: target.name.to_string(),
            answered: protocol::unicode::escape(answered).to_string(),
            port: target.port,
        }
    }
}

impl From<HandshakeError> for ConnectError {
    fn from(e: HandshakeError) -> Self {
        match e {
            HandshakeError::Refused(RefuseReason::NotAllowed) | HandshakeError::KeyMismatch => {
                Self::NotAllowed
            }
            other => Self::Handshake(other),
        }
    }
}

/// An authenticated connection to a chat server.
pub struct Connection {
    /// The stream, framed for session messages.
    pub stream: SessionStream,
    /// The server's liveness tick: it pings an idle connection at least this often.
    /// `None` when the server announced no tick.
    pub tick: Option<Duration>,
}

/// Resolves `target`, connects, and authenticates as `own` with `cookie`.
pub async fn connect(
    target: &ServerTarget,
    own: &NodeName,
    cookie: Cookie,
) -> Result<Connection, ConnectError> {
    let host = target.name.host();
    let (port, erlang) = match target.port {
        Some(port) => (port, target.erlang),
        None => {
            let node = lookup_node(&target.name, portmap::mapper_port_from_env()).await?;
            let ours = node.extra == protocol::erlang::EPMD_EXTRA_MARKER;
            (node.port, target.erlang || !ours)
        }
    };
    debug!(host, port, "connecting");
    let mut tcp = match timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ConnectError::Refused {
                host: host.to_string(),
                port,
            });
        }
        Ok(Err(e)) => return Err(ConnectError::Io(e)),
        Err(_) => {
            return Err(ConnectError::ConnectTimeout {
                host: host.to_string(),
                port,
            });
        }
    };
    tcp.set_nodelay(true)?;
    if erlang {
        debug!("the server is an Erlang node; speaking distribution");
        return crate::erlang::connect(tcp, own, &target.name, cookie).await;
    }

    let handshake = async {
        tcp.write_all(&PREAMBLE).await?;
        let mut framed = Framed::new(tcp, codec::handshake_framing());
        let (tick_ms, channel) = handshake(&mut framed, own, &target.name, cookie).await?;
        Ok::<_, ConnectError>((framed, tick_ms, channel))
    };
    let (framed, tick_ms, channel) = timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ConnectError::HandshakeTimeout)?
        .map_err(|e| e.naming(target))?;

    // Same socket and buffers, new codec: bytes read past the handshake stay queued.
    let stream = framed.map_codec(|_| SecureCodec::new(channel));
    let tick = (tick_ms > 0).then(|| Duration::from_millis(tick_ms));
    Ok(Connection {
        stream: Box::pin(stream),
        tick,
    })
}

/// Asks the port mapper on the server's host for the server's registration.
pub(crate) async fn lookup_node(
    name: &NodeName,
    mapper_port: u16,
) -> Result<protocol::epmd::NodeRegistration, ConnectError> {
    let host = name.host();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, mapper_port))
        .await
        .map_err(|source| ConnectError::Resolve {
            host: host.to_string(),
            source,
        })?
        .collect();
    // A host name may resolve to several addresses (::1 and 127.0.0.1 for localhost);
    // the mapper may listen on only one of them.
    for addr in addrs {
        match portmap::lookup_registration(addr, name.alive()).await {
            Ok(node) => return Ok(node),
            Err(PortmapError::Unreachable(e)) => {
                debug!(%addr, error = %e, "no port mapper at this address");
            }
            Err(PortmapError::NoSuchName(_)) => {
                return Err(ConnectError::NoSuchNode {
                    alive: name.alive().to_string(),
                    host: host.to_string(),
                    port: mapper_port,
                    known: Vec::new(),
                });
            }
            Err(source) => {
                return Err(ConnectError::Portmap {
                    host: host.to_string(),
                    source,
                });
            }
        }
    }
    Err(ConnectError::NoPortMapper {
        host: host.to_string(),
        port: mapper_port,
    })
}

impl ConnectError {
    /// The error as told to a user who just started the client: "no node named" lists
    /// the names the port mapper does know (a typo shows). Asks that port mapper once
    /// more, so a reconnect, which may fail this way every second, does not.
    pub async fn explained(self) -> Self {
        match self {
            Self::NoSuchNode {
                alive, host, port, ..
            } => {
                let mut known = Vec::new();
                if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
                    for addr in addrs {
                        if let Some(names) = known_names(addr).await {
                            known = names;
                            break;
                        }
                    }
                }
                Self::NoSuchNode {
                    alive,
                    host,
                    port,
                    known,
                }
            }
            other => other,
        }
    }
}

/// A few of the names registered with the mapper at `addr`, escaped; `None` if it
/// cannot say.
async fn known_names(addr: SocketAddr) -> Option<Vec<String>> {
    match portmap::names(addr).await {
        Ok(nodes) => Some(
            nodes
                .into_iter()
                .take(MAX_KNOWN_NAMES)
                .map(|(alive, _)| protocol::unicode::escape(&alive).to_string())
                .collect(),
        ),
        Err(e) => {
            debug!(%addr, error = %e, "cannot list the port mapper's names");
            None
        }
    }
}

/// Runs the client side of the handshake; returns the server's tick in milliseconds and
/// the client's half of the channel.
async fn handshake(
    framed: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    own: &NodeName,
    server: &NodeName,
    cookie: Cookie,
) -> Result<(u64, protocol::Established), ConnectError> {
    let (mut machine, hello) = ClientHandshake::new(own.clone(), server.clone(), cookie);
    framed.get_mut().write_all(&hello).await?;
    loop {
        let payload = match framed.next().await {
            Some(payload) => payload.map_err(codec::framing_error)?,
            None => return Err(ConnectError::ClosedInHandshake),
        };
        match machine.on_frame(&payload)? {
            ClientStep::Send(reply) => framed.get_mut().write_all(&reply).await?,
            ClientStep::Done { tick_ms, channel } => return Ok((tick_ms, *channel)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t: ServerTarget = "server@localhost".parse().unwrap();
        assert_eq!(t.name.to_string(), "server@localhost");
        assert_eq!(t.port, None);
        assert_eq!(t.to_string(), "server@localhost");

        let t: ServerTarget = "server@127.0.0.1:4000".parse().unwrap();
        assert_eq!(t.name.host(), "127.0.0.1");
        assert_eq!(t.port, Some(4000));
        assert_eq!(t.to_string(), "server@127.0.0.1:4000");

        let t: ServerTarget = "server".parse().unwrap();
        assert_eq!(t.name.host(), protocol::name::short_hostname());
    }

    #[test]
    fn bad_targets_say_why() {
        assert!(matches!(
            "server@host:0".parse::<ServerTarget>(),
            Err(ServerTargetError::Port(_))
        ));
        assert!(matches!(
            "server@host:99999".parse::<ServerTarget>(),
            Err(ServerTargetError::Port(_))
        ));
        assert!(matches!(
            "se rver@host".parse::<ServerTarget>(),
            Err(ServerTargetError::Name(_))
        ));
    }

    #[test]
    fn errors_read_as_the_contract_says() {
        assert_eq!(
            ConnectError::from(HandshakeError::Refused(RefuseReason::NotAllowed)).to_string(),
            "not allowed (check the cookie)"
        );
        assert_eq!(
            ConnectError::NoSuchNode {
                alive: "server".into(),
                host: "host".into(),
                port: 4369,
                known: Vec::new(),
            }
            .to_string(),
            "no node named server on host (port mapper at host:4369); start chat-server \
             there, or check the name given to --server"
        );
        assert_eq!(
            ConnectError::NoSuchNode {
                alive: "server".into(),
                host: "host".into(),
                port: 4369,
                known: vec!["chat".into(), "rabbit".into()],
            }
            .to_string(),
            "no node named server on host (port mapper at host:4369); start chat-server \
             there, or check the name given to --server; the names registered there: chat, rabbit"
        );
        let target: ServerTarget = "server@localhost:4000".parse().unwrap();
        let wrong = ConnectError::from(HandshakeError::Refused(RefuseReason::WrongNode {
            this_node: "chat@box".into(),
        }))
        .naming(&target);
        assert_eq!(
            wrong.to_string(),
            "chat@box answered, not server@localhost; to talk to it, use --server chat@box:4000"
        );
        assert_eq!(
            ConnectError::NoPortMapper {
                host: "host".into(),
                port: 4369
            }
            .to_string(),
            "no port mapper on host:4369 (is chat-server running?)"
        );
        assert_eq!(
            ConnectError::Refused {
                host: "host".into(),
                port: 4000
            }
            .to_string(),
            "connection refused by host:4000"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_connection_refused() {
        // Bind and drop to find a port that is (almost certainly) closed.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let target: ServerTarget = format!("server@127.0.0.1:{port}").parse().unwrap();
        let own = NodeName::parse_long("me@127.0.0.1").unwrap();
        let cookie = Cookie::new("c").unwrap();
        let err = connect(&target, &own, cookie).await.err().unwrap();
        assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
        assert!(err.to_string().ends_with(&format!(":{port}")), "{err}");
    }
}
