//! Starting what the bench measures: a release `chat-server` with its own port mapper, a
//! baseline `chat-server` (another build, such as main before the secure channel), the
//! baseline relay (`chat-bench relay`), or a cluster of [`CLUSTER_NODES`] chat-server
//! nodes sharing one `redis-server` (`--cluster`), each as a child process, optionally
//! pinned to CPUs; or a server that is already running.
//!
//! Every child is killed when its handle drops (`kill_on_drop`), which covers normal
//! exit, errors and Ctrl-C (the bench turns SIGINT/SIGTERM into an error so handles drop);
//! as a backstop each child also asks the kernel for SIGKILL when the bench's main thread
//! dies (`PR_SET_PDEATHSIG`). Children are spawned from the main thread, which lives as
//! long as the bench.

use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use protocol::NodeName;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::affinity;
use crate::client;
use crate::session::{Dialect, Endpoint};
use crate::wire::Layout;

/// Ports tried for the cluster's redis-server before giving up.
const REDIS_PORT_ATTEMPTS: usize = 5;

/// Time a child has to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Nodes of the cluster the bench starts with `--cluster`.
pub const CLUSTER_NODES: usize = 3;

/// Frames a member may have queued before it counts as a slow consumer, for the server
/// (`--send-queue`) and the relay alike: large, so the bench measures throughput, not
/// policy. The fan-out window keeps real queues far below it.
pub const BENCH_SEND_QUEUE: usize = 65_536;

/// Which implementation a measurement ran against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// `chat-server`.
    Server,
    /// A second `chat-server` binary (`--baseline-server`), speaking protocol version 1.
    Baseline,
    /// The baseline relay built into chat-bench.
    Relay,
    /// [`CLUSTER_NODES`] chat-server nodes serving one room through one redis-server.
    Cluster,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Server => "server",
            Self::Baseline => "baseline",
            Self::Relay => "relay",
            Self::Cluster => "cluster",
        })
    }
}

/// A server given with `--server NAME@HOST:PORT` instead of one the bench starts.
#[derive(Debug, Clone)]
pub struct ExternalServer {
    /// Its node name.
    pub name: NodeName,
    /// Its address.
    pub addr: SocketAddr,
    /// The cookie.
    pub cookie: String,
    /// Its process id, when known, for CPU and RSS.
    pub pid: Option<u32>,
}

/// Parses `NAME@HOST:PORT` and resolves the host.
pub async fn resolve_external(
    spec: &str,
    cookie: String,
    pid: Option<u32>,
) -> Result<ExternalServer> {
    let (name, port) = spec
        .rsplit_once(':')
        .with_context(|| format!("--server {spec:?}: expected NAME@HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--server {spec:?}: {port:?} is not a port number"))?;
    let name = NodeName::parse_long(name).with_context(|| format!("--server {spec:?}"))?;
    let addr = tokio::net::lookup_host((name.host(), port))
        .await
        .with_context(|| format!("cannot resolve {}", name.host()))?
        .next()
        .with_context(|| format!("{} has no address", name.host()))?;
    Ok(ExternalServer {
        name,
        addr,
        cookie,
        pid,
    })
}

/// What a launcher needs to know.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// The `chat-server` binary.
    pub server_bin: PathBuf,
    /// The baseline `chat-server` binary, if any.
    pub baseline_bin: Option<PathBuf>,
    /// Extra arguments for every started server (after the bench's own).
    pub server_args: Vec<String>,
    /// `RUST_LOG` for started servers; `None` keeps the server's default (`info`).
    pub server_log_level: Option<String>,
    /// Where started servers' standard error goes (one file per start).
    pub log_dir: PathBuf,
    /// A server to use instead of starting one.
    pub external: Option<ExternalServer>,
}

/// A child process killed when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // kill_on_drop also does this; start_kill makes it immediate and explicit.
        let _ = self.0.start_kill();
    }
}

/// A running target: where to connect and which process to watch.
pub struct Running {
    /// Where clients connect (the first node of a cluster).
    pub endpoint: Endpoint,
    /// The other nodes of a cluster, serving the same room; empty for one server.
    pub more_nodes: Vec<Endpoint>,
    /// The process to read CPU time and RSS from, when known (the first node's).
    pub pid: Option<u32>,
    /// The other processes whose CPU time counts as the target's (a cluster's other
    /// nodes and its redis-server).
    pub more_pids: Vec<u32>,
    /// The server's log file, when the bench started it.
    pub log: Option<PathBuf>,
    /// True when the bench started the target, so its room starts empty.
    pub fresh_room: bool,
    /// Children killed when the target is dropped, in this order.
    _children: Vec<ChildGuard>,
}

