//! The nodes of a test: its own port mapper, chat servers and chat clients.
//!
//! Every test makes a [`Ctx`]: a temporary `HOME` (so no test reads or writes the real
//! `~/.erlang.cookie`) and, usually, its own port mapper on an ephemeral port, passed to
//! every process as `ERL_EPMD_PORT` (never 4369). Servers are named `x@localhost` and
//! clients target them by that name, so the machine's host name does not matter.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::net::{epmd_names, poll_until};
use crate::process::{Proc, Signal};
use crate::pty::{Pty, Snapshot};
use crate::{LONG, WAIT, bins};

/// The cookie tests use unless they say otherwise.
pub const COOKIE: &str = "integration-test-cookie";

/// How the client starts the list of users, in the join banner and the `/users` answer
/// alike; the list ends with ` *`.
pub const USERS: &str = "* Users in the room: ";

/// A directory removed (with its contents) on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Makes a fresh, empty directory under the system temp dir.
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("chat-tests-{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // The cookie file is read-only; its directory is not, so removal works.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One test's world: a temporary home and the port mapper port its processes use.
pub struct Ctx {
    home: TempDir,
    epmd_port: u16,
    mapper: Option<Mapper>,
}

impl Ctx {
    /// A context with its own port mapper (`chat-server port-mapper --port 0`).
    pub fn new() -> Ctx {
        let home = TempDir::new("home");
        let mapper = Mapper::start_in(home.path());
        Ctx {
            epmd_port: mapper.port(),
            home,
            mapper: Some(mapper),
        }
    }

    /// A context whose processes use the port mapper port `epmd_port`, where this
    /// context starts nothing (a real `epmd`, a port nobody listens on, ...).
    pub fn with_epmd_port(epmd_port: u16) -> Ctx {
        Ctx {
            home: TempDir::new("home"),
            epmd_port,
            mapper: None,
        }
    }

    /// The temporary `HOME` of every process of this context.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The port-mapper port every process gets as `ERL_EPMD_PORT`.
    pub fn epmd_port(&self) -> u16 {
        self.epmd_port
    }

    /// The port mapper this context started, if any.
    pub fn mapper(&mut self) -> Option<&mut Mapper> {
        self.mapper.as_mut()
    }

    /// A command for `program` with this context's environment: `HOME`, `ERL_EPMD_PORT`,
    /// `RUST_LOG=info`, `NO_COLOR=1`, and no `CHAT_COOKIE` from the outside.
    pub fn command(&self, program: impl Into<OsString>) -> Command {
        let mut cmd = Command::new(program.into());
        env_for(&mut cmd, self.home(), Some(self.epmd_port));
        cmd
    }

    /// A chat server named `name` (`x@localhost`), with [`COOKIE`] unless told otherwise.
    pub fn server(&self, name: &str) -> ServerBuilder<'_> {
        ServerBuilder {
            ctx: self,
            name: name.to_string(),
            cookie: Some(COOKIE.to_string()),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// A chat client with nick `nick`, with [`COOKIE`] unless told otherwise. Give it a
    /// server with [`ClientBuilder::to`] or [`ClientBuilder::server_arg`].
    pub fn client(&self, nick: &str) -> ClientBuilder<'_> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let alive: String = nick
            .chars()
            .take(20)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        ClientBuilder {
            ctx: self,
            nick: nick.to_string(),
            server: None,
            own_name: Some(format!("{alive}-{n}@localhost")),
            cookie: Some(COOKIE.to_string()),
            no_reconnect: true,
            nick_flag: true,
            args: Vec::new(),
            envs: Vec::new(),
            envs_removed: Vec::new(),
            stdin_piped: false,
            in_shell: false,
        }
    }

    /// Starts a server named `name` with the default cookie and `args`, and waits until
    /// it is ready.
    pub fn start_server(&self, name: &str, args: &[&str]) -> Server {
        self.server(name).args(args).start()
    }

    /// Starts a client for `server` with `nick` and waits for its whole join banner.
    pub fn join(&self, server: &Server, nick: &str) -> Client {
        self.client(nick).to(server).join()
    }

    /// Starts a client for `server` with `nick` in a pseudo-terminal, and waits for its
    /// join banner and its empty prompt. Like every harness client it runs with
    /// `--no-reconnect` unless built with [`ClientBuilder::reconnect`].
    pub fn join_pty(&self, server: &Server, nick: &str) -> PtyClient {
        self.client(nick).to(server).join_pty()
    }

    /// Waits until the port mapper lists `alive` (a server started with
    /// [`ServerBuilder::spawn`], which does not wait for it to be ready).
    pub fn wait_registered(&self, alive: &str) {
        let listed = poll_until(LONG, || {
            epmd_names(self.epmd_port).is_ok_and(|l| l.iter().any(|(n, _)| n == alive))
        });
        assert!(
            listed,
            "the port mapper does not list {alive}: {:?}",
            epmd_names(self.epmd_port)
        );
    }

    /// Waits until this context's port mapper no longer lists `alive` (after its server
    /// died, the mapper notices the closed registration connection on its own).
    #[track_caller]
    pub fn wait_unregistered(&self, alive: &str) {
        let gone = poll_until(LONG, || {
            epmd_names(self.epmd_port).is_ok_and(|l| l.iter().all(|(n, _)| n != alive))
        });
        assert!(
            gone,
            "the port mapper still lists {alive}: {:?}",
            epmd_names(self.epmd_port)
        );
    }
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx::new()
    }
}

