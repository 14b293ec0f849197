//! A TCP proxy that fails the way networks do, for putting between a client and a
//! server: it can cut every connection through it *silently* (no FIN, no reset: both
//! ends simply stop hearing from each other, as when a cable is pulled or a laptop lid
//! closes), or *pause* them (every byte is held, then delivered at once on release, as
//! after a stall).
//!
//! Connections made after a cut go through normally, so a client that notices the
//! silence and reconnects through the proxy gets a working link. The sockets of a cut
//! connection stay open until the proxy is dropped; dropping it closes everything.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

/// What a connection through the proxy does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forwards them.
    Open,
    /// Holds them until released.
    Paused,
    /// Drops them, and never tells either end that the other one closed.
    Cut,
}

/// The two directions of a connection.
const UP: usize = 0;
const DOWN: usize = 1;

/// One connection through the proxy: the client's socket and the server's.
struct Pair {
    state: Mutex<PairState>,
    /// `[client, server]`; clones stay here so that a cut connection stays open.
    sockets: [TcpStream; 2],
}

struct PairState {
    mode: Mode,
    /// Bytes held while paused: `[client to server, server to client]`.
    held: [Vec<u8>; 2],
}

impl Pair {
    fn lock(&self) -> MutexGuard<'_, PairState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    pairs: Mutex<Vec<Arc<Pair>>>,
    accepted: AtomicUsize,
    stopping: AtomicBool,
}

impl Inner {
    fn pairs(&self) -> MutexGuard<'_, Vec<Arc<Pair>>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A proxy on 127.0.0.1 that forwards to a target port, and cuts or pauses on demand.
pub struct FaultProxy {
    port: u16,
    inner: Arc<Inner>,
}

impl FaultProxy {
    /// Starts forwarding connections on an ephemeral port to 127.0.0.1:`target`.
    pub fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let inner = Arc::new(Inner {
            pairs: Mutex::new(Vec::new()),
            accepted: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
        });
        let shared = Arc::clone(&inner);
        thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let pair = Arc::new(Pair {
                    state: Mutex::new(PairState {
                        mode: Mode::Open,
                        held: [Vec::new(), Vec::new()],
                    }),
                    sockets: [client, server],
                });
                shared.pairs().push(Arc::clone(&pair));
                pump(&pair, UP);
                pump(&pair, DOWN);
            }
        });
        FaultProxy { port, inner }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many connections went through the proxy so far.
    pub fn connections(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Cuts every connection open now, silently: from now on their bytes are dropped
    /// and neither end hears anything, not even a close. Later connections work.
    pub fn cut(&self) {
        for pair in self.inner.pairs().iter() {
            let mut state = pair.lock();
            state.mode = Mode::Cut;
            state.held = [Vec::new(), Vec::new()];
        }
    }

    /// Pauses every connection open now: bytes in both directions are held.
    pub fn pause(&self) {
        for pair in self.inner.pairs().iter() {
            let mut state = pair.lock();
            if state.mode == Mode::Open {
                state.mode = Mode::Paused;
            }
        }
    }

    /// Bytes from clients held by paused connections.
    pub fn held_upstream(&self) -> usize {
        self.inner
            .pairs()
            .iter()
            .map(|pair| pair.lock().held[UP].len())
            .sum()
    }

    /// Delivers everything held, each direction in one write, and forwards again.
    pub fn release(&self) {
        for pair in self.inner.pairs().iter() {
            let mut state = pair.lock();
            if state.mode != Mode::Paused {
                continue;
            }
            for dir in [UP, DOWN] {
                let held = std::mem::take(&mut state.held[dir]);
                let _ = (&pair.sockets[1 - dir]).write_all(&held);
            }
            state.mode = Mode::Open;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        for pair in self.inner.pairs().iter() {
            for socket in &pair.sockets {
                let _ = socket.shutdown(Shutdown::Both);
            }
        }
        // Wake the accept loop so that it sees it is stopping.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies one direction of `pair` (`UP`: client to server) on its own thread, doing
/// what the pair's mode says with every chunk.
fn pump(pair: &Arc<Pair>, dir: usize) {
    let pair = Arc::clone(pair);
    thread::spawn(move || {
        let mut from = &pair.sockets[dir];
        let mut to = &pair.sockets[1 - dir];
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mode = {
                let mut state = pair.lock();
                if state.mode == Mode::Paused {
                    state.held[dir].extend_from_slice(&buf[..n]);
                }
                state.mode
            };
            // This thread is the only one reading this direction, and a release writes
            // what was held before the mode is open again: the order is kept. Writing
            // outside the lock never holds up the other direction.
            if mode == Mode::Open && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // Pass an orderly close on, unless cut: then the other end hears nothing.
        if pair.lock().mode != Mode::Cut {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}