impl Running {
    /// Every node clients may connect to: the first, then the others.
    pub fn nodes(&self) -> Vec<Endpoint> {
        std::iter::once(self.endpoint.clone())
            .chain(self.more_nodes.iter().cloned())
            .collect()
    }

    /// Every process whose CPU time is the target's.
    pub fn pids(&self) -> Vec<u32> {
        self.pid
            .into_iter()
            .chain(self.more_pids.iter().copied())
            .collect()
    }
}

/// Starts servers and relays, one per measurement, sharing one port mapper and cookie.
pub struct Launcher {
    config: LaunchConfig,
    bench_bin: PathBuf,
    cookie: String,
    mapper: Option<(ChildGuard, u16)>,
    starts: u32,
}

impl Launcher {
    /// A launcher; checks that the binaries it needs exist (`chat-server` only when
    /// `starts_servers`).
    pub fn new(config: LaunchConfig, starts_servers: bool) -> Result<Self> {
        let bench_bin = std::env::current_exe().context("cannot find chat-bench's own path")?;
        if starts_servers && config.external.is_none() && !config.server_bin.is_file() {
            bail!(
                "{} not found: build it first with `cargo build --release -p chat-server -p chat-bench` \
                 (chat-bench runs the chat-server next to its own executable, or --server-bin)",
                config.server_bin.display()
            );
        }
        if let Some(baseline) = &config.baseline_bin
            && !baseline.is_file()
        {
            bail!(
                "baseline server {} not found: build one with scripts/build-baseline.sh REV",
                baseline.display()
            );
        }
        fs::create_dir_all(&config.log_dir)
            .with_context(|| format!("cannot create {}", config.log_dir.display()))?;
        Ok(Self {
            config,
            bench_bin,
            cookie: random_cookie()?,
            mapper: None,
            starts: 0,
        })
    }

    /// Starts (or, with `--server`, points at) a fresh target of `kind`, pinned to the
    /// CPUs of `cpus` when given.
    pub async fn start(
        &mut self,
        kind: TargetKind,
        cpus: Option<libc::cpu_set_t>,
    ) -> Result<Running> {
        match kind {
            TargetKind::Server => match self.config.external.clone() {
                Some(external) => {
                    if cpus.is_some() {
                        bail!("a pinned run needs a target the bench starts, not --server");
                    }
                    Ok(Running {
                        endpoint: Endpoint {
                            addr: external.addr,
                            dialect: Dialect::CURRENT,
                            layout: Layout::CURRENT,
                            server_name: external.name.to_string(),
                            cookie: external.cookie,
                        },
                        more_nodes: Vec::new(),
                        pid: external.pid,
                        more_pids: Vec::new(),
                        log: None,
                        fresh_room: false,
                        _children: Vec::new(),
                    })
                }
                None => {
                    let bin = self.config.server_bin.clone();
                    self.start_server(&bin, Dialect::CURRENT, Some(Layout::CURRENT), cpus)
                        .await
                }
            },
            TargetKind::Baseline => {
                let bin = self
                    .config
                    .baseline_bin
                    .clone()
                    .context("no --baseline-server given")?;
                // An older build may predate sessions: ask it which messages it speaks.
                self.start_server(&bin, Dialect::V1, None, cpus).await
            }
            TargetKind::Relay => self.start_relay(cpus).await,
            TargetKind::Cluster => {
                if self.config.external.is_some() {
                    bail!("--cluster starts its own nodes; it cannot use --server");
                }
                if cpus.is_some() {
                    bail!("a pinned run cannot measure a cluster");
                }
                self.start_cluster().await
            }
        }
    }

    /// Starts a redis-server on a free port, then [`CLUSTER_NODES`] chat-server nodes
    /// with `--cluster` pointing at it (each ready once it serves the room).
    async fn start_cluster(&mut self) -> Result<Running> {
        let (redis, redis_port) = self.start_redis().await?;
        let redis_pid = redis.0.id();
        let url = format!("redis://127.0.0.1:{redis_port}/");
        let mut nodes = Vec::new();
        let mut children = Vec::new();
        let mut pids = Vec::new();
        let mut first_log = None;
        for _ in 0..CLUSTER_NODES {
            let bin = self.config.server_bin.clone();
            let (guard, endpoint, log) = self
                .spawn_server(&bin, Dialect::CURRENT, &["--cluster", &url], None)
                .await?;
            pids.extend(guard.0.id());
            first_log.get_or_insert(log);
            children.push(guard);
            nodes.push(endpoint);
        }
        // Nodes go first, so none of them sees its Redis vanish.
        children.push(redis);
        pids.extend(redis_pid);
        let endpoint = nodes.remove(0);
        let pid = pids.first().copied();
        tracing::debug!(%url, nodes = CLUSTER_NODES, "cluster started");
        Ok(Running {
            endpoint,
            more_nodes: nodes,
            pid,
            more_pids: pids.into_iter().skip(1).collect(),
            log: first_log,
            fresh_room: true,
            _children: children,
        })
    }

