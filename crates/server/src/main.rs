//! `chat-server`: runs the chat room, or (`chat-server port-mapper`) the port mapper.
//!
//! Start-up: resolve the node name and cookie, bind the listener, make sure a port mapper
//! answers on this host (starting one detached if not, as `erl` starts epmd), register
//! there, print the ready line, serve until SIGINT/SIGTERM. A failure is one line on
//! standard error and exit status 1 ([`chat_node::report`]); a bad flag or node name is
//! a usage error, exit status 2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chat_server::ServerConfig;
use clap::{Args, CommandFactory, Parser, Subcommand};
use protocol::NodeName;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// The ExMessenger chat server: one chat room for every chat-client that knows the cookie.
#[derive(Parser)]
#[command(
    name = "chat-server",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = PAGE.help_footer()
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    room: RoomArgs,
    /// Print the shell completion script for SHELL and exit.
    #[arg(long, value_name = "SHELL", exclusive = true)]
    completions: Option<chat_node::docs::Shell>,
    /// Print the man page (roff) and exit.
    #[arg(long, exclusive = true)]
    manpage: bool,
}

/// What the man page and `--help` say besides the flags.
const PAGE: chat_node::docs::Page = chat_node::docs::Page {
    synopsis:
        "chat-server [--name ALIVE@HOST | --sname ALIVE] [--cookie COOKIE] [--cookie-file PATH]
            [--port PORT] [--bind ADDR] [--tick SECONDS] [--handshake-timeout SECONDS]
            [--max-clients N] [--max-handshakes N] [--max-handshakes-per-address N]
            [--auth-failures N] [--auth-retry SECONDS] [--max-text BYTES]
            [--send-queue FRAMES] [--send-queue-bytes BYTES] [--rate PER_SECOND]
            [--burst N] [--pm-rate PER_SECOND] [--pm-burst N] [--history EVENTS]
            [--history-bytes BYTES] [--resume-window SECONDS] [--no-erlang]
            [--cluster redis://HOST:PORT] [--cluster-lease SECONDS]
chat-server port-mapper [--port PORT] [--bind ADDR]
chat-server --completions SHELL | --manpage",
    sections: &[(
        "The port mapper",
        &[
            "chat-server port-mapper [--port PORT] [--bind ADDR] runs the port mapper (the epmd",
            "protocol) in the foreground, e.g. under a service manager. --port: default",
            "$ERL_EPMD_PORT or 4369, 0 picks a free one; --bind: default 0.0.0.0.",
            "A chat-server that finds no port mapper starts one in the background; it outlives",
            "the server (as epmd does), and the server's log gives its process id to stop it.",
        ],
    )],
    environment: &[
        chat_node::docs::CHAT_COOKIE,
        chat_node::docs::ERL_EPMD_PORT,
        chat_node::docs::RUST_LOG,
        (
            "CHAT_CLUSTER",
            "the Redis URL of the cluster to serve the room with, when --cluster is not given",
        ),
    ],
    files: &[chat_node::docs::COOKIE_FILE],
};

#[derive(Subcommand)]
enum Mode {
    /// Run the port mapper (epmd protocol) in the foreground, e.g. under a service manager.
    PortMapper(MapperArgs),
}

#[derive(Args)]
struct MapperArgs {
    /// Port to listen on [default: $ERL_EPMD_PORT or 4369]; 0 picks a free one.
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on (every interface by default).
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
}

#[derive(Args)]
struct RoomArgs {
    /// Long node name, alive@host (e.g. server@192.168.1.13 or server@localhost).
    #[arg(long, conflicts_with = "sname", value_name = "ALIVE@HOST",
          value_parser = NodeName::parse_long)]
    name: Option<NodeName>,
    /// Short node name; the host is this machine's short host name.
    #[arg(long, default_value = "server", value_name = "ALIVE",
          value_parser = NodeName::parse_short)]
    sname: NodeName,
    /// The shared secret (visible to other local users; prefer CHAT_COOKIE or a file).
    #[arg(long)]
    cookie: Option<String>,
    /// File holding the cookie [default: ~/.erlang.cookie, created if missing].
    #[arg(long, value_name = "PATH")]
    cookie_file: Option<PathBuf>,
    /// TCP port for clients; 0 picks a free one, found through the port mapper.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on (every interface by default; 127.0.0.1 for this machine only).
    #[arg(long, value_name = "ADDR", default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// Liveness tick in seconds; a client silent for four ticks is dropped.
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    tick: f64,
    /// Seconds a new connection has to finish its handshake.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    handshake_timeout: f64,
    /// Most authenticated connections at once.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_clients: usize,
    /// Most connections still in their handshake, in all.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_handshakes: usize,
    /// Most connections still in their handshake from one address (IPv6: one /64).
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_handshakes_per_address: usize,
    /// Failed handshakes (cookie guesses) one address may make before it must wait.
    #[arg(long, default_value_t = 5, value_name = "N")]
    auth_failures: u32,
    /// Seconds for one failed handshake of an address to be forgotten: past
    /// --auth-failures, one attempt per this many seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECONDS")]
    auth_retry: f64,
    /// Private messages one member may receive per second, on average.
    #[arg(long, default_value_t = 20.0, value_name = "PER_SECOND")]
    pm_rate: f64,
    /// Private messages one member may receive in a burst.
    #[arg(long, default_value_t = 40, value_name = "N")]
    pm_burst: u32,
    /// Longest message text in bytes.
    #[arg(long, default_value_t = protocol::limits::DEFAULT_MAX_TEXT_LEN, value_name = "BYTES")]
    max_text: usize,
    /// Frames queued for a client before it counts as too slow and is dropped.
    #[arg(long, default_value_t = 1024, value_name = "FRAMES")]
    send_queue: usize,
    /// Bytes queued for a client before it counts as too slow and is dropped (SendQ).
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_name = "BYTES")]
    send_queue_bytes: usize,
    /// Room events kept in memory for resuming clients and the backlog; a member further
    /// behind than this has lost events and is dropped.
    #[arg(long = "history", default_value_t = 10_000, value_name = "EVENTS")]
    history_events: usize,
    /// Bytes of room events kept in memory (the history stops at whichever comes first).
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    history_bytes: usize,
    /// Seconds a client whose connection dropped can resume its session (its nick and
    /// what it missed).
    #[arg(long, default_value_t = 120.0, value_name = "SECONDS")]
    resume_window: f64,
    /// Flood limit: messages per second per client, on average.
    #[arg(long, default_value_t = 10.0, value_name = "PER_SECOND")]
    rate: f64,
    /// Flood limit: burst size; this many refused in a row disconnects the client.
    #[arg(long, value_name = "N", default_value_t = 20)]
    burst: u32,
    /// Refuse Erlang distribution connections (BEAM nodes such as ExMessenger clients).
    #[arg(long)]
    no_erlang: bool,
    /// Serve one room with every node started with the same Redis and cookie
    /// (redis://HOST:PORT); without it the room is this process's alone.
    #[arg(long, env = "CHAT_CLUSTER", value_name = "redis://HOST:PORT")]
    cluster: Option<String>,
    /// In a cluster: seconds after which a node that stopped renewing its lease (it
    /// renews every tick) is dead to the others, who release its members
    /// [default: three ticks].
    #[arg(long, value_name = "SECONDS")]
    cluster_lease: Option<f64>,
}

