//! `chat-bench`: a load generator for `chat-server` that speaks the real protocol, and a
//! baseline relay to compare it with.
//!
//! Start-up: parse the flags, raise the open-files limit, then for every workload and
//! every target (server, baseline server, relay) start a fresh target process, run the
//! workload, and print one row; finally the table (or JSON lines) with each server's
//! figures as ratios of the relay's and of the baseline's. SIGINT/SIGTERM end the run and
//! every child process with it. The exit status is 0 only when every run completed with
//! zero loss and no reordering.
//!
//! The hidden `relay` subcommand is the baseline relay itself, started by the bench as a
//! child process so its CPU and memory are measured like the server's.

mod affinity;
mod client;
mod engine;
mod frames;
mod launch;
mod legacy;
mod probe;
mod procfs;
mod relay;
mod report;
mod resume;
mod run;
mod session;
mod stats;
mod window;
mod wire;
mod workload;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::launch::{LaunchConfig, Launcher, TargetKind};
use crate::report::Row;
use crate::workload::{FanoutParams, OpenLoopParams, Workload};

const AFTER_HELP: &str = "\
Targets: by default chat-bench starts a release chat-server found next to its own
executable (build both with `cargo build --release -p chat-server -p chat-bench`), with its
own port mapper and a random cookie, and with its policy limits raised so the run measures
throughput, not policy: --rate 1000000 --burst 1000000 --send-queue 65536
--max-clients 1000000. Each workload gets a fresh server. --target relay (or
--baseline-relay) measures the built-in baseline relay instead (no preamble, no handshake,
no registry, no validation; same framing), --target all measures both back to back and
prints the server's figures as ratios of the relay's. --baseline-server PATH adds a
second chat-server binary to every run (a build of an older main, speaking protocol
version 1: scripts/build-baseline.sh REV builds one), compared with ours in the same run.

Cluster: --cluster adds a target of three chat-server nodes started with --cluster and
one redis-server (found on PATH, keeping nothing on disk), all on this machine, to
fanout, openloop and join runs (clients spread over the nodes; openloop's senders on the
first node, its receivers on the others). `chat-bench --cluster` alone runs fan-out
against one node and the cluster, then openloop against both at half the one node's
fan-out rate (--cluster-load), and again at half the cluster's own rate when that is
lower, and prints the cluster's rate and its added p50/p99 latency over one node. The cluster's CPU column counts all three nodes and Redis.

Generator: clients are spread over --threads threads (default: one per CPU the bench may
use), each running one poll loop. Pinned runs (fanout --pin, and the suite's pinned rows)
put the target on the first CPU and the generator on the others.

Open files: every client is one socket in the bench and one in the target. chat-bench
raises its open-files soft limit to the hard limit (setrlimit) at start, and the server and
relay it starts inherit that limit. A run needs about clients + 256 descriptors (idle
--clients 10000: about 10300); if the hard limit is lower the bench says so: raise it
(`ulimit -Hn` as root, /etc/security/limits.conf, or LimitNOFILE= for a service). A
server given with --server must have its own limit raised.

Columns: rate is deliveries/s (fanout, openloop), joins/s (join) or target RSS bytes per
idle joined connection (idle); p50/p99/p99.9 are latencies in microseconds (send, or
scheduled send for openloop, to receive; connect to join reply for join); CPU-s/1M is the
target's CPU seconds (utime + stime from /proc) per million units of the rate (for joins:
microseconds of target CPU per join); bench CPU is the generator's own CPU; other CPU is
everything else on the machine during the window (a high value means a noisy
measurement); vs relay and vs baseline divide a server's figure by that target's from the
same run.

Exit status: 0 when every run completed with zero loss and no reordering, 1 when a run
failed (loss, reorder, disconnect, a client dropped by the server), 2 on a usage or
start-up error.";

/// Load generator for chat-server: fan-out throughput, open-loop latency, idle memory and
/// join rate, against our server and a minimal baseline relay.
#[derive(Parser)]
#[command(name = "chat-bench", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    comparison: ComparisonArgs,
}

