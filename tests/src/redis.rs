//! [`RedisServer`]: a real `redis-server` owned by one test.
//!
//! Each test starts its own server on a free port, in its own temporary directory, so
//! tests run in parallel without sharing state. Readiness is polled (`INFO`, which
//! also proves that the process answering is ours, not another test's server that took
//! the port first); nothing sleeps a fixed time. The server can be SIGKILLed and started
//! again on the same port and directory for fault tests, and is SIGKILLed on drop.
//!
//! Redis cannot bind port 0 and report the port it got, so a port is picked at random
//! below 32768 (under the kernel's ephemeral range, where outgoing connections take
//! their ports) and another is tried when the server cannot have it.
//!
//! Used by `chat-tests`' own tests and, as a dev-dependency, by `chat-server`'s cluster
//! tests. [`RedisServer::available`] / [`redis_or_skip`] follow the `CHAT_REQUIRE_EPMD`
//! pattern: without `redis-server` a test is skipped, unless `CHAT_REQUIRE_REDIS` is set
//! (CI sets it), in which case it fails.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::nodes::TempDir;

/// The variable that turns a missing `redis-server` from a skip into a failure.
pub const REQUIRE_REDIS: &str = "CHAT_REQUIRE_REDIS";

/// How many ports to try before giving up on starting a server.
const PORT_ATTEMPTS: usize = 20;

/// How long a server may take to answer after it was started.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Whether `redis-server` can be run here.
pub fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A started server, or `None` (after saying so on stderr) when `redis-server` is not
/// installed and [`REQUIRE_REDIS`] is not set. Panics when it is set.
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    if available() {
        return Some(RedisServer::start());
    }
    if std::env::var_os(REQUIRE_REDIS).is_some() {
        panic!("redis-server is not installed and {REQUIRE_REDIS} is set");
    }
    eprintln!("skipped {test}: redis-server is not installed");
    None
}

/// A `redis-server` child process on 127.0.0.1, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    persistent: bool,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk (`--save '' --appendonly no`): a
    /// restart brings it back empty.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts a server that logs every write to an append-only file before answering
    /// (`--appendonly yes --appendfsync always`): a restart brings back everything it
    /// acknowledged.
    pub fn start_persistent() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        let mut server = RedisServer {
            port: 0,
            dir: TempDir::new("redis"),
            persistent,
            child: None,
        };
        let mut failures = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let Some(port) = pick_port() else { continue };
            server.port = port;
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        panic!(
            "cannot start redis-server after {PORT_ATTEMPTS} ports:\n{}",
            failures.join("\n")
        );
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to give a Redis client.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether the server is running (it was not killed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs the server and reaps it. Nothing is flushed: what a persistent server
    /// keeps is what it wrote before answering.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (after [`kill`]), and
    /// waits until it answers. Panics if the port was taken in between (unlikely: ports
    /// are picked at random) or the server does not come up.
    ///
    /// [`kill`]: RedisServer::kill
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_WAIT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old server's socket is closed by the kernel as it dies; a port in
                // use now is someone else's, which could leave again: try for a while.
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "redis-server restart on {} failed ({e}); retrying",
                        self.port
                    );
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot restart redis-server on port {}: {e}", self.port),
            }
        }
    }

    /// Sends one command and returns its answer when it is a simple string, an error
    /// (prefixed `-`), an integer or a bulk string (`None` for nil); for poking at the
    /// server in tests without a client library. Panics if the server does not answer.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        Self::command_on(self.port, args)
    }

    /// [`RedisServer::command`] for the server on `port` (for use from another thread
    /// while the test holds the server).
    pub fn command_on(port: u16, args: &[&str]) -> Option<String> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("cannot connect to redis-server on {port}: {e}"));
        stream
            .set_read_timeout(Some(READY_WAIT))
            .expect("socket timeout");
        stream
            .write_all(request.as_bytes())
            .expect("write to redis");
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(reply) = simple_reply(&answer) {
                return reply;
            }
            let n = stream.read(&mut buf).expect("read from redis");
            assert!(n > 0, "redis-server closed the connection: {answer:?}");
            answer.extend_from_slice(&buf[..n]);
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts the process on `self.port` and waits for it to answer as itself.
    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(["--daemonize", "no"]);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        let pid = child.id();
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}); log:\n{}", self.log_tail()));
            }
            if server_pid(self.port) == Some(pid) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer within {READY_WAIT:?}; log:\n{}",
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port below 32768 that nothing listens on right now.
fn pick_port() -> Option<u16> {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u8(0);
    let port = 10_000 + (hasher.finish() % 22_000) as u16;
    TcpListener::bind(("127.0.0.1", port)).ok().map(|_| port)
}

/// The `process_id` the server on `port` reports, if one answers and has finished
/// loading its data.
fn server_pid(port: u16) -> Option<u32> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"*3\r\n$4\r\nINFO\r\n$6\r\nserver\r\n$11\r\npersistence\r\n")
        .ok()?;
    // The answer is one bulk string of a few kilobytes; read until it is whole.
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < 64 * 1024 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if complete_bulk(&answer) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    if !text.lines().any(|line| line.trim() == "loading:0") {
        return None;
    }
    text.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

/// Whether `answer` holds a whole RESP bulk string (`$len\r\n...\r\n`).
fn complete_bulk(answer: &[u8]) -> bool {
    let Some(header_end) = answer.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    let Some(len) = std::str::from_utf8(&answer[..header_end])
        .ok()
        .and_then(|h| h.strip_prefix('$'))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return false;
    };
    answer.len() >= header_end + 2 + len + 2
}

/// The reply in `answer` once it is whole: `Some(None)` for nil, `Some(Some(text))`
/// otherwise (errors keep their `-`).
fn simple_reply(answer: &[u8]) -> Option<Option<String>> {
    let end = answer.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&answer[1..end]).into_owned();
    match answer.first()? {
        b'+' | b':' => Some(Some(line)),
        b'-' => Some(Some(format!("-{line}"))),
        b'$' if line == "-1" => Some(None),
        b'$' => {
            let len: usize = line.parse().ok()?;
            let body = answer.get(end + 2..end + 2 + len)?;
            Some(Some(String::from_utf8_lossy(body).into_owned()))
        }
        other => panic!("unexpected reply type {:?}", char::from(*other)),
    }
}
