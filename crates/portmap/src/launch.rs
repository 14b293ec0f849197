//! Making sure a port mapper runs on this host, starting one if needed.
//!
//! This mirrors what `erl` does with `epmd -daemon`: if nothing answers on the mapper
//! port, start the mapper as a detached background process that outlives us, then wait
//! until it answers. The process gets its own process group and no terminal streams, so
//! a Ctrl-C aimed at the chat server does not take the mapper (and with it every other
//! node's registration) down too.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};
use tracing::{debug, info};

use crate::PortmapError;

/// How long we wait for a freshly started mapper to answer.
const START_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause between connection attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between connection attempts.
const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// How long a single "is anyone there?" connection attempt may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Ensures a port mapper answers on `127.0.0.1:port`.
///
/// Returns `Ok(false)` if one already did, and `Ok(true)` if this call started
/// `program args...` and it now answers. The started process is detached: it is not
/// killed when the caller exits. A background thread reaps it if it ever exits, so it
/// never lingers as a zombie.
pub async fn ensure_running(
    port: u16,
    program: &Path,
    args: &[&str],
) -> Result<bool, PortmapError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    if answers(addr).await {
        debug!(%addr, "port mapper already running");
        return Ok(false);
    }

    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    let mut child = command.spawn().map_err(|source| PortmapError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let pid = child.id();
    info!(
        program = %program.display(),
        pid,
        port,
        "started a port mapper in the background (it outlives this process; stop it with kill {pid})"
    );

    // Reap the child whenever it exits, and tell the polling loop below if that happens
    // before it answers.
    let (exited_tx, mut exited_rx) = oneshot::channel::<ExitStatus>();
    std::thread::Builder::new()
        .name("portmap-reaper".into())
        .spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = exited_tx.send(status);
            }
        })
        .map_err(PortmapError::Io)?;

    let deadline = Instant::now() + START_TIMEOUT;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if answers(addr).await {
            // If our process already exited, someone else's mapper won a race for the
            // port; it answers, but we did not start it.
            return Ok(exited_rx.try_recv().is_err());
        }
        if let Ok(status) = exited_rx.try_recv() {
            return Err(PortmapError::MapperExited {
                program: program.to_owned(),
                status,
                port,
            });
        }
        if Instant::now() >= deadline {
            return Err(PortmapError::StartTimeout {
                program: program.to_owned(),
                port,
                secs: START_TIMEOUT.as_secs(),
            });
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Whether anything accepts TCP connections at `addr`.
async fn answers(addr: SocketAddr) -> bool {
    matches!(
        timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}
