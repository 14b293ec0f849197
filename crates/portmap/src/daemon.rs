//! The port mapper server: an epmd-compatible name -> port map.
//!
//! Every accepted connection carries exactly one request:
//!
//! - `ALIVE2_REQ` registers a name. Only processes on this host may register (a remote
//!   peer could otherwise hijack names), and a name can be registered once. The
//!   registration lives exactly as long as the registering connection: the task keeps
//!   reading it until end of stream, then removes the name, so a crashed server vanishes
//!   from the map at once.
//! - `PORT_PLEASE2_REQ` answers with everything the node registered, or "not found".
//! - `NAMES_REQ` answers with the listing `epmd -names` prints.
//!
//! Anything else, anything malformed, oversized or too slow to arrive, is dropped by
//! closing the connection. The map itself is a `Mutex<HashMap>`: it holds a handful of
//! entries and is touched once per request, so nothing fancier is warranted.
//!
//! Limits, so that no local or remote peer can wear it down: at most
//! [`MAX_REGISTRATIONS`] names (each holds a connection for its life), at most
//! [`MAX_REQUESTS`] other connections in flight (past that, the oldest one still waiting
//! for its request is closed to make room, so idle connections can never take the
//! descriptors lookups need), names of at most [`MAX_NAME_LEN`] bytes, and [`TIMEOUT`]
//! for a request to arrive whole.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::epmd::{self, EpmdRequest, NodeRegistration, Port2Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::{PortmapError, TIMEOUT};

/// The largest request body we accept. Real requests are a few dozen bytes (a node name
/// is at most 255 bytes); anything bigger is garbage or hostile.
pub const MAX_REQUEST_BODY: usize = 512;

/// Most names registered at once (each holds one connection).
pub const MAX_REGISTRATIONS: usize = 256;

/// Most connections in flight that are not registrations (lookups, listings, requests
/// still arriving). With [`MAX_REGISTRATIONS`] this stays under the usual limit of 1024
/// descriptors per process.
pub const MAX_REQUESTS: usize = 512;

/// Longest name accepted (Erlang's atoms are at most 255 characters).
pub const MAX_NAME_LEN: usize = 255;

/// How long to pause after a failed `accept` (for instance, out of file descriptors)
/// before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One registered node: what it sent us, and the creation we gave it.
#[derive(Debug)]
struct Entry {
    registration: NodeRegistration,
    creation: u32,
}

/// The name -> registration map shared by all connection tasks.
#[derive(Debug, Clone, Default)]
struct Registry {
    nodes: Arc<Mutex<HashMap<String, Entry>>>,
}

