//! `chat-bench-beam`: room throughput to BEAM members (ExMessenger clients on Erlang
//! nodes), against chat-server and against the original, played by the project's Elixir
//! ExMessenger server (`tests/elixir/exmessenger_server.exs`).
//!
//! For each target it starts a port mapper, the server, `--receiver-nodes` Elixir nodes
//! holding `--members - 1` nicks between them, and one sender node
//! (`crates/bench/elixir/beam_load.exs`). The sender says numbered messages with a
//! window of unacknowledged ones (a receiver node acknowledges a message, directly to
//! the sender node, once all its nicks have it), so no queue grows without bound and the
//! rate is what the whole chain sustains. Reported: deliveries per second (messages x
//! receivers), and the CPU each part used during the measured window (from /proc), so
//! one can see who the bottleneck is. Run it under `flock /tmp/bench.lock`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

/// Which server to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// chat-server (release build next to this program).
    Ours,
    /// The Elixir ExMessenger server script, standing for the original.
    Original,
    /// Both, one after the other.
    Both,
}

/// Room throughput to BEAM members, chat-server against the original.
#[derive(Parser)]
#[command(name = "chat-bench-beam", version, about)]
struct Cli {
    /// What to measure.
    #[arg(long, value_enum, default_value = "both")]
    target: Target,
    /// Members in the room, the sender included.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// BEAM nodes sharing the receiving nicks.
    #[arg(long, default_value_t = 3)]
    receiver_nodes: usize,
    /// Messages said, warm-up included.
    #[arg(long, default_value_t = 12_000)]
    messages: usize,
    /// Messages said before the measured window starts.
    #[arg(long, default_value_t = 2_000)]
    warmup: usize,
    /// Messages in flight (said and not yet acknowledged by every receiver node).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// The chat-server binary [default: chat-server next to this program].
    #[arg(long)]
    server_bin: Option<PathBuf>,
}

const COOKIE: &str = "bench-beam-cookie";
const STARTUP: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.members < 2 || cli.receiver_nodes == 0 || cli.warmup == 0 {
        bail!("need at least 2 members, 1 receiver node and a warm-up of 1 message");
    }
    if cli.warmup >= cli.messages {
        bail!("--messages must exceed --warmup");
    }
    let root = workspace_root()?;
    let server_bin = match &cli.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .with_file_name("chat-server")
            .to_path_buf(),
    };
    let targets: &[Target] = match cli.target {
        Target::Both => &[Target::Original, Target::Ours],
        Target::Ours => &[Target::Ours],
        Target::Original => &[Target::Original],
    };
    println!(
        "room of {} members on BEAM nodes ({} receiver nodes + 1 sender node), {} messages measured, window {}",
        cli.members,
        cli.receiver_nodes,
        cli.messages - cli.warmup,
        cli.window
    );
    println!(
        "{:<10} {:>14} {:>12} {:>16} {:>12} {:>10}",
        "target", "deliveries/s", "server CPU", "receivers CPU", "sender CPU", "seconds"
    );
    for &target in targets {
        let row = run(&cli, target, &root, &server_bin)
            .with_context(|| format!("the {target:?} run failed"))?;
        println!(
            "{:<10} {:>14.0} {:>11.0}% {:>15.0}% {:>11.0}% {:>10.2}",
            format!("{target:?}").to_lowercase(),
            row.deliveries_per_sec,
            row.server_cpu * 100.0,
            row.receivers_cpu * 100.0,
            row.sender_cpu * 100.0,
            row.seconds
        );
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let mut dir = std::env::current_dir()?;
    loop {
        if dir.join("crates/bench/elixir/beam_load.exs").is_file() {
            return Ok(dir);
        }
        if !dir.pop() {
            bail!("run chat-bench-beam from inside the repository (it needs its Elixir scripts)");
        }
    }
}

struct Row {
    deliveries_per_sec: f64,
    /// CPU used per second of the window, in cores.
    server_cpu: f64,
    receivers_cpu: f64,
    sender_cpu: f64,
    seconds: f64,
}

/// A child process killed (with its descendants' parent gone, they follow) on drop, its
/// standard output read line by line into a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    label: String,
}

impl Proc {
    fn spawn(label: &str, mut cmd: Command) -> Result<Proc> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            child,
            lines,
            label: label.to_string(),
        })
    }

    fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("{}: no line starting with {prefix:?}", self.label),
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The BEAM's helper processes (erl_child_setup) exit with it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) of `pid` and all its descendants.
fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut parent_of = HashMap::new();
    let mut ticks_of = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // Fields after the command name (which may hold spaces) in parentheses.
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            let fields: Vec<&str> = rest.split(' ').collect();
            let ppid = fields
                .get(1)
                .and_then(|f| f.parse::<u32>().ok())
                .unwrap_or(0);
            let utime = fields
                .get(11)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            let stime = fields
                .get(12)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
            parent_of.insert(p, ppid);
            ticks_of.insert(p, utime + stime);
        }
    }
    let in_tree = |mut p: u32| {
        for _ in 0..64 {
            if p == pid {
                return true;
            }
            match parent_of.get(&p) {
                Some(&parent) if parent != 0 => p = parent,
                _ => return false,
            }
        }
        false
    };
    let ticks: u64 = ticks_of
        .iter()
        .filter(|(p, _)| in_tree(**p))
        .map(|(_, t)| *t)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