    /// A redis-server that keeps nothing on disk, on a free port of 127.0.0.1; another
    /// port is tried when the one picked was taken in between.
    async fn start_redis(&mut self) -> Result<(ChildGuard, u16)> {
        let mut last = None;
        for _ in 0..REDIS_PORT_ATTEMPTS {
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .context("cannot find a free port for redis-server")?
                .port();
            let mut command = Command::new("redis-server");
            command
                .arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--logfile", ""])
                .arg("--dir")
                .arg(&self.config.log_dir)
                .stderr(Stdio::null());
            let (child, stdout) = spawn(command, None).context(
                "cannot run redis-server (is it installed? apt-get install redis-server)",
            )?;
            let mut guard = ChildGuard(child);
            match ready_line(
                stdout,
                |line| line.contains("Ready to accept connections"),
                "Ready to accept connections",
                &mut guard.0,
                None,
            )
            .await
            {
                Ok(_) => {
                    tracing::debug!(port, "redis-server started");
                    return Ok((guard, port));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("no port tried"))
            .context("redis-server did not start"))
    }

    async fn mapper_port(&mut self) -> Result<u16> {
        if let Some((_, port)) = &self.mapper {
            return Ok(*port);
        }
        let mut command = Command::new(&self.config.server_bin);
        command
            .args(["port-mapper", "--port", "0", "--bind", "127.0.0.1"])
            .stderr(Stdio::null());
        let (child, stdout) = spawn(command, None)?;
        let mut guard = ChildGuard(child);
        let port = ready_port(stdout, "port mapper ready on port ", &mut guard.0, None).await?;
        tracing::debug!(port, "port mapper started");
        self.mapper = Some((guard, port));
        Ok(port)
    }

    async fn start_server(
        &mut self,
        bin: &Path,
        dialect: Dialect,
        layout: Option<Layout>,
        cpus: Option<libc::cpu_set_t>,
    ) -> Result<Running> {
        let (guard, mut endpoint, log) = self.spawn_server(bin, dialect, &[], cpus).await?;
        if let Some(layout) = layout {
            endpoint.layout = layout;
        } else {
            endpoint.layout = client::detect_layout(&endpoint)
                .await
                .with_context(|| format!("cannot tell which messages {} speaks", bin.display()))?;
            tracing::info!(layout = ?endpoint.layout, bin = %bin.display(), "baseline server's messages");
        }
        Ok(Running {
            endpoint,
            more_nodes: Vec::new(),
            pid: guard.0.id(),
            more_pids: Vec::new(),
            log: Some(log),
            fresh_room: true,
            _children: vec![guard],
        })
    }

    /// Starts one chat-server (with `extra` arguments before the user's) under a new
    /// node name and waits for its ready line.
    async fn spawn_server(
        &mut self,
        bin: &Path,
        dialect: Dialect,
        extra: &[&str],
        cpus: Option<libc::cpu_set_t>,
    ) -> Result<(ChildGuard, Endpoint, PathBuf)> {
        let mapper_port = self.mapper_port().await?;
        self.starts += 1;
        let name = NodeName::from_parts(&format!("bench{}", self.starts), "localhost")?;
        let log = self
            .config
            .log_dir
            .join(format!("server-{}.log", self.starts));
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .arg("--name")
            .arg(name.to_string())
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(extra)
            .args(policy_args(&self.config.server_args))
            .args(&self.config.server_args)
            .env("ERL_EPMD_PORT", mapper_port.to_string())
            .env("CHAT_COOKIE", &self.cookie)
            .env_remove("CHAT_CLUSTER")
            .stderr(Stdio::from(log_file));
        match &self.config.server_log_level {
            Some(level) => command.env("RUST_LOG", level),
            None => command.env_remove("RUST_LOG"),
        };
        let (child, stdout) = spawn(command, cpus)?;
        let mut guard = ChildGuard(child);
        let prefix = format!("chat-server {name} ready on port ");
        let port = ready_port(stdout, &prefix, &mut guard.0, Some(&log)).await?;
        tracing::debug!(%name, port, pid = ?guard.0.id(), log = %log.display(), "server started");
        let endpoint = Endpoint {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dialect,
            layout: Layout::CURRENT,
            server_name: name.to_string(),
            cookie: self.cookie.clone(),
        };
        Ok((guard, endpoint, log))
    }

    async fn start_relay(&mut self, cpus: Option<libc::cpu_set_t>) -> Result<Running> {
        let mut command = Command::new(&self.bench_bin);
        command
            .args(["relay", "--port", "0", "--bind", "127.0.0.1"])
            .arg("--queue")
            .arg(BENCH_SEND_QUEUE.to_string())
            .env_remove("RUST_LOG")
            .stderr(Stdio::inherit());
        let (child, stdout) = spawn(command, cpus)?;
        let mut guard = ChildGuard(child);
        let port = ready_port(stdout, "relay ready on port ", &mut guard.0, None).await?;
        let pid = guard.0.id();
        tracing::debug!(port, ?pid, "relay started");
        Ok(Running {
            endpoint: Endpoint {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                dialect: Dialect::Relay,
                layout: Layout::CURRENT,
                server_name: String::new(),
                cookie: String::new(),
            },
            more_nodes: Vec::new(),
            pid,
            more_pids: Vec::new(),
            log: None,
            fresh_room: true,
            _children: vec![guard],
        })
    }
}

/// The bench's raised policy limits, less those the user sets with `--server-arg`
/// (chat-server refuses a flag given twice).
fn policy_args(user_args: &[String]) -> Vec<String> {
    let send_queue = BENCH_SEND_QUEUE.to_string();
    let defaults = [
        ("--rate", "1000000"),
        ("--burst", "1000000"),
        ("--send-queue", send_queue.as_str()),
        ("--max-clients", "1000000"),
    ];
    let given = |flag: &str| {
        user_args
            .iter()
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    defaults
        .iter()
        .filter(|(flag, _)| !given(flag))
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
}

/// Spawns `command` with piped stdout, killed on drop and when the bench dies, and
/// pinned to `cpus` when given.
fn spawn(mut command: Command, cpus: Option<libc::cpu_set_t>) -> Result<(Child, ChildStdout)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl and
    // sched_setaffinity, which are async-signal-safe; it allocates nothing and touches no
    // locks (the CPU set was built before the fork and is copied in).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(set) = &cpus {
                affinity::pin_thread(0, set)?;
            }
            Ok(())
        });
    }
    let program = command.as_std().get_program().to_owned();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", Path::new(&program).display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("child has no stdout"))?;
    Ok((child, stdout))
}