/// `chat-bench --cluster` without a command: one node against a cluster, same run.
#[derive(Args)]
struct ComparisonArgs {
    /// Clients in the room for `chat-bench --cluster` (spread over the nodes for the
    /// throughput run; for the latency run the sender is on one node and the receivers
    /// on the others).
    #[arg(long, default_value_t = 100, value_name = "N")]
    cluster_clients: usize,
    /// Senders of the latency runs of `chat-bench --cluster`, all on the first node (a
    /// cluster node sends one session's says to Redis one after another, so a single
    /// sender is limited by Redis's round trip).
    #[arg(long, default_value_t = 1, value_name = "S")]
    cluster_senders: usize,
    /// Sending time of each run of `chat-bench --cluster`, seconds.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    cluster_duration: f64,
    /// The latency runs' offered rate, as a fraction of the one node's fan-out maximum
    /// measured just before (and of the cluster's, when that is lower).
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
    cluster_load: f64,
}

/// Which implementation to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TargetChoice {
    /// chat-server (and the baseline server, when given).
    Server,
    /// The built-in baseline relay.
    Relay,
    /// All of them, back to back, with ratios.
    All,
}

#[derive(Args)]
struct TargetArgs {
    /// What to measure [default: server; all for `suite`].
    #[arg(long, value_enum, global = true)]
    target: Option<TargetChoice>,
    /// Measure the baseline relay (same as --target relay).
    #[arg(long, global = true, conflicts_with = "target")]
    baseline_relay: bool,
    /// A second chat-server binary to measure in the same run and compare with (protocol
    /// version 1; see scripts/build-baseline.sh).
    #[arg(long, global = true, value_name = "PATH")]
    baseline_server: Option<PathBuf>,
    /// Generator threads [default: one per CPU the generator may use].
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Use a running server instead of starting one.
    #[arg(long, global = true, value_name = "NAME@HOST:PORT")]
    server: Option<String>,
    /// Cookie of the server given with --server.
    #[arg(long, global = true, env = "CHAT_COOKIE", hide_env_values = true)]
    cookie: Option<String>,
    /// Process id of the server given with --server, for its CPU time and RSS.
    #[arg(long, global = true, value_name = "PID")]
    server_pid: Option<u32>,
    /// The chat-server binary [default: chat-server next to chat-bench].
    #[arg(long, global = true, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// An extra argument for every chat-server the bench starts (repeatable), e.g.
    /// --server-arg=--tick --server-arg=30.
    #[arg(
        long = "server-arg",
        global = true,
        value_name = "ARG",
        allow_hyphen_values = true
    )]
    server_args: Vec<String>,
    /// RUST_LOG for started servers [default: the server's own, info]; their standard
    /// error goes to a file in --log-dir.
    #[arg(long, global = true, value_name = "FILTER")]
    server_log: Option<String>,
    /// Where started servers' logs go [default: a temporary directory, removed after a
    /// successful run].
    #[arg(long, global = true, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Print JSON lines on standard output (the table goes to standard error).
    #[arg(long, global = true)]
    json: bool,
    /// Also measure a cluster: three chat-server nodes on this machine serving one room
    /// through one redis-server (on PATH), both started by the bench, in the same run as
    /// one node. Without a command: fan-out throughput of both, then open-loop latency
    /// at half the one node's maximum with the sender and receivers on different nodes.
    #[arg(long, global = true)]
    cluster: bool,
}

#[derive(Subcommand)]
enum Mode {
    /// Closed-loop fan-out: N clients, S senders, W messages in flight per sender.
    Fanout(FanoutArgs),
    /// Open-loop fan-out at a fixed offered rate; latency from the scheduled send time.
    Openloop(OpenLoopArgs),
    /// Server RSS per idle joined connection.
    Idle(IdleArgs),
    /// Joins per second (connect + handshake + join, broadcast to the room).
    Join(JoinArgs),
    /// A mass resume: K clients joined, every link cut at once without a word, messages
    /// said meanwhile, every client resuming at once; time until all resumed, peak RSS.
    /// Against this tree's server only.
    Resume(ResumeArgs),
    /// The whole matrix: fan-out N=100/1000 with S=N and S=1, pinned fan-out, open loop
    /// at N=100, joins at K=1000/10000 (10 in flight), idle at K=10000 (100 joins in
    /// flight); against every target by default. --quick for a short version.
    Suite(SuiteArgs),
    /// Run the baseline relay in the foreground (started by the bench itself).
    #[command(hide = true)]
    Relay(RelayArgs),
}

