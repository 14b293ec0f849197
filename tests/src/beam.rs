//! BEAM nodes for the Erlang interop tests: the project's Elixir scripts
//! (`tests/elixir/`) as an ExMessenger client or server, and a raw distribution peer
//! built on `protocol::erlang` that can misbehave.
//!
//! Every BEAM node gets the test's environment ([`Ctx::command`]: its own `HOME` and
//! `ERL_EPMD_PORT`, so it registers with and looks up through the test's port mapper),
//! and a short name `<alive>@localhost` (`elixir --sname`), like the harness' other
//! nodes. [`elixir_or_skip`] says `skipped` when Elixir is missing, unless
//! `CHAT_REQUIRE_ELIXIR` is set (CI), where a missing Elixir fails the test.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::erlang::dist::{self, Control};
use protocol::erlang::exmessenger::{self, SERVER_PROCESS};
use protocol::erlang::handshake::{self, InitStep, Initiator};
use protocol::erlang::term::{Atom, Pid, Reference, Term};
use protocol::{Cookie, NodeName};

use crate::nodes::{Client, Ctx};
use crate::process::Proc;
use crate::{LONG, WAIT, bins};

/// The cookie the original client sets in its code (and our scripts by default).
pub const BEAM_COOKIE: &str = "chocolate-chip";

/// Whether Elixir is installed; prints `skipped: elixir not installed` when not. With
/// `CHAT_REQUIRE_ELIXIR` set, a missing Elixir fails the test instead.
pub fn elixir_or_skip() -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("elixir").is_file()));
    if !found {
        if std::env::var_os("CHAT_REQUIRE_ELIXIR").is_some() {
            panic!("elixir is not installed and CHAT_REQUIRE_ELIXIR is set");
        }
        println!("skipped: elixir not installed");
    }
    found
}

/// A script of `tests/elixir/`.
pub fn script(name: &str) -> PathBuf {
    bins::workspace_root().join("tests/elixir").join(name)
}

/// A fresh `alive` name for a BEAM node (unique within the test process).
fn alive(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = prefix
        .chars()
        .take(20)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{clean}_beam{n}")
}

/// An `elixir` command for `script`, as node `<alive>@localhost`, one scheduler (cheap
/// to start), with the test's environment; `erl_args` go to the VM.
fn elixir(ctx: &Ctx, node_alive: &str, erl_args: &str, script_name: &str) -> std::process::Command {
    let mut cmd = ctx.command("elixir");
    cmd.arg("--sname")
        .arg(format!("{node_alive}@localhost"))
        .arg("--erl")
        .arg(format!("+S 1:1 +A 1 {erl_args}"))
        .arg(script(script_name));
    cmd
}

/// An ExMessenger client node to start (the original's behaviour, our script).
pub struct BeamClientBuilder<'a> {
    ctx: &'a Ctx,
    server: String,
    nick: String,
    cookie: Option<String>,
    erl_args: String,
}

impl Ctx {
    /// An ExMessenger client node for `server` (a node name) with `nick`; its cookie is
    /// the original's `chocolate-chip` unless told otherwise.
    pub fn beam_client(&self, server: &str, nick: &str) -> BeamClientBuilder<'_> {
        BeamClientBuilder {
            ctx: self,
            server: server.to_string(),
            nick: nick.to_string(),
            cookie: None,
            erl_args: String::new(),
        }
    }

    /// Starts the Elixir ExMessenger server script as `<alive>@localhost` with `cookie`
    /// and waits until `message_server` is registered.
    pub fn elixir_server(&self, alive_name: &str, cookie: &str) -> ElixirServer {
        let mut cmd = self.command("elixir");
        // `--cookie` is an option of elixir's: it comes before the script.
        cmd.arg("--sname")
            .arg(format!("{alive_name}@localhost"))
            .arg("--cookie")
            .arg(cookie)
            .arg("--erl")
            .arg("+S 1:1 +A 1")
            .arg(script("exmessenger_server.exs"));
        let name = format!("{alive_name}@localhost");
        let mut proc = Proc::spawn(format!("elixir server {name}"), cmd);
        proc.expect_line("ready", LONG);
        ElixirServer { proc, name }
    }
}