impl Registry {
    /// Locks the map. A panic while holding the lock cannot leave the map half-updated
    /// (every update is a single insert or remove), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves the port mapper on `listener` until `shutdown` completes.
///
/// When it returns, every connection task is cancelled, which closes the registrations'
/// connections: registered nodes see their mapper go away.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PortmapError> {
    let local = listener.local_addr()?;
    let registry = Registry::default();
    // Connections not (yet) registrations, oldest first.
    let mut requests: VecDeque<InFlight> = VecDeque::new();
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    info!(%local, "port mapper listening");

    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!(%local, "port mapper shutting down");
                return Ok(());
            }
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    make_room(&mut requests);
                    let registered = Arc::new(AtomicBool::new(false));
                    let registry = registry.clone();
                    let task = tasks.spawn(handle_connection(
                        stream,
                        peer,
                        registry,
                        local.port(),
                        Arc::clone(&registered),
                    ));
                    requests.push_back(InFlight { task, registered });
                }
                Err(e) => {
                    warn!(error = %e, "port mapper failed to accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// A connection still counted as a request.
struct InFlight {
    task: AbortHandle,
    /// Set once it became a registration, which counts against its own limit.
    registered: Arc<AtomicBool>,
}

impl InFlight {
    fn done(&self) -> bool {
        self.task.is_finished() || self.registered.load(Ordering::Relaxed)
    }
}

/// Keeps the requests in flight under [`MAX_REQUESTS`] counting the one about to be
/// accepted: forgets those done, then closes the oldest still waiting.
fn make_room(requests: &mut VecDeque<InFlight>) {
    while requests.front().is_some_and(InFlight::done) {
        requests.pop_front();
    }
    if requests.len() < MAX_REQUESTS {
        return;
    }
    requests.retain(|request| !request.done());
    while requests.len() >= MAX_REQUESTS {
        if let Some(oldest) = requests.pop_front() {
            debug!("too many port mapper connections; closing the oldest");
            oldest.task.abort();
        }
    }
}

/// Reads one request from a fresh connection and serves it.
async fn handle_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
    mapper_port: u16,
    registered: Arc<AtomicBool>,
) {
    let body = match timeout(TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(body)) => body,
        Ok(Err(reason)) => {
            debug!(%peer, reason, "closing port mapper connection");
            return;
        }
        Err(_) => {
            debug!(%peer, "port mapper request timed out; closing");
            return;
        }
    };
    let request = match epmd::parse_request(&body) {
        Ok(request) => request,
        Err(e) => {
            debug!(%peer, error = %e, "malformed port mapper request; closing");
            return;
        }
    };
    match request {
        EpmdRequest::Alive2(registration) => {
            // A registration counts against its own limit, not the requests'.
            registered.store(true, Ordering::Relaxed);
            serve_registration(stream, peer, registry, registration).await;
        }
        EpmdRequest::PortPlease2 { name } => {
            let found = registry
                .lock()
                .get(&name)
                .map(|entry| entry.registration.clone());
            debug!(%peer, name, found = found.is_some(), "port lookup");
            let response = match found {
                Some(registration) => Port2Response::Found(registration),
                None => Port2Response::NotFound(epmd::RESULT_ERROR),
            };
            match response.encode() {
                Ok(bytes) => reply(&mut stream, peer, &bytes).await,
                Err(e) => warn!(%peer, error = %e, "cannot encode port lookup answer"),
            }
        }
        EpmdRequest::Names => {
            let mut nodes: Vec<(String, u16)> = registry
                .lock()
                .iter()
                .map(|(name, entry)| (name.clone(), entry.registration.port))
                .collect();
            nodes.sort();
            debug!(%peer, count = nodes.len(), "names listing");
            let bytes = epmd::encode_names_resp(
                u32::from(mapper_port),
                nodes.iter().map(|(name, port)| (name.as_str(), *port)),
            );
            reply(&mut stream, peer, &bytes).await;
        }
        EpmdRequest::Other(code) => {
            debug!(%peer, code, "unsupported port mapper request; closing");
        }
    }
}

/// Reads the 2-byte length and the body of a request, refusing empty or oversized ones.
async fn read_request(stream: &mut TcpStream) -> Result<Vec<u8>, &'static str> {
    let len = stream
        .read_u16()
        .await
        .map_err(|_| "connection closed before a request")?;
    let len = usize::from(len);
    if len == 0 {
        return Err("empty request");
    }
    if len > MAX_REQUEST_BODY {
        return Err("request too large");
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|_| "connection closed inside a request")?;
    Ok(body)
}

/// Writes a one-shot answer and closes our side of the connection.
async fn reply(stream: &mut TcpStream, peer: SocketAddr, bytes: &[u8]) {
    let result = async {
        stream.write_all(bytes).await?;
        stream.shutdown().await
    };
    match timeout(TIMEOUT, result).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "failed to answer port mapper request"),
        Err(_) => debug!(%peer, "timed out answering port mapper request"),
    }
}