#[derive(Args)]
struct FanoutArgs {
    /// Clients in the room (a comma-separated list runs each).
    #[arg(long, value_delimiter = ',', default_value = "100")]
    clients: Vec<usize>,
    /// Clients that send [default: all of them].
    #[arg(long)]
    senders: Option<usize>,
    /// Messages each sender keeps in flight [default: 256 / senders, at least 1].
    #[arg(long)]
    window: Option<usize>,
    /// Sending time, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Pad message texts to at least this many bytes.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    text_len: usize,
    /// Clients connecting at once while the room fills.
    #[arg(long, default_value_t = 64)]
    connect_in_flight: usize,
    /// Pin the target to one CPU and the generator to the others.
    #[arg(long)]
    pin: bool,
}

#[derive(Args)]
struct ResumeArgs {
    /// Clients cut and resuming (a comma-separated list runs each).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    clients: Vec<usize>,
    /// Messages said while they are away; each client must get each once, in order.
    #[arg(long, default_value_t = 20)]
    said: usize,
}

#[derive(Args)]
struct OpenLoopArgs {
    /// Clients in the room.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Offered deliveries per second (messages/s times the N-1 receivers).
    #[arg(long, default_value_t = 1_000_000.0, value_name = "DELIVERIES_PER_SEC")]
    rate: f64,
    /// Clients that send, round robin [default: all of them].
    #[arg(long)]
    senders: Option<usize>,
    /// Sending time, seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Pad message texts to at least this many bytes.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    text_len: usize,
    /// Clients connecting at once while the room fills.
    #[arg(long, default_value_t = 64)]
    connect_in_flight: usize,
}

#[derive(Args)]
struct IdleArgs {
    /// Idle joined connections (a comma-separated list runs each).
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    clients: Vec<usize>,
    /// Clients joining at once (as the join workload). Each join is broadcast to the
    /// whole room, so many at once measure how much of that burst the allocator keeps,
    /// not what an idle member costs.
    #[arg(long, default_value_t = 10)]
    in_flight: usize,
    /// Seconds to wait after the last join broadcast before reading RSS.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

#[derive(Args)]
struct JoinArgs {
    /// Clients joining, one room.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Joins in progress at once.
    #[arg(long, default_value_t = 10)]
    in_flight: usize,
}

#[derive(Args)]
struct SuiteArgs {
    /// A short version (about a minute): N=100 only, 1 s runs, K=1000.
    #[arg(long)]
    quick: bool,
    /// Fan-out room sizes; each runs with S=N and with S=1 [default: 100,1000; quick: 100].
    #[arg(long, value_delimiter = ',')]
    fanout_clients: Option<Vec<usize>>,
    /// Pinned fan-out runs as N:S pairs [default: 100:1,1000:1000; quick: 100:1].
    #[arg(long, value_delimiter = ',', value_parser = parse_pair)]
    pinned: Option<Vec<(usize, usize)>>,
    /// Fan-out and open-loop sending time, seconds [default: 5; quick: 1].
    #[arg(long)]
    duration: Option<f64>,
    /// Open-loop offered deliveries per second, at N=100 [default: 500000,2000000; quick:
    /// 500000].
    #[arg(long, value_delimiter = ',')]
    rate: Option<Vec<f64>>,
    /// Clients of the join workload, 10 in flight [default: 1000,10000; quick: 1000].
    #[arg(long, value_delimiter = ',')]
    join_clients: Option<Vec<usize>>,
    /// Idle connection counts, 100 joins in flight [default: 10000; quick: 1000].
    #[arg(long, value_delimiter = ',')]
    idle_clients: Option<Vec<usize>>,
}

/// Parses `N:S`.
fn parse_pair(text: &str) -> Result<(usize, usize), String> {
    let (n, s) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?} is not N:S"))?;
    let number = |v: &str| {
        v.parse::<usize>()
            .map_err(|_| format!("{v:?} in {text:?} is not a number"))
    };
    Ok((number(n)?, number(s)?))
}

