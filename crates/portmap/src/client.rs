//! Talking to a port mapper: register a name, look one up, list them all.
//!
//! Each call opens a fresh TCP connection, sends one epmd request and reads the answer,
//! which is how Erlang's own `erl_epmd` does it. A registration is the exception: its
//! connection stays open for as long as the node lives, and the mapper forgets the name
//! the moment it closes. So [`Registration`] owns that connection, and dropping it is
//! unregistering.
//!
//! Every network step is bounded by [`TIMEOUT`], so a mapper that
//! accepts but never answers cannot hang the caller.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use protocol::epmd::{self, NodeRegistration, Port2Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::{PortmapError, TIMEOUT};

/// The largest answer we accept to a lookup: a `PORT2_RESP` with a maximal name and
/// extra field fits comfortably.
const MAX_PORT2_RESPONSE: usize = 2 + 10 + 2 * (2 + u16::MAX as usize);

/// The largest answer we accept to a listing: thousands of nodes' worth.
const MAX_NAMES_RESPONSE: usize = 1024 * 1024;

/// A live registration with a port mapper.
///
/// The name stays registered exactly as long as this value (and with it the TCP
/// connection to the mapper) exists; drop it to unregister.
#[derive(Debug)]
pub struct Registration {
    stream: TcpStream,
    name: String,
    port: u16,
    creation: u32,
}

impl Registration {
    /// The creation number the mapper assigned: it tells apart successive incarnations
    /// of a node with the same name.
    pub fn creation(&self) -> u32 {
        self.creation
    }

    /// The registered name (the `alive` part of the node name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port the registration points at.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves when the mapper closes the connection (or it fails), i.e. when the
    /// registration is gone although we did not drop it: typically the mapper died.
    ///
    /// Cancel-safe, so it can sit in a `select!` next to the server's other work.
    pub async fn closed(&mut self) {
        let mut buf = [0u8; 64];
        loop {
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // The mapper has nothing to say on this connection; ignore any bytes.
                Ok(_) => continue,
            }
        }
    }
}

/// Registers `alive` at `port` with the mapper at `mapper`, the way a normal Erlang node
/// does (node type 77, protocol 0, distribution versions 6 down to 5, no extra bytes).
///
/// Fails with [`PortmapError::NameTaken`] if the name is already registered and
/// [`PortmapError::Unreachable`] if no mapper answers at `mapper`.
pub async fn register(
    mapper: SocketAddr,
    alive: &str,
    port: u16,
) -> Result<Registration, PortmapError> {
    register_node(mapper, &NodeRegistration::normal(alive, port)).await
}

/// Like [`register`], with every field of the registration given (node type, versions,
/// extra bytes), as `ALIVE2_REQ` carries them.
pub async fn register_node(
    mapper: SocketAddr,
    registration: &NodeRegistration,
) -> Result<Registration, PortmapError> {
    let alive = registration.name.as_str();
    let port = registration.port;
    let request = epmd::encode_alive2_req(registration)?;
    let mut stream = connect(mapper).await?;
    bounded(async {
        stream.write_all(&request).await?;
        let mut head = [0u8; 2];
        read_exact_or_no_answer(&mut stream, &mut head).await?;
        let [code, result] = head;
        let Some(len) = epmd::alive2_response_len(code) else {
            return Err(epmd::EpmdError::UnexpectedCode {
                expected: "ALIVE2_RESP (121) or ALIVE2_X_RESP (118)",
                found: code,
            }
            .into());
        };
        if result != epmd::RESULT_OK {
            return Err(PortmapError::NameTaken(alive.to_owned()));
        }
        // Read the creation; a short read leaves `response` short, and the parser says
        // exactly what is missing.
        let mut response = [0u8; 6];
        response[..2].copy_from_slice(&head);
        let mut filled = 2;
        while filled < len {
            match stream.read(&mut response[filled..len]).await? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(epmd::parse_alive2_response(&response[..filled])?)
    })
    .await
    .map(|answer| {
        let creation = answer.creation;
        tracing::debug!(%mapper, alive, port, creation, "registered with port mapper");
        Registration {
            stream,
            name: alive.to_owned(),
            port,
            creation: answer.creation,
        }
    })
}

/// Asks the mapper at `mapper` for the port of the node named `alive`.
///
/// [`PortmapError::NoSuchName`] means the mapper answered and knows no such node;
/// [`PortmapError::Unreachable`] means no mapper answered at all.
pub async fn lookup(mapper: SocketAddr, alive: &str) -> Result<u16, PortmapError> {
    lookup_registration(mapper, alive).await.map(|reg| reg.port)
}

/// Like [`lookup`], but returns everything the node registered with (node type,
/// protocol, version range, extra bytes), as `PORT2_RESP` carries it.
pub async fn lookup_registration(
    mapper: SocketAddr,
    alive: &str,
) -> Result<NodeRegistration, PortmapError> {
    let request = epmd::encode_port_please2_req(alive)?;
    let response = request_to_end(mapper, &request, MAX_PORT2_RESPONSE).await?;
    match epmd::parse_port2_response(&response)? {
        Port2Response::Found(reg) => Ok(reg),
        Port2Response::NotFound(_) => Err(PortmapError::NoSuchName(alive.to_owned())),
    }
}

/// Lists every node registered with the mapper at `mapper` as (`alive` name, port).
pub async fn names(mapper: SocketAddr) -> Result<Vec<(String, u16)>, PortmapError> {
    let response = request_to_end(mapper, &epmd::encode_names_req(), MAX_NAMES_RESPONSE).await?;
    Ok(epmd::parse_names_response(&response)?.nodes)
}

/// Connects to the mapper; every failure here means "no mapper answering".
async fn connect(mapper: SocketAddr) -> Result<TcpStream, PortmapError> {
    match timeout(TIMEOUT, TcpStream::connect(mapper)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(PortmapError::Unreachable(e)),
        Err(_) => Err(PortmapError::Unreachable(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {mapper} timed out"),
        ))),
    }
}

/// Sends one request and reads the answer until the mapper closes the connection, as it
/// does after a lookup or a listing. Reads at most `max` bytes.
async fn request_to_end(
    mapper: SocketAddr,
    request: &[u8],
    max: usize,
) -> Result<Vec<u8>, PortmapError> {
    let mut stream = connect(mapper).await?;
    bounded(async {
        stream.write_all(request).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(max as u64 + 1)
            .read_to_end(&mut response)
            .await?;
        if response.is_empty() {
            return Err(PortmapError::NoAnswer);
        }
        if response.len() > max {
            return Err(PortmapError::ResponseTooLarge(max));
        }
        Ok(response)
    })
    .await
}

/// Fills `buf`, reporting a clean close before the first byte as [`PortmapError::NoAnswer`].
async fn read_exact_or_no_answer(
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> Result<(), PortmapError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(PortmapError::NoAnswer),
        Err(e) => Err(e.into()),
    }
}

/// Runs one request/response exchange under the crate's time limit.
async fn bounded<T>(
    exchange: impl Future<Output = Result<T, PortmapError>>,
) -> Result<T, PortmapError> {
    timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| PortmapError::Timeout(TIMEOUT.as_secs()))?
}