/// Whether a peer may register names: only processes on this host, as with epmd.
fn may_register(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

/// Picks a creation number for a new registration.
///
/// Nodes speaking distribution version 6 get a random non-zero 32-bit creation in
/// `ALIVE2_X_RESP`. Older nodes keep only two bits of it, so, like epmd before OTP 23,
/// they get 1, 2 or 3.
fn new_creation(extended: bool) -> u32 {
    if extended {
        rand::random_range(1..=u32::MAX)
    } else {
        rand::random_range(1..=3)
    }
}

/// Serves an `ALIVE2_REQ`: registers the name, answers, and holds the registration until
/// the connection ends.
async fn serve_registration(
    mut stream: TcpStream,
    peer: SocketAddr,
    registry: Registry,
    registration: NodeRegistration,
) {
    if !may_register(peer.ip()) {
        warn!(%peer, name = registration.name, "refusing registration from a remote host");
        return;
    }
    let extended = registration.wants_x_resp();
    let name = registration.name.clone();
    let port = registration.port;

    if name.is_empty() || name.len() > MAX_NAME_LEN {
        info!(%peer, len = name.len(), "registration refused: name length out of range");
        refuse_registration(&mut stream, peer, extended).await;
        return;
    }
    let creation = {
        let mut nodes = registry.lock();
        if nodes.contains_key(&name) {
            None
        } else if nodes.len() >= MAX_REGISTRATIONS {
            Some(0)
        } else {
            let creation = new_creation(extended);
            nodes.insert(
                name.clone(),
                Entry {
                    registration,
                    creation,
                },
            );
            Some(creation)
        }
    };

    let creation = match creation {
        None => {
            info!(%peer, name, "registration refused: name already taken");
            refuse_registration(&mut stream, peer, extended).await;
            return;
        }
        // Creations are never 0: 0 means the map is full.
        Some(0) => {
            warn!(%peer, name, "registration refused: {MAX_REGISTRATIONS} names already registered");
            refuse_registration(&mut stream, peer, extended).await;
            return;
        }
        Some(creation) => creation,
    };

    let answer = if extended {
        epmd::encode_alive2_x_resp(epmd::RESULT_OK, creation)
    } else {
        // `new_creation(false)` is at most 3.
        epmd::encode_alive2_resp(epmd::RESULT_OK, u16::try_from(creation).unwrap_or(1))
    };
    let answered = timeout(TIMEOUT, stream.write_all(&answer)).await;
    if matches!(answered, Ok(Ok(()))) {
        info!(%peer, name, port, creation, "registered");
        wait_for_close(&mut stream).await;
    } else {
        debug!(%peer, name, "could not answer registration");
    }

    // Remove the name, unless (impossibly, as names are unique while registered) it
    // already belongs to a newer registration.
    let mut nodes = registry.lock();
    if nodes
        .get(&name)
        .is_some_and(|entry| entry.creation == creation)
    {
        nodes.remove(&name);
        drop(nodes);
        info!(%peer, name, port, "unregistered");
    }
}

/// Answers a registration with epmd's error result.
async fn refuse_registration(stream: &mut TcpStream, peer: SocketAddr, extended: bool) {
    let answer = if extended {
        epmd::encode_alive2_x_resp(epmd::RESULT_ERROR, 0)
    } else {
        epmd::encode_alive2_resp(epmd::RESULT_ERROR, 0)
    };
    reply(stream, peer, &answer).await;
}

/// Reads (and ignores) a registration connection until it ends, however it ends.
async fn wait_for_close(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn only_local_peers_may_register() {
        assert!(may_register(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert!(may_register(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1))));
        assert!(may_register(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert!(may_register(IpAddr::V6(
            Ipv4Addr::LOCALHOST.to_ipv6_mapped()
        )));
        assert!(!may_register(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 13))));
        assert!(!may_register(IpAddr::V6(
            Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()
        )));
    }

    #[test]
    fn creations_are_non_zero_and_fit_their_response() {
        for _ in 0..1000 {
            assert_ne!(new_creation(true), 0);
            assert!((1..=3).contains(&new_creation(false)));
        }
    }
}