fn main() {
    chat_node::logging::init("info");
    let cli = Cli::parse();
    if let Some(shell) = cli.completions {
        let written = chat_node::docs::print_completions(Cli::command(), shell);
        done(written.context("Could not write the completion script"));
    }
    if cli.manpage {
        let written = chat_node::docs::print_manpage(Cli::command(), &PAGE);
        done(written.context("Could not write the man page"));
    }
    chat_server::memory::tune_allocator();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => chat_node::report::fail(
            anyhow::Error::new(e)
                .context("Could not start chat-server: cannot start the async runtime")
                .as_ref(),
        ),
    };
    let result = match cli.command {
        Some(Mode::PortMapper(args)) => runtime.block_on(run_port_mapper(args)),
        None => runtime
            .block_on(run_room(cli.room))
            .context("Could not start chat-server"),
    };
    // Do not wait for connections stuck on a dead peer after the grace period.
    runtime.shutdown_timeout(Duration::from_millis(100));
    done(result)
}

/// Exits: 0 on success, else 1 after saying why in one line (no backtrace).
fn done(result: Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(e) => chat_node::report::fail(e.as_ref()),
    }
}

/// Ends the process with a usage error (exit status 2), as clap does for a bad flag.
fn usage_error(message: impl std::fmt::Display) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, message)
        .exit()
}