#[derive(Args)]
struct RelayArgs {
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Frames queued per member before it counts as a slow consumer and is closed.
    #[arg(long, default_value_t = launch::BENCH_SEND_QUEUE)]
    queue: usize,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("chat-bench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = run(cli) => result,
            signal = interrupted() => match signal {
                Ok(name) => Err(anyhow::anyhow!("interrupted by {name}; child processes stopped")),
                Err(e) => Err(e),
            },
        }
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chat-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn interrupted() -> Result<&'static str> {
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    tokio::select! {
        _ = interrupt.recv() => Ok("SIGINT"),
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    if value.is_finite() && value > 0.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        bail!("{flag} must be a positive number of seconds, not {value}")
    }
}

/// The workloads a command asks for, in order.
fn plan(mode: &Mode) -> Result<Vec<Workload>> {
    let fanout = |clients: usize, senders: usize, window, duration, text_len, connect, pinned| {
        Workload::Fanout(FanoutParams {
            clients,
            senders,
            window,
            duration,
            text_len,
            connect_in_flight: connect,
            pinned,
        })
    };
    Ok(match mode {
        Mode::Fanout(a) => {
            let duration = seconds(a.duration, "--duration")?;
            a.clients
                .iter()
                .map(|&n| {
                    let senders = a.senders.unwrap_or(n);
                    fanout(
                        n,
                        senders,
                        a.window,
                        duration,
                        a.text_len,
                        a.connect_in_flight,
                        a.pin,
                    )
                })
                .collect()
        }
        Mode::Openloop(a) => vec![Workload::OpenLoop(OpenLoopParams {
            clients: a.clients,
            senders: a.senders,
            rate: a.rate,
            duration: seconds(a.duration, "--duration")?,
            text_len: a.text_len,
            connect_in_flight: a.connect_in_flight,
        })],
        Mode::Idle(a) => {
            let settle = seconds(a.settle, "--settle")?;
            a.clients
                .iter()
                .map(|&clients| Workload::Idle {
                    clients,
                    in_flight: a.in_flight,
                    settle,
                })
                .collect()
        }
        Mode::Join(a) => vec![Workload::Join {
            clients: a.clients,
            in_flight: a.in_flight,
        }],
        Mode::Resume(a) => a
            .clients
            .iter()
            .map(|&clients| Workload::Resume {
                clients,
                said: a.said,
            })
            .collect(),
        Mode::Suite(a) => {
            let pick = |given: &Option<Vec<usize>>, full: &[usize], quick: &[usize]| {
                given
                    .clone()
                    .unwrap_or_else(|| if a.quick { quick } else { full }.to_vec())
            };
            let duration = seconds(
                a.duration.unwrap_or(if a.quick { 1.0 } else { 5.0 }),
                "--duration",
            )?;
            let mut plan = Vec::new();
            for n in pick(&a.fanout_clients, &[100, 1000], &[100]) {
                plan.push(fanout(n, 1, None, duration, 0, 64, false));
                plan.push(fanout(n, n, None, duration, 0, 64, false));
            }
            let pinned = a.pinned.clone().unwrap_or_else(|| {
                if a.quick {
                    vec![(100, 1)]
                } else {
                    vec![(100, 1), (1000, 1000)]
                }
            });
            for (n, senders) in pinned {
                plan.push(fanout(n, senders, None, duration, 0, 64, true));
            }
            let rates = a.rate.clone().unwrap_or_else(|| {
                if a.quick {
                    vec![500_000.0]
                } else {
                    vec![500_000.0, 2_000_000.0]
                }
            });
            for rate in rates {
                plan.push(Workload::OpenLoop(OpenLoopParams {
                    clients: 100,
                    senders: None,
                    rate,
                    duration,
                    text_len: 0,
                    connect_in_flight: 64,
                }));
            }
            for clients in pick(&a.join_clients, &[1000, 10_000], &[1000]) {
                plan.push(Workload::Join {
                    clients,
                    in_flight: 10,
                });
            }
            for clients in pick(&a.idle_clients, &[10_000], &[1000]) {
                plan.push(Workload::Idle {
                    clients,
                    in_flight: 100,
                    settle: Duration::from_secs(1),
                });
            }
            plan
        }
        Mode::Relay(_) => Vec::new(),
    })
}