fn env_for(cmd: &mut Command, home: &Path, epmd_port: Option<u16>) {
    cmd.env("HOME", home)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("CHAT_COOKIE")
        .env_remove("RUST_BACKTRACE");
    if let Some(port) = epmd_port {
        cmd.env("ERL_EPMD_PORT", port.to_string());
    }
}

/// Parses the number after `marker` in `line` (e.g. the port in `ready on port 4242`).
pub fn number_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A port mapper run in the foreground: `chat-server port-mapper --port 0`.
pub struct Mapper {
    proc: Proc,
    port: u16,
    _home: Option<TempDir>,
}

impl Mapper {
    /// Starts a port mapper on an ephemeral port with a throwaway `HOME`.
    pub fn start() -> Mapper {
        let home = TempDir::new("mapper-home");
        let mut mapper = Mapper::start_in(home.path());
        mapper._home = Some(home);
        mapper
    }

    fn start_in(home: &Path) -> Mapper {
        let mut cmd = Command::new(bins::server_bin());
        env_for(&mut cmd, home, None);
        cmd.env_remove("ERL_EPMD_PORT")
            .arg("port-mapper")
            .arg("--port")
            .arg("0");
        let mut proc = Proc::spawn("port-mapper", cmd);
        let line = proc.expect_line("port mapper ready on port", LONG);
        let Some(port) = number_after(&line, "port mapper ready on port") else {
            proc.fail(&format!("cannot read the port from {line:?}"));
        };
        if port == 0 || port == 4369 {
            proc.fail(&format!("expected a real ephemeral port, got {port}"));
        }
        Mapper {
            proc,
            port,
            _home: None,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The mapper process.
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

/// How to start a chat server.
pub struct ServerBuilder<'a> {
    ctx: &'a Ctx,
    name: String,
    cookie: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl ServerBuilder<'_> {
    /// Uses `cookie` (`--cookie`).
    pub fn cookie(mut self, cookie: &str) -> Self {
        self.cookie = Some(cookie.to_string());
        self
    }

    /// Passes no `--cookie` (the environment or `~/.erlang.cookie` decides).
    pub fn no_cookie(mut self) -> Self {
        self.cookie = None;
        self
    }

    /// Adds command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the server without waiting for anything.
    pub fn spawn(self) -> Proc {
        let mut cmd = self.ctx.command(bins::server_bin());
        cmd.arg("--name").arg(&self.name);
        if let Some(cookie) = &self.cookie {
            cmd.arg("--cookie").arg(cookie);
        }
        cmd.args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        Proc::spawn(format!("chat-server {}", self.name), cmd)
    }

    /// Starts the server and waits for `chat-server <name> ready on port <port>`.
    pub fn start(self) -> Server {
        let name = self.name.clone();
        let mut proc = self.spawn();
        let marker = format!("chat-server {name} ready on port");
        let line = proc.expect_line(&marker, LONG);
        let Some(port) = number_after(&line, &marker) else {
            proc.fail(&format!("cannot read the port from {line:?}"));
        };
        if port == 0 {
            proc.fail("the server says it is ready on port 0");
        }
        Server { proc, name, port }
    }
}

/// A running chat server.
pub struct Server {
    /// The process (its stderr is the log).
    pub proc: Proc,
    name: String,
    port: u16,
}

impl Server {
    /// Its node name (`server@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `alive` part of its node name (what the port mapper knows it by).
    pub fn alive(&self) -> &str {
        self.name.split('@').next().unwrap_or(&self.name)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The prefix of every line a client prints for this server: `server@localhost> `.
    pub fn prefix(&self) -> String {
        format!("{}> ", self.name)
    }

    /// Sends SIGTERM and expects a clean exit (status 0) within the generous timeout.
    pub fn terminate(&mut self) {
        self.proc.signal(Signal::Term);
        self.proc.expect_success(LONG);
    }
}

/// How to start a chat client.
pub struct ClientBuilder<'a> {
    ctx: &'a Ctx,
    nick: String,
    server: Option<(String, String)>,
    own_name: Option<String>,
    cookie: Option<String>,
    no_reconnect: bool,
    nick_flag: bool,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    envs_removed: Vec<String>,
    stdin_piped: bool,
    in_shell: bool,
}

impl ClientBuilder<'_> {
    /// With [`ClientBuilder::spawn_pty`]: the client is started by an interactive `bash`
    /// (job control: Ctrl-Z stops it, `fg` continues it), as a user starts it; the
    /// command line is typed at the shell's prompt `$ `.
    pub fn in_shell(mut self) -> Self {
        self.in_shell = true;
        self
    }

    /// With [`ClientBuilder::spawn_pty`]: standard input is a pipe (fed by `cat` from the
    /// terminal), standard output and error the terminal, as in `cat | chat-client`.
    pub fn stdin_piped(mut self) -> Self {
        self.stdin_piped = true;
        self
    }

    /// Passes no `--nick` and sets `USER` to the nick instead (the default nick).
    pub fn nick_from_user(mut self) -> Self {
        self.nick_flag = false;
        let nick = self.nick.clone();
        self.env("USER", &nick)
    }

    /// Targets `server` by name (`--server server@localhost`), through the port mapper.
    pub fn to(mut self, server: &Server) -> Self {
        self.server = Some((server.name().to_string(), server.name().to_string()));
        self
    }

    /// Passes `--server value`; `node` is the node name the client prints lines for.
    pub fn server_arg(mut self, value: &str, node: &str) -> Self {
        self.server = Some((value.to_string(), node.to_string()));
        self
    }

    /// Uses `cookie` (`--cookie`).
    pub fn cookie(mut self, cookie: &str) -> Self {
        self.cookie = Some(cookie.to_string());
        self
    }

    /// Passes no `--cookie`.
    pub fn no_cookie(mut self) -> Self {
        self.cookie = None;
        self
    }

    /// Passes no `--name`: the client's own node name is its default.
    pub fn default_own_name(mut self) -> Self {
        self.own_name = None;
        self
    }

    /// Lets the client reconnect (by default tests pass `--no-reconnect`, so that losing
    /// the server ends the client).
    pub fn reconnect(mut self) -> Self {
        self.no_reconnect = false;
        self
    }

    /// Adds command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Removes an environment variable (for instance `NO_COLOR`, which every process
    /// gets by default).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.envs_removed.push(key.to_string());
        self
    }