async fn run_port_mapper(args: MapperArgs) -> Result<()> {
    let port = args.port.unwrap_or_else(portmap::mapper_port_from_env);
    let listener = chat_server::listener::listen((args.bind, port).into())
        .with_context(|| format!("cannot listen on {}:{port}", args.bind))
        .context("Could not start the port mapper")?;
    let port = listener.local_addr()?.port();
    let signals = ShutdownSignals::install().context("Could not start the port mapper")?;
    println!("port mapper ready on port {port}");
    portmap::serve(listener, signals.received())
        .await
        .context("The port mapper stopped")
}

async fn run_room(args: RoomArgs) -> Result<()> {
    let name = args.name.clone().unwrap_or_else(|| args.sname.clone());
    if args.cookie.is_some() {
        tracing::warn!(
            "a cookie given with --cookie is visible to other local users (ps); prefer CHAT_COOKIE or --cookie-file"
        );
    }
    let env_cookie = std::env::var(chat_node::cookie::COOKIE_ENV).ok();
    let (cookie, cookie_source) = chat_node::cookie::resolve(
        args.cookie.as_deref(),
        env_cookie.as_deref(),
        args.cookie_file.as_deref(),
    )?;
    let mut config = config_from(&args, name.clone(), cookie).unwrap_or_else(|e| usage_error(e));

    let listener = chat_server::listener::listen((args.bind, args.port).into())
        .with_context(|| format!("cannot listen on {}:{}", args.bind, args.port))?;
    let port = listener.local_addr()?.port();

    let mapper_port = portmap::mapper_port_from_env();
    let keeper = chat_server::mapper::Keeper {
        mapper_port,
        alive: name.alive().to_string(),
        port,
        program: std::env::current_exe()
            .context("cannot find this program to start the port mapper")?,
        args: vec![
            "port-mapper".into(),
            "--port".into(),
            mapper_port.to_string(),
        ],
    };
    let registration = match keeper.register().await {
        Ok(registration) => registration,
        Err(portmap::PortmapError::NameTaken(alive)) => {
            let holder =
                portmap::lookup(SocketAddr::from((Ipv4Addr::LOCALHOST, mapper_port)), &alive)
                    .await
                    .map_or_else(
                        |_| "another process".to_string(),
                        |p| format!("the process listening on port {p}"),
                    );
            bail!(
                "the name {alive} is already registered with the port mapper on port {mapper_port} by {holder}: \
                 another chat-server named {name} is running, or some program took the name (it cannot \
                 read or forge anything without the cookie); stop it, or pick another --sname/--name"
            )
        }
        Err(
            e @ (portmap::PortmapError::Spawn { .. }
            | portmap::PortmapError::MapperExited { .. }
            | portmap::PortmapError::StartTimeout { .. }),
        ) => {
            return Err(e).with_context(|| {
                format!("no port mapper on port {mapper_port}, and starting one failed")
            });
        }
        Err(e) => return Err(e).context("cannot register with the port mapper"),
    };
    config.creation = registration.creation();
    // Kept for the life of the server: re-registers whenever the mapper goes away.
    tokio::spawn(keeper.keep(registration));

    tracing::info!(cookie = %cookie_source, "cookie loaded");
    let signals = ShutdownSignals::install()?;
    chat_server::serve_with(config, listener, signals.received(), || {
        println!("chat-server {name} ready on port {port}");
    })
    .await;
    tracing::info!("bye");
    Ok(())
}

