//! `chat-client`: join an ExMessenger chat room from the terminal.
//!
//! Start-up follows the original client: resolve the server, connect, handshake, start
//! the message handler, join, print the banner, then read lines. Exit status: 0 after
//! `/quit` or the end of input when everything said reached the room; 1 when the server
//! cannot be reached, refuses the join at start-up, is lost with `--no-reconnect` (or for
//! good: see [`chat_client::reconnect`]), or when some message did not reach the room
//! (refused by the flood limit, never acknowledged, never sent), which is told on
//! standard error; 2 for a usage error (a bad flag or node name, no nick). Failures are
//! one line on standard error (see [`chat_node::report`]). User output goes to standard
//! output; diagnostics go through `tracing` to standard error (level `warn` unless
//! `RUST_LOG` says otherwise).

use std::io::IsTerminal;

use anyhow::Context as _;
use chat_client::cli::{Args, ConfigError, Environment};
use chat_client::connect;
use chat_client::frontend::FrontEnd;
use chat_client::plain;
use chat_client::reconnect::{ReconnectPolicy, Redial};
use chat_client::render;
use chat_client::session::{JoinOutcome, Session, SessionError};
use clap::{CommandFactory, Parser};
use tracing::debug;

/// Exit status for every failure.
const FAILURE: u8 = 1;

#[tokio::main]
async fn main() {
    chat_node::logging::init("warn");
    let args = Args::parse();
    if let Some(shell) = args.completions {
        let written = chat_node::docs::print_completions(Args::command(), shell);
        print_docs(written.context("Could not write the completion script"));
    }
    if args.manpage {
        let written = chat_node::docs::print_manpage(Args::command(), &chat_client::manual::PAGE);
        print_docs(written.context("Could not write the man page"));
    }
    let code = match run(args).await {
        Ok(code) => code,
        Err(e) => chat_node::report::fail(e.as_ref()),
    };
    // Reading standard input blocks a thread that cannot be cancelled, so leave at once
    // instead of waiting for the runtime to shut down.
    std::process::exit(i32::from(code))
}

/// Exits after printing completions or the man page.
fn print_docs(written: anyhow::Result<()>) -> ! {
    match written {
        Ok(()) => std::process::exit(0),
        Err(e) => chat_node::report::fail(e.as_ref()),
    }
}

/// Runs the client; returns the exit status, or an error the contract has no line for.
async fn run(args: Args) -> anyhow::Result<u8> {
    // Installed first, so a hang-up at any point is handled rather than fatal.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("Could not start chat-client: cannot handle SIGHUP")?;
    if let Some(warning) = args.cookie_warning() {
        plain::eprint_line(warning);
    }
    let config = match args.resolve(&Environment::from_process()) {
        Ok(config) => config,
        // Fixed on the command line: a usage error, as clap's own.
        Err(ConfigError::NoNick) => Args::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                ConfigError::NoNick,
            )
            .exit(),
        Err(e) => return Err(e).context("Could not start chat-client"),
    };
    debug!(cookie = %config.cookie_source, "cookie found");
    // The nodes to try, in the order given (several: one room on a cluster).
    let mut targets: Vec<_> = std::iter::once(config.server.clone())
        .chain(config.fallbacks.iter().cloned())
        .collect();
    let mut connected = None;
    for (i, target) in targets.iter().enumerate() {
        let server = target.name.to_string();
        plain::print_line(&render::connecting(&server, &config.own.to_string()));
        match connect::connect(target, &config.own, config.cookie.clone()).await {
            Ok(connection) => {
                connected = Some((i, connection));
                break;
            }
            Err(e) => {
                let e = e.explained().await;
                // As given: with the port when --server had one.
                plain::eprint_line(&render::connect_failed(&target.to_string(), &e.to_string()));
            }
        }
    }
    let Some((first, connection)) = connected else {
        return Ok(FAILURE);
    };
    // The node that answered first; the others follow it for failover.
    targets.rotate_left(first);
    let target = targets.remove(0);
    let server = target.name.to_string();
    plain::print_line(&render::connected());

    // The line editor on a terminal, plain lines otherwise.
    let front = FrontEnd::choose(&config.own, config.timestamps);
    let mut session = if config.reconnect {
        let redial = Redial {
            target: target.clone(),
            fallbacks: targets,
            own: config.own.clone(),
            cookie: config.cookie.clone(),
            policy: ReconnectPolicy::default(),
        };
        Session::start_reconnecting(connection, config.nick, front.output(), redial)
    } else {
        Session::start(connection, &target.name, config.nick, front.output())
    };
    session.set_backlog(config.backlog);
    // Lines from a pipe wait for room rather than being refused while disconnected.
    session.set_patient(!std::io::stdin().is_terminal());
    let mut lost = session.lost_signal();

    match session.join().await {
        Ok(JoinOutcome::Joined) => {}
        // The handler has printed the refusal.
        Ok(JoinOutcome::Refused(_)) => return Ok(FAILURE),
        Ok(JoinOutcome::NoAnswer) => {
            plain::print_line(&render::join_refused("no answer from the server"));
            return Ok(FAILURE);
        }
        // Lost before the answer: the session has said so and joins again once back.
        Ok(JoinOutcome::Disconnected) => {}
        Err(end) => {
            report_end(&server, &end);
            return Ok(FAILURE);
        }
    }

    /// How the REPL ended.
    enum End {
        Done(Result<(), SessionError>),
        Lost(SessionError),
        Interrupted,
    }
    let end = tokio::select! {
        biased;
        result = front.run(&mut session) => End::Done(result),
        why = lost.wait() => End::Lost(why),
        _ = tokio::signal::ctrl_c() => End::Interrupted,
        // The terminal went away (window closed, ssh dropped): leave the room cleanly,
        // as Ctrl-D does, instead of dying and leaving the room to notice the silence.
        _ = hangup.recv() => End::Interrupted,
    };
    let result = match end {
        End::Done(result) => result,
        End::Lost(end) => Err(end),
        End::Interrupted => {
            front.end_prompt();
            session.quit().await
        }
    };
    let mut code = match result {
        Ok(()) => 0,
        Err(end) => {
            report_end(&server, &end);
            FAILURE
        }
    };
    if let Some(line) = render::undelivered(&session.undelivered()) {
        plain::eprint_line(&line);
        code = FAILURE;
    }
    Ok(code)
}

/// Tells on standard error why the session ended against the user's will.
fn report_end(server: &str, end: &SessionError) {
    match end {
        SessionError::Lost(why) => plain::eprint_line(&render::connection_lost(server, why)),
        SessionError::Unreachable(why) => {
            plain::eprint_line(&render::connect_failed(server, why));
        }
    }
}