/// Runs the command; true when every run passed.
async fn run(cli: Cli) -> Result<bool> {
    if let Some(Mode::Relay(args)) = &cli.command {
        let listener = TcpListener::bind((args.bind, args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.bind, args.port))?;
        let port = listener.local_addr()?.port();
        println!("relay ready on port {port}");
        relay::serve(listener, args.queue).await;
        return Ok(true);
    }
    let t = &cli.target;
    let comparison = cli.command.is_none();
    let plan = match &cli.command {
        Some(mode) => plan(mode)?,
        None if t.cluster => Vec::new(),
        None => {
            bail!("a command is needed (fanout, openloop, idle, join, resume, suite), or --cluster")
        }
    };
    let choice = if t.baseline_relay {
        TargetChoice::Relay
    } else {
        t.target.unwrap_or(match cli.command {
            Some(Mode::Suite(_)) => TargetChoice::All,
            _ => TargetChoice::Server,
        })
    };
    let baseline = t.baseline_server.is_some();
    let mut targets = match choice {
        // Resuming needs sessions: only this tree's server has them.
        _ if matches!(cli.command, Some(Mode::Resume(_))) => vec![TargetKind::Server],
        TargetChoice::Server if baseline => vec![TargetKind::Server, TargetKind::Baseline],
        TargetChoice::Server => vec![TargetKind::Server],
        TargetChoice::Relay => vec![TargetKind::Relay],
        TargetChoice::All if baseline => {
            vec![TargetKind::Server, TargetKind::Baseline, TargetKind::Relay]
        }
        TargetChoice::All => vec![TargetKind::Server, TargetKind::Relay],
    };
    if t.cluster {
        match &cli.command {
            None | Some(Mode::Fanout(_) | Mode::Openloop(_) | Mode::Join(_)) => {}
            Some(_) => bail!("--cluster goes with fanout, openloop, join, or no command"),
        }
        if !targets.contains(&TargetKind::Server) {
            targets.insert(0, TargetKind::Server);
        }
        targets.push(TargetKind::Cluster);
    }
    if cfg!(debug_assertions) {
        tracing::warn!(
            "this is a debug build of chat-bench: the relay and the load generator are slow; \
             use target/release/chat-bench"
        );
    }
    let most_clients = plan
        .iter()
        .map(Workload::clients)
        .max()
        .unwrap_or(0)
        .max(if comparison {
            cli.comparison.cluster_clients
        } else {
            0
        });
    let limit = procfs::raise_open_files_limit(most_clients as u64 + 256)?;
    tracing::debug!(limit, "open-files limit");

    let external = match &t.server {
        Some(spec) => {
            let cookie = t
                .cookie
                .clone()
                .filter(|c| !c.trim().is_empty())
                .context("--server needs --cookie (or CHAT_COOKIE)")?;
            Some(launch::resolve_external(spec, cookie, t.server_pid).await?)
        }
        None => None,
    };
    let server_bin = match &t.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("cannot find chat-bench's own path")?
            .with_file_name("chat-server"),
    };
    let temporary_logs = t.log_dir.is_none();
    let log_dir = t
        .log_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("chat-bench-{}", std::process::id())));
    let mut launcher = Launcher::new(
        LaunchConfig {
            server_bin,
            baseline_bin: t.baseline_server.clone(),
            server_args: t.server_args.clone(),
            server_log_level: t.server_log.clone(),
            log_dir: log_dir.clone(),
            external,
        },
        targets.contains(&TargetKind::Server) || targets.contains(&TargetKind::Baseline),
    )?;

    let mut rows = Vec::new();
    if comparison {
        rows = compare_cluster(&mut launcher, &cli.comparison, t.threads).await?;
    }
    for workload in &plan {
        for &target in &targets {
            let row = measure(&mut launcher, workload, target, t.threads).await;
            eprintln!("{}", progress(&row));
            rows.push(row);
        }
    }
    report::add_ratios(&mut rows);
    let summary = report::cluster_summary(&mut rows);
    let table = report::table(&rows);
    if t.json {
        print!("{}", report::json_lines(&rows));
        eprint!("\n{table}{summary}");
    } else {
        print!("\n{table}{summary}");
    }
    let all_ok = rows.iter().all(|r| r.ok);
    drop(launcher);
    if temporary_logs && all_ok {
        let _ = std::fs::remove_dir_all(&log_dir);
    } else {
        eprintln!("server logs: {}", log_dir.display());
    }
    Ok(all_ok)
}