/// The server's configuration from the flags; `Err` says which flag has an impossible
/// value (a usage error).
fn config_from(
    args: &RoomArgs,
    name: NodeName,
    cookie: protocol::Cookie,
) -> Result<ServerConfig, String> {
    let seconds = |value: f64, flag: &str| -> Result<Duration, String> {
        if value.is_finite() && value > 0.0 {
            Ok(Duration::from_secs_f64(value))
        } else {
            Err(format!(
                "{flag} must be a positive number of seconds, not {value}"
            ))
        }
    };
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(format!(
            "--rate must be a positive number, not {}",
            args.rate
        ));
    }
    if args.max_text == 0 || args.max_text > protocol::limits::MAX_FRAME_LEN / 2 {
        return Err(format!(
            "--max-text must be between 1 and {} bytes",
            protocol::limits::MAX_FRAME_LEN / 2
        ));
    }
    let mut config = ServerConfig::new(name, cookie);
    config.tick = seconds(args.tick, "--tick")?;
    config.handshake_timeout = seconds(args.handshake_timeout, "--handshake-timeout")?;
    config.max_clients = args.max_clients;
    config.max_handshakes = args.max_handshakes.max(1);
    config.max_handshakes_per_address = args.max_handshakes_per_address.max(1);
    config.auth_failures = args.auth_failures.max(1);
    config.auth_retry = seconds(args.auth_retry, "--auth-retry")?;
    if !(args.pm_rate.is_finite() && args.pm_rate > 0.0) {
        return Err(format!(
            "--pm-rate must be a positive number, not {}",
            args.pm_rate
        ));
    }
    config.pm_rate_per_sec = args.pm_rate;
    config.pm_burst = args.pm_burst.max(1);
    config.max_text_len = args.max_text;
    config.send_queue_frames = args.send_queue.max(1);
    if args.send_queue_bytes < protocol::limits::MAX_FRAME_LEN + 4 {
        return Err(format!(
            "--send-queue-bytes must hold at least one whole frame ({} bytes)",
            protocol::limits::MAX_FRAME_LEN + 4
        ));
    }
    config.send_queue_bytes = args.send_queue_bytes;
    if args.history_events == 0 || args.history_bytes < protocol::limits::MAX_FRAME_LEN + 4 {
        return Err(format!(
            "--history must keep at least one event and --history-bytes at least one whole frame ({} bytes)",
            protocol::limits::MAX_FRAME_LEN + 4
        ));
    }
    config.resume_window = seconds(args.resume_window, "--resume-window")?;
    config.history_events = args.history_events;
    config.history_bytes = args.history_bytes;
    config.rate_per_sec = args.rate;
    config.burst = args.burst.max(1);
    config.erlang = !args.no_erlang;
    if let Some(url) = &args.cluster {
        if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return Err(format!(
                "--cluster takes a Redis URL such as redis://127.0.0.1:6379, not {url:?}"
            ));
        }
        config.cluster = Some(url.clone());
    }
    config.cluster_lease = match args.cluster_lease {
        Some(lease) => seconds(lease, "--cluster-lease")?,
        None => config.tick * 3,
    };
    if config.cluster_lease <= config.tick {
        return Err(
            "--cluster-lease must be longer than --tick, which is how often the lease is renewed"
                .to_string(),
        );
    }
    Ok(config)
}

/// SIGINT and SIGTERM, installed before the ready line is printed so that a signal sent
/// right after it is a clean shutdown rather than the default (immediate death).
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn install() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM.
    async fn received(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