    /// Starts the client without waiting for anything.
    pub fn spawn(self) -> Client {
        let (cmd, server_node) = self.command();
        Client {
            proc: Proc::spawn(format!("chat-client {}", self.nick), cmd),
            nick: self.nick,
            own_name: self.own_name,
            server: server_node,
            original: false,
        }
    }

    /// Starts the client in a pseudo-terminal (stdin, stdout and stderr all the
    /// terminal, as in a terminal emulator) without waiting for anything. The
    /// environment is a user's: `TERM=xterm`, no `RUST_LOG`, no `COLUMNS`/`LINES`, and
    /// `NO_COLOR=1` unless [`ClientBuilder::env_remove`] took it away.
    pub fn spawn_pty(self) -> PtyClient {
        let (mut cmd, server_node) = self.command();
        cmd.env("TERM", "xterm")
            .env_remove("RUST_LOG")
            .env_remove("COLUMNS")
            .env_remove("LINES");
        // What the test asked for wins over those defaults.
        for key in &self.envs_removed {
            cmd.env_remove(key);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if self.stdin_piped {
            cmd = piped_stdin(&cmd);
        }
        let own = self
            .own_name
            .clone()
            .expect("a PTY client needs a known own node name for its prompt");
        let label = format!("chat-client {} (pty)", self.nick);
        let pty = if self.in_shell {
            let mut shell = Command::new("bash");
            shell.args(["--norc", "--noprofile", "-i"]).env("PS1", "$ ");
            for (key, value) in cmd.get_envs() {
                match value {
                    Some(value) => shell.env(key, value),
                    None => shell.env_remove(key),
                };
            }
            if let Some(dir) = cmd.get_current_dir() {
                shell.current_dir(dir);
            }
            let mut pty = Pty::spawn(label, &shell);
            let quote =
                |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
            let line: Vec<String> = std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(quote)
                .collect();
            pty.keys(&format!("{}\r", line.join(" ")));
            pty
        } else {
            Pty::spawn(label, &cmd)
        };
        PtyClient {
            pty,
            nick: self.nick,
            prompt: format!("{own}> "),
            own_name: own,
            server: server_node,
            seen: 0,
        }
    }

    /// Starts the client in a pseudo-terminal and waits for its join banner and its
    /// empty prompt.
    pub fn join_pty(self) -> PtyClient {
        let mut client = self.spawn_pty();
        client.expect_banner();
        client.expect_input("");
        client
    }

    /// The command line and environment, and the server node name the client prints
    /// lines for.
    fn command(&self) -> (Command, String) {
        let mut cmd = self.ctx.command(bins::client_bin());
        if self.nick_flag {
            cmd.arg("--nick").arg(&self.nick);
        }
        let server_node = match &self.server {
            Some((arg, node)) => {
                cmd.arg("--server").arg(arg);
                node.clone()
            }
            None => String::new(),
        };
        if let Some(own) = &self.own_name {
            cmd.arg("--name").arg(own);
        }
        if let Some(cookie) = &self.cookie {
            cmd.arg("--cookie").arg(cookie);
        }
        if self.no_reconnect {
            cmd.arg("--no-reconnect");
        }
        cmd.args(&self.args);
        for key in &self.envs_removed {
            cmd.env_remove(key);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        (cmd, server_node)
    }

    /// Starts the client and waits for its join banner (the three lines); returns it.
    pub fn join(self) -> Client {
        let mut client = self.spawn();
        client.expect_banner();
        client
    }
}

/// A running chat client (stdin piped: the plain line mode).
pub struct Client {
    /// The process.
    pub proc: Proc,
    nick: String,
    own_name: Option<String>,
    server: String,
    /// The original (Elixir) client, whose `/users` answer is `S> server: users: a, b`.
    original: bool,
}

impl Client {
    /// Wraps the Elixir ExMessenger client, which prints the same lines except for the
    /// answer to `/users` (the original's `S> server: users: a, b`).
    pub fn wrap(proc: Proc, nick: &str, own_name: Option<String>, server: &str) -> Client {
        Client {
            proc,
            nick: nick.to_string(),
            own_name,
            server: server.to_string(),
            original: true,
        }
    }

    /// What starts the answer to `/users`, and what ends its list.
    fn users_marker(&self) -> (String, &'static str) {
        if self.original {
            (format!("{}> server: users: ", self.server), "")
        } else {
            (USERS.to_string(), " *")
        }
    }

    /// Its nick.
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// Its own node name, if the test chose it.
    pub fn own_name(&self) -> Option<&str> {
        self.own_name.as_deref()
    }

    /// The server node name it prints lines for.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Waits for the banner lines, in order, and returns the users in the room as the
    /// banner lists them (in the order printed). The hint to `/help` that follows the
    /// first join of a process is not waited for.
    #[track_caller]
    pub fn expect_banner(&mut self) -> Vec<String> {
        self.proc.expect_line("* Joined the chatroom *", LONG);
        let users = self.proc.expect_line("* Users in the room: ", WAIT);
        match parse_list(&users, "* Users in the room: ", " *") {
            Some(list) => list,
            None => self
                .proc
                .fail(&format!("malformed user list line {users:?}")),
        }
    }

    /// Writes `line` to the client's stdin.
    #[track_caller]
    pub fn send(&mut self, line: &str) {
        self.proc.send_line(line);
    }

    /// Waits for a stdout line containing `needle`.
    #[track_caller]
    pub fn expect(&mut self, needle: &str) -> String {
        self.proc.expect_line(needle, WAIT)
    }

    /// Waits for the line `S> <text>` (S being the server's node name) and returns it.
    #[track_caller]
    pub fn expect_from_server(&mut self, text: &str) -> String {
        let needle = format!("{}> {text}", self.server);
        self.proc.expect_line(&needle, WAIT)
    }

    /// Waits for `S> <from>: <text>`.
    #[track_caller]
    pub fn expect_say(&mut self, from: &str, text: &str) -> String {
        self.expect_from_server(&format!("{from}: {text}"))
    }

    /// Waits for the line from `from` whose text begins `start` (as
    /// [`Client::expect_say`]) and checks that it is exactly `S> <from>: <text>`: what
    /// `from` typed arrived whole, in one line, with nothing before or after it.
    #[track_caller]
    pub fn expect_exact_say(&mut self, from: &str, start: &str, text: &str) {
        let line = self.expect_say(from, start);
        let want = format!("{}> {from}: {text}", self.server);
        if line != want {
            self.proc
                .fail(&format!("expected the line {want:?}, got {line:?}"));
        }
    }

    /// Waits for `S> <from> (private): <text>`.
    #[track_caller]
    pub fn expect_private(&mut self, from: &str, text: &str) -> String {
        self.expect_from_server(&format!("{from} (private): {text}"))
    }

    /// Waits for `S> * <nick> has joined *`.
    #[track_caller]
    pub fn expect_joined(&mut self, nick: &str) -> String {
        self.expect_from_server(&format!("* {nick} has joined *"))
    }

    /// Waits for `S> * <nick> has left *` (with or without a reason after it); returns
    /// the whole line.
    #[track_caller]
    pub fn expect_left(&mut self, nick: &str) -> String {
        self.expect_from_server(&format!("* {nick} has left *"))
    }

    /// Sends `/users` and returns the users of the answer
    /// (`* Users in the room: a, b, c *`), in the order printed.
    #[track_caller]
    pub fn users(&mut self) -> Vec<String> {
        self.send("/users");
        self.expect_users_answer()
    }

    /// Waits for the answer to `/users` and returns the list.
    #[track_caller]
    pub fn expect_users_answer(&mut self) -> Vec<String> {
        let (start, end) = self.users_marker();
        let line = self.expect(&start);
        match parse_list(&line, &start, end) {
            Some(list) => list,
            None => self.proc.fail(&format!("malformed users line {line:?}")),
        }
    }

    /// The barrier that shows this client did *not* receive something: sends `/users`
    /// and fails if a line containing `forbidden` comes before the answer. Anything the
    /// server had sent this client before handling `/users` would come first.
    #[track_caller]
    pub fn expect_not_received(&mut self, forbidden: &str) {
        self.send("/users");
        let (marker, _) = self.users_marker();
        self.proc.expect_no_line_before(forbidden, &marker, WAIT);
    }

    /// Closes stdin (end of input): the client should leave and exit 0.
    pub fn close_stdin(&mut self) {
        self.proc.close_stdin();
    }
}

/// `cmd` run as `cat | cmd` through `sh`: the same program, arguments, environment and
/// directory, with standard input a pipe.
fn piped_stdin(cmd: &Command) -> Command {
    let mut piped = Command::new("sh");
    piped
        .arg("-c")
        .arg("cat | exec \"$0\" \"$@\"")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => piped.env(key, value),
            None => piped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        piped.current_dir(dir);
    }
    piped
}

/// Splits `a, b, c` found between `start` and `end` in `line`.
pub fn parse_list(line: &str, start: &str, end: &str) -> Option<Vec<String>> {
    let rest = &line[line.find(start)? + start.len()..];
    let rest = if end.is_empty() {
        rest
    } else {
        &rest[..rest.rfind(end)?]
    };
    Some(
        rest.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// Owned copies of `list`, for comparing a user list with what a test expects.
pub fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Sorted copy, for comparing user lists as sets.
pub fn sorted(list: &[String]) -> Vec<String> {
    let mut list = list.to_vec();
    list.sort();
    list
}

/// A chat client running in a pseudo-terminal (the line editor), read as a screen.
///
/// "Printed lines" are the rows above the cursor's row; the cursor's row is the line
/// being edited. Like [`Proc`], it keeps a position: each `expect_row*` looks from the
/// row after the previous match on, so a test reads the screen top to bottom.
pub struct PtyClient {
    /// The terminal and the process.
    pub pty: Pty,
    nick: String,
    own_name: String,
    prompt: String,
    server: String,
    seen: usize,
}

impl PtyClient {
    /// Its nick.
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// Its own node name.
    pub fn own_name(&self) -> &str {
        &self.own_name
    }

    /// Its prompt, `<own node>> `.
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The server node name it prints lines for.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Types keys (text, or sequences from [`crate::pty::keys`]).
    #[track_caller]
    pub fn keys(&mut self, keys: &str) {
        self.pty.keys(keys);
    }

    /// Types `keys` and waits until the line being edited is exactly `input`, with the
    /// cursor at its end: one step of a key scenario, so that each key's effect is
    /// checked before the next key is typed.
    #[track_caller]
    pub fn press(&mut self, keys: &str, input: &str) {
        self.keys(keys);
        self.expect_input(input);
    }

    /// As [`PtyClient::press`], with the cursor `col` characters into `input`.
    #[track_caller]
    pub fn press_at(&mut self, keys: &str, input: &str, col: usize) {
        self.keys(keys);
        self.expect_input_at(input, col);
    }

    /// Types `line` and presses Enter.
    #[track_caller]
    pub fn type_line(&mut self, line: &str) {
        self.pty.keys(line);
        self.pty.keys(crate::pty::keys::ENTER);
    }

    /// Types `line`, presses Enter, and waits for the fresh, empty prompt of the next
    /// line (so that what is typed next goes to the line editor, not to a terminal
    /// between two prompts).
    #[track_caller]
    pub fn submit(&mut self, line: &str) {
        self.type_line(line);
        self.expect_input("");
    }

    /// Waits for a printed row (above the line being edited), after the last one
    /// matched, containing `needle`; returns its text.
    #[track_caller]
    pub fn expect_row(&mut self, needle: &str) -> String {
        self.expect_row_within(needle, WAIT)
    }

    /// As [`PtyClient::expect_row`], with a timeout.
    #[track_caller]
    pub fn expect_row_within(&mut self, needle: &str, timeout: std::time::Duration) -> String {
        let from = self.seen;
        let (_, text, next) = self.pty.wait_for(
            &format!("a printed line containing {needle:?} (from row {from} on)"),
            timeout,
            |snap| snap.find_line(from, |l| l.contains(needle)),
        );
        self.seen = next;
        text
    }

    /// Waits for a printed line, after the last one matched, that is exactly `text`.
    #[track_caller]
    pub fn expect_exact_row(&mut self, text: &str) {
        self.expect_exact_row_within(text, WAIT);
    }

    /// As [`PtyClient::expect_exact_row`], with a timeout.
    #[track_caller]
    pub fn expect_exact_row_within(&mut self, text: &str, timeout: std::time::Duration) {
        let from = self.seen;
        let (_, _, next) = self.pty.wait_for(
            &format!("a printed line that is exactly {text:?} (from row {from} on)"),
            timeout,
            |snap| snap.find_line(from, |l| l == text),
        );
        self.seen = next;
    }

    /// Waits for a printed line, after the last one matched, for which `pred` holds;
    /// `what` describes it in a failure. Returns the line.
    #[track_caller]
    pub fn expect_line_where(
        &mut self,
        what: &str,
        timeout: std::time::Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let from = self.seen;
        let (_, text, next) = self.pty.wait_for(
            &format!("a printed line: {what} (from row {from} on)"),
            timeout,
            |snap| snap.find_line(from, &pred),
        );
        self.seen = next;
        text
    }

    /// Waits for the row `S> <text>` (S being the server's node name), exactly.
    #[track_caller]
    pub fn expect_from_server(&mut self, text: &str) {
        let row = format!("{}> {text}", self.server);
        self.expect_exact_row(&row);
    }

    /// Waits for the banner rows, in order, and returns the users listed (the hint to
    /// `/help` after the first join is not waited for).
    #[track_caller]
    pub fn expect_banner(&mut self) -> Vec<String> {
        self.expect_row_within("* Joined the chatroom *", LONG);
        let users = self.expect_row("* Users in the room: ");
        match parse_list(&users, "* Users in the room: ", " *") {
            Some(list) => list,
            None => self.pty.fail(&format!("malformed user list row {users:?}")),
        }
    }

    /// Waits until the line being edited is the prompt followed by exactly `text`, with
    /// the cursor at its end.
    #[track_caller]
    pub fn expect_input(&mut self, text: &str) {
        let col = text.chars().count();
        self.expect_input_at(text, col);
    }

    /// Waits until the line being edited is the prompt followed by exactly `text`, with
    /// the cursor `col` characters into `text`.
    #[track_caller]
    pub fn expect_input_at(&mut self, text: &str, col: usize) {
        let want = format!("{}{text}", self.prompt);
        let want_col = self.prompt.chars().count() + col;
        self.pty.wait_for(
            &format!("the input line {want:?} with the cursor at column {want_col}"),
            WAIT,
            |snap| {
                let (line, at) = snap.input_line();
                (line.trim_end() == want.trim_end() && at == want_col).then_some(())
            },
        );
    }

    /// The screen now.
    pub fn snapshot(&self) -> Snapshot {
        self.pty.snapshot()
    }

    /// Fails the test with `msg` and the screen.
    #[track_caller]
    pub fn fail(&mut self, msg: &str) -> ! {
        self.pty.fail(msg)
    }
}