fn elixir(root: &Path, epmd_port: u16, home: &Path, alive: &str, script: &str) -> Command {
    let mut cmd = Command::new("elixir");
    cmd.env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("HOME", home)
        .args(["--sname", &format!("{alive}@localhost"), "--cookie", COOKIE])
        .arg(root.join(script));
    cmd
}

fn run(cli: &Cli, target: Target, root: &Path, server_bin: &Path) -> Result<Row> {
    let home = std::env::temp_dir().join(format!("chat-bench-beam-{}", std::process::id()));
    std::fs::create_dir_all(&home)?;
    let mut mapper_cmd = Command::new(server_bin);
    mapper_cmd.args(["port-mapper", "--port", "0"]);
    let mut mapper = Proc::spawn("port mapper", mapper_cmd)?;
    let ready = mapper.expect("port mapper ready on port", STARTUP)?;
    let epmd_port: u16 = ready
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .context("cannot read the port mapper's port")?;
    let server = "server@localhost";
    let mut server_proc = match target {
        Target::Ours => {
            let mut cmd = Command::new(server_bin);
            cmd.env("ERL_EPMD_PORT", epmd_port.to_string())
                .env("HOME", &home)
                .env("RUST_LOG", "warn")
                .args(["--name", server, "--cookie", COOKIE])
                // Policy limits out of the way, as chat-bench does: throughput, not policy.
                .args(["--rate", "1000000", "--burst", "1000000"])
                .args(["--send-queue", "65536", "--send-queue-bytes", "268435456"]);
            let mut proc = Proc::spawn("chat-server", cmd)?;
            proc.expect("chat-server", STARTUP)?;
            proc
        }
        _ => {
            let cmd = elixir(
                root,
                epmd_port,
                &home,
                "server",
                "tests/elixir/exmessenger_server.exs",
            );
            let mut proc = Proc::spawn("Elixir server", cmd)?;
            proc.expect("ready", STARTUP)?;
            proc
        }
    };
    let receivers = cli.members - 1;
    let mut nodes = Vec::new();
    let sender_alive = "bsender";
    for r in 0..cli.receiver_nodes {
        let nicks: Vec<String> = (0..receivers)
            .filter(|i| i % cli.receiver_nodes == r)
            .map(|i| format!("r{i}"))
            .collect();
        if nicks.is_empty() {
            continue;
        }
        let mut cmd = elixir(
            root,
            epmd_port,
            &home,
            &format!("brecv{r}"),
            "crates/bench/elixir/beam_load.exs",
        );
        cmd.env("role", "receiver")
            .env("server", server)
            .env("nicks", nicks.join(","))
            .env("sender_node", format!("{sender_alive}@localhost"));
        nodes.push(Proc::spawn(&format!("receiver node {r}"), cmd)?);
    }
    for node in &mut nodes {
        node.expect("joined", STARTUP)?;
    }
    let mut cmd = elixir(
        root,
        epmd_port,
        &home,
        sender_alive,
        "crates/bench/elixir/beam_load.exs",
    );
    cmd.env("role", "sender")
        .env("server", server)
        .env("receivers", nodes.len().to_string())
        .env("total", cli.messages.to_string())
        .env("warmup", cli.warmup.to_string())
        .env("window", cli.window.to_string());
    let mut sender = Proc::spawn("sender node", cmd)?;
    sender.expect("joined", STARTUP)?;
    if let Some(stdin) = sender.child.stdin.as_mut() {
        writeln!(stdin, "go")?;
    }
    sender.expect("measuring", STARTUP)?;
    let cpu = |nodes: &[Proc], server: &Proc, sender: &Proc| {
        (
            tree_cpu_seconds(server.pid()),
            nodes.iter().map(|n| tree_cpu_seconds(n.pid())).sum::<f64>(),
            tree_cpu_seconds(sender.pid()),
        )
    };
    let before = cpu(&nodes, &server_proc, &sender);
    let done = sender.expect("done", Duration::from_secs(3600))?;
    let after = cpu(&nodes, &server_proc, &sender);
    let mut words = done.split(' ').skip(1);
    let seconds: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .context("cannot read the time")?;
    let messages: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .context("cannot read the count")?;
    let _ = server_proc.child.try_wait();
    let _ = std::fs::remove_dir_all(&home);
    Ok(Row {
        deliveries_per_sec: messages * receivers as f64 / seconds,
        server_cpu: (after.0 - before.0) / seconds,
        receivers_cpu: (after.1 - before.1) / seconds,
        sender_cpu: (after.2 - before.2) / seconds,
        seconds,
    })
}
