//! Network and process odds and ends: free ports, raw epmd requests, a recording TCP
//! proxy, and finding processes by command line.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use protocol::epmd;

use crate::process::{Signal, try_signal};

/// A TCP port on 127.0.0.1 that was free a moment ago (nobody listens on it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind an ephemeral port");
    listener
        .local_addr()
        .expect("bound socket has an address")
        .port()
}

/// Sends an epmd `NAMES_REQ` to 127.0.0.1:`port`; returns the registered (name, port)
/// pairs, or the error (no mapper, malformed answer).
pub fn epmd_names(port: u16) -> Result<Vec<(String, u16)>, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(crate::WAIT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(&epmd::encode_names_req())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .map_err(|e| format!("reading the NAMES answer: {e}"))?;
    let parsed = epmd::parse_names_response(&answer).map_err(|e| e.to_string())?;
    if u32::from(port) != parsed.epmd_port {
        return Err(format!(
            "the mapper on {port} says its port is {}",
            parsed.epmd_port
        ));
    }
    Ok(parsed.nodes)
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
/// For conditions that have no event to wait on (a port mapper noticing a closed
/// connection), not for readiness that a line or a socket can tell.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Everything that went through a [`RecordingProxy`], per direction.
#[derive(Default, Debug, Clone)]
pub struct Recorded {
    /// Bytes from the client to the server.
    pub upstream: Vec<u8>,
    /// Bytes from the server to the client.
    pub downstream: Vec<u8>,
    /// Connections accepted.
    pub connections: usize,
}

/// A TCP proxy on 127.0.0.1 that forwards to a target port and records every byte.
pub struct RecordingProxy {
    port: u16,
    recorded: Arc<Mutex<Recorded>>,
}

impl RecordingProxy {
    /// Starts forwarding connections on an ephemeral port to 127.0.0.1:`target`.
    pub fn start(target: u16) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let rec = Arc::clone(&recorded);
        thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                rec.lock().expect("proxy lock").connections += 1;
                pump(&inbound, &outbound, Arc::clone(&rec), true);
                pump(&outbound, &inbound, Arc::clone(&rec), false);
            }
        });
        RecordingProxy { port, recorded }
    }

    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of what was recorded so far.
    pub fn recorded(&self) -> Recorded {
        self.recorded.lock().expect("proxy lock").clone()
    }
}

fn pump(from: &TcpStream, to: &TcpStream, rec: Arc<Mutex<Recorded>>, upstream: bool) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            {
                let mut rec = rec.lock().expect("proxy lock");
                let dir = if upstream {
                    &mut rec.upstream
                } else {
                    &mut rec.downstream
                };
                dir.extend_from_slice(&buf[..n]);
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// True if `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The processes whose command line (split into arguments) satisfies `pred`.
pub fn find_processes(pred: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.is_empty() && pred(&args) {
            found.push(pid);
        }
    }
    found
}

/// True if `args` has `--port P` or `--port=P`.
pub fn has_port_arg(args: &[String], port: u16) -> bool {
    let p = port.to_string();
    args.windows(2).any(|w| w[0] == "--port" && w[1] == p)
        || args.iter().any(|a| *a == format!("--port={p}"))
}

/// Kills, on drop, every `chat-server port-mapper` process serving port `port` (the
/// detached mapper a chat-server starts when none answers).
pub struct DetachedMapperGuard {
    port: u16,
}

impl DetachedMapperGuard {
    /// Guards the mapper that will serve `port`.
    pub fn new(port: u16) -> DetachedMapperGuard {
        DetachedMapperGuard { port }
    }

    /// The pids of `chat-server port-mapper` processes with `--port <port>`.
    pub fn pids(&self) -> Vec<u32> {
        let port = self.port;
        find_processes(|args| {
            args.iter().any(|a| a == "port-mapper")
                && has_port_arg(args, port)
                && args[0].ends_with("chat-server")
        })
    }
}

impl Drop for DetachedMapperGuard {
    fn drop(&mut self) {
        for pid in self.pids() {
            // It may already be gone; a failed kill is fine here.
            try_signal(pid, Signal::Kill);
        }
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_listener(port: u16, timeout: Duration) -> io::Result<()> {
    let ok = poll_until(timeout, || TcpStream::connect(("127.0.0.1", port)).is_ok());
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("nothing listens on 127.0.0.1:{port}"),
        ))
    }
}