impl BeamClientBuilder<'_> {
    /// Sets the cookie (the script's `cookie` variable overrides its chocolate-chip).
    pub fn cookie(mut self, cookie: &str) -> Self {
        self.cookie = Some(cookie.to_string());
        self
    }

    /// Extra VM arguments (e.g. `-kernel net_ticktime 4`).
    pub fn erl_args(mut self, args: &str) -> Self {
        self.erl_args = args.to_string();
        self
    }

    /// Starts the node without waiting for anything.
    pub fn spawn(self) -> Client {
        let node_alive = alive(&self.nick);
        let mut cmd = elixir(
            self.ctx,
            &node_alive,
            &self.erl_args,
            "exmessenger_client.exs",
        );
        cmd.env("server", &self.server).env("nick", &self.nick);
        if let Some(cookie) = &self.cookie {
            cmd.env("cookie", cookie);
        }
        let own = format!("{node_alive}@localhost");
        let proc = Proc::spawn(format!("elixir client {}", self.nick), cmd);
        Client::wrap(proc, &self.nick, Some(own), &self.server)
    }

    /// Starts the node and waits for its join banner.
    pub fn join(self) -> Client {
        let mut client = self.spawn();
        client.expect_banner();
        client
    }
}

/// The Elixir ExMessenger server script, running.
pub struct ElixirServer {
    /// The process.
    pub proc: Proc,
    name: String,
}

impl ElixirServer {
    /// Its node name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A distribution peer written in Rust: it runs the handshake with `protocol`'s
/// initiator, then sends whatever a test wants, including what no BEAM would.
pub struct RawBeam {
    stream: TcpStream,
    buf: BytesMut,
    own: Pid,
    next_ref: u32,
}

/// How long raw reads wait.
const RAW_WAIT: Duration = WAIT;

impl RawBeam {
    /// Connects to `server` (its node name) on `port` as `own` with `cookie` and runs the
    /// handshake; the error is the handshake's.
    pub fn connect(port: u16, own: &str, server: &str, cookie: &str) -> Result<RawBeam, String> {
        let own_name = NodeName::parse_long(own).map_err(|e| e.to_string())?;
        let server_name = NodeName::parse_long(server).map_err(|e| e.to_string())?;
        let cookie = Cookie::new(cookie).ok_or("empty cookie")?;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(RAW_WAIT))
            .map_err(|e| e.to_string())?;
        let (mut machine, hello) = Initiator::new(&own_name, &server_name, cookie, 7);
        stream.write_all(&hello).map_err(|e| e.to_string())?;
        let mut buf = BytesMut::new();
        loop {
            while let Some(body) = handshake::split_message(&mut buf).map_err(|e| e.to_string())? {
                match machine.on_message(&body).map_err(|e| e.to_string())? {
                    InitStep::Wait => {}
                    InitStep::Send(bytes) => stream.write_all(&bytes).map_err(|e| e.to_string())?,
                    InitStep::Done { .. } => {
                        let own = Pid {
                            node: Atom::lossy(own),
                            id: 42,
                            serial: 0,
                            creation: 7,
                        };
                        return Ok(RawBeam {
                            stream,
                            buf,
                            own,
                            next_ref: 1,
                        });
                    }
                }
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk) {
                Ok(0) => return Err("closed during the handshake".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Shrinks the socket's receive buffer to `bytes`, so that a peer that stops reading
    /// fills it (and then the server's queue for it) quickly.
    pub fn shrink_receive_buffer(&mut self, bytes: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let size = bytes as libc::c_int;
        // SAFETY: a valid socket descriptor and a pointer to a c_int of the given size.
        let rc = unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `message` to `message_server`.
    pub fn send_to_server(&mut self, message: &Term) -> io::Result<()> {
        let frame = dist::reg_send(&self.own, SERVER_PROCESS, message);
        self.write_raw(&frame)
    }

    /// Calls `message_server` with `request` and returns the reply, skipping (and
    /// returning in `seen`) anything else that arrives first.
    pub fn call(&mut self, request: Term) -> Result<Term, String> {
        let tag = Term::Ref(Box::new(Reference {
            node: self.own.node.clone(),
            creation: 7,
            ids: vec![self.next_ref, 0, 0],
        }));
        self.next_ref += 1;
        let message =
            exmessenger::gen_call(Term::Pid(Box::new(self.own.clone())), tag.clone(), request);
        self.send_to_server(&message).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + RAW_WAIT;
        while Instant::now() < deadline {
            let Some(message) = self.next_message()? else {
                continue;
            };
            if let (Control::Send { .. }, Some(Term::Tuple(items))) = (&message.0, &message.1)
                && items.len() == 2
                && items[0] == tag
            {
                return Ok(items[1].clone());
            }
        }
        Err("no reply in time".into())
    }

    /// The next non-tick message; `Ok(None)` for a tick; an error when the connection
    /// closed or a frame is bad.
    pub fn next_message(&mut self) -> Result<Option<(Control, Option<Term>)>, String> {
        loop {
            if let Some(payload) = dist::split_frame(&mut self.buf).map_err(|e| e.to_string())? {
                if payload.is_empty() {
                    return Ok(None);
                }
                let message = dist::parse_message(&payload).map_err(|e| e.to_string())?;
                return Ok(Some((message.control, message.message)));
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// Reads until the server closes the connection; true if it did within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 8192];
        while Instant::now() < deadline {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }
}