/// Waits for the line that is `ready` (described as `prefix` in errors) on the child's
/// stdout; afterwards the rest of its stdout is drained in the background so the child
/// never blocks on it.
async fn ready_line(
    stdout: ChildStdout,
    ready: impl Fn(&str) -> bool,
    prefix: &str,
    child: &mut Child,
    log: Option<&Path>,
) -> Result<String> {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(READY_TIMEOUT, async {
        while let Some(line) = lines.next_line().await? {
            if ready(&line) {
                return Ok(Some(line));
            }
        }
        Ok::<_, std::io::Error>(None)
    })
    .await;
    match found {
        Ok(Ok(Some(line))) => {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(line)
        }
        other => {
            let status = child.try_wait().ok().flatten();
            let why = match other {
                Err(_) => format!("no ready line within {READY_TIMEOUT:?}"),
                Ok(Err(e)) => format!("cannot read its output: {e}"),
                _ => format!("it exited ({status:?}) before printing {prefix:?}"),
            };
            let tail = log.map(log_tail).unwrap_or_default();
            bail!("child process failed to start: {why}{tail}")
        }
    }
}

/// The end of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(10)..].join("\n");
    format!("\n--- {} (last lines) ---\n{tail}", path.display())
}

/// Waits for the child's line `<prefix><port>` (see [`ready_line`]) and returns the port.
async fn ready_port(
    stdout: ChildStdout,
    prefix: &str,
    child: &mut Child,
    log: Option<&Path>,
) -> Result<u16> {
    let line = ready_line(stdout, |l| l.starts_with(prefix), prefix, child, log).await?;
    parse_port(&line, prefix)
}

fn parse_port(line: &str, prefix: &str) -> Result<u16> {
    line[prefix.len()..]
        .trim()
        .parse()
        .with_context(|| format!("no port number in {line:?}"))
}

/// 32 hex digits from the kernel's random source: a cookie for the servers this run starts.
fn random_cookie() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for a cookie")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_parsed_from_ready_lines() {
        let prefix = "relay ready on port ";
        assert_eq!(
            parse_port("relay ready on port 4242", prefix).unwrap(),
            4242
        );
        assert!(parse_port("relay ready on port x", prefix).is_err());
    }

    #[test]
    fn user_server_args_replace_the_bench_defaults() {
        let all = policy_args(&[]);
        assert_eq!(all.len(), 8);
        assert!(all.contains(&"--send-queue".to_string()));
        let some = policy_args(&["--send-queue=8".into(), "--rate".into(), "5".into()]);
        assert_eq!(some, ["--burst", "1000000", "--max-clients", "1000000"]);
    }

    #[test]
    fn cookies_are_random_hex() {
        let a = random_cookie().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_cookie().unwrap());
    }
}