/// `chat-bench --cluster`: closed-loop fan-out against one node and against the cluster
/// (clients spread over its nodes), then open-loop latency against both at
/// `--cluster-load` of the one node's fan-out rate (and of the cluster's, when that is
/// lower), the sender on the first node and the receivers on the others.
async fn compare_cluster(
    launcher: &mut Launcher,
    args: &ComparisonArgs,
    threads: Option<usize>,
) -> Result<Vec<Row>> {
    let duration = seconds(args.cluster_duration, "--cluster-duration")?;
    if !(args.cluster_load.is_finite() && args.cluster_load > 0.0) {
        bail!("--cluster-load must be a positive fraction");
    }
    let clients = args.cluster_clients;
    let throughput = Workload::Fanout(FanoutParams {
        clients,
        senders: clients,
        window: None,
        duration,
        text_len: 0,
        connect_in_flight: 64,
        pinned: false,
    });
    let mut rows = Vec::new();
    for target in [TargetKind::Server, TargetKind::Cluster] {
        let row = measure(launcher, &throughput, target, threads).await;
        eprintln!("{}", progress(&row));
        rows.push(row);
    }
    let one_node_max = match rows[0].rate {
        Some(rate) if rows[0].error.is_none() && rate > 0.0 => rate,
        _ => bail!("the one-node fan-out run failed; no rate to take a fraction of"),
    };
    // At the fraction of one node's maximum (the comparison asked for), and, when the
    // cluster's own maximum is lower, also at that fraction of the cluster's: a load
    // the cluster can carry, to see what crossing nodes adds when it is not saturated.
    let mut rates = vec![one_node_max * args.cluster_load];
    if let Some(cluster_max) = rows[1].rate.filter(|r| rows[1].error.is_none() && *r > 0.0)
        && cluster_max < one_node_max
    {
        rates.push(cluster_max * args.cluster_load);
    }
    for rate in rates {
        let latency = Workload::OpenLoop(OpenLoopParams {
            clients,
            senders: Some(args.cluster_senders.max(1)),
            rate: rate.round(),
            duration,
            text_len: 0,
            connect_in_flight: 64,
        });
        for target in [TargetKind::Server, TargetKind::Cluster] {
            let row = measure(launcher, &latency, target, threads).await;
            eprintln!("{}", progress(&row));
            rows.push(row);
        }
    }
    Ok(rows)
}

/// Runs one workload against a fresh target; a failure becomes a failed row.
async fn measure(
    launcher: &mut Launcher,
    workload: &Workload,
    target: TargetKind,
    threads: Option<usize>,
) -> Row {
    let mut row = Row::new(workload.name(), target, workload.unit());
    workload.describe(&mut row);
    tracing::info!(
        workload = workload.name(),
        %target,
        params = %row.params_text(),
        "starting"
    );
    let outcome = async {
        let pinning = workload.pinning()?;
        let cpus = pinning.as_ref().map(|p| p.target_set());
        let running = launcher.start(target, cpus).await?;
        let result = workload
            .run(&running, pinning.as_ref(), threads, &mut row)
            .await;
        if let (Err(_), Some(log)) = (&result, &running.log) {
            tracing::warn!(log = %log.display(), "the server's log may say more");
        }
        result
    }
    .await;
    if let Err(e) = outcome {
        row.ok = false;
        row.error = Some(format!("{e:#}"));
    }
    // Let the previous target's sockets close before the next one starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    row
}

/// One line per finished run, on standard error, while the suite goes on.
fn progress(row: &Row) -> String {
    let rate = row
        .rate
        .map_or_else(|| "-".into(), |r| format!("{r:.0} {}", row.unit));
    let p99 = row
        .p99_us
        .map_or_else(String::new, |p| format!(", p99 {p:.0} us"));
    let cpu = row
        .cpu_s_per_1m
        .map_or_else(String::new, |c| format!(", {c:.3} CPU-s/1M"));
    let status = match (&row.error, row.ok) {
        (Some(e), _) => format!("ERROR: {e}"),
        (None, true) => "ok".into(),
        (None, false) => format!(
            "FAILED (loss {}, reorder {}, other {})",
            row.loss, row.reorders, row.other_errors
        ),
    };
    format!(
        "{} {} {}: {rate}{p99}{cpu}: {status}",
        row.workload,
        row.target,
        row.params_text()
    )
}
