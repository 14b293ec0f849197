//! Interoperability with Erlang's own `epmd` (and, when available, a real Erlang node).
//!
//! Each test needs the `epmd` program. Without it the test prints
//! "skipped: epmd not installed" and passes, unless `CHAT_REQUIRE_EPMD` is set, in which
//! case it fails. Every process a test starts is killed when the test ends, however it
//! ends, and every test uses its own fresh port.

use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portmap::{PortmapError, lookup, lookup_registration, names, register, serve};
use protocol::epmd::NODE_TYPE_NORMAL;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout};

/// Generous bound for anything a test waits on.
const PATIENCE: Duration = Duration::from_secs(20);

/// Finds `program` in `PATH`.
fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The `epmd` program, or `None` (after saying so) when the test should be skipped.
fn epmd_or_skip() -> Option<PathBuf> {
    let found = find_on_path("epmd");
    if found.is_none() {
        assert!(
            std::env::var_os("CHAT_REQUIRE_EPMD").is_none(),
            "CHAT_REQUIRE_EPMD is set but epmd is not on PATH"
        );
        println!("skipped: epmd not installed");
    }
    found
}

/// A port nothing listens on right now: bind an ephemeral one and release it.
fn fresh_port() -> u16 {
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("local addr").port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A child process that is killed (and reaped) when the guard is dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops a detached `epmd` (started by `ensure_running`, so not our child) on drop.
struct EpmdKiller {
    epmd: PathBuf,
    port: u16,
}

impl Drop for EpmdKiller {
    fn drop(&mut self) {
        let _ = Command::new(&self.epmd)
            .arg("-kill")
            .env("ERL_EPMD_PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts a real `epmd` in the foreground on `port`; waits until it answers.
async fn start_real_epmd(epmd: &Path, port: u16) -> KillOnDrop {
    let child = Command::new(epmd)
        .args(["-port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start epmd");
    let guard = KillOnDrop(child);
    eventually("epmd answers", || async {
        names(loopback(port)).await.is_ok()
    })
    .await;
    guard
}

/// Runs `epmd -names` against the mapper on `port` and returns its output.
async fn epmd_names(epmd: &Path, port: u16) -> String {
    let output = timeout(
        PATIENCE,
        tokio::process::Command::new(epmd)
            .arg("-names")
            .env("ERL_EPMD_PORT", port.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("epmd -names finishes")
    .expect("run epmd -names");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `check` until it returns true, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Our daemon on an ephemeral loopback port; stops when the sender is dropped.
async fn start_our_daemon() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(serve(listener, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test]
async fn our_client_registers_with_real_epmd() {
    let Some(epmd) = epmd_or_skip() else { return };
    let port = fresh_port();
    let _epmd = start_real_epmd(&epmd, port).await;
    let mapper = loopback(port);

    let reg = register(mapper, "rust_chat", 12345)
        .await
        .expect("register with epmd");
    assert_ne!(reg.creation(), 0);

    let listing = epmd_names(&epmd, port).await;
    assert!(
        listing.contains("name rust_chat at port 12345"),
        "epmd -names said: {listing}"
    );
    assert_eq!(lookup(mapper, "rust_chat").await.expect("lookup"), 12345);
    assert_eq!(
        names(mapper).await.expect("names"),
        vec![("rust_chat".to_owned(), 12345)]
    );
    assert!(matches!(
        register(mapper, "rust_chat", 1).await,
        Err(PortmapError::NameTaken(_))
    ));
    assert!(matches!(
        lookup(mapper, "nobody").await,
        Err(PortmapError::NoSuchName(_))
    ));

    drop(reg);
    eventually("epmd forgets rust_chat", || async {
        matches!(
            lookup(mapper, "rust_chat").await,
            Err(PortmapError::NoSuchName(_))
        )
    })
    .await;
}

#[tokio::test]
async fn real_epmd_names_lists_our_daemon() {
    let Some(epmd) = epmd_or_skip() else { return };
    let (mapper, _stop) = start_our_daemon().await;

    let _reg = register(mapper, "rust_chat", 23456)
        .await
        .expect("register");
    let listing = epmd_names(&epmd, mapper.port()).await;
    assert!(
        listing.contains(&format!("up and running on port {}", mapper.port())),
        "epmd -names said: {listing}"
    );
    assert!(
        listing.contains("name rust_chat at port 23456"),
        "epmd -names said: {listing}"
    );
}

#[tokio::test]
async fn ensure_running_starts_a_detached_real_epmd() {
    let Some(epmd) = epmd_or_skip() else { return };
    let port = fresh_port();
    let port_arg = port.to_string();
    let _killer = EpmdKiller {
        epmd: epmd.clone(),
        port,
    };

    let started =
        portmap::ensure_running(port, &epmd, &["-port", &port_arg, "-relaxed_command_check"])
            .await
            .expect("epmd starts");
    assert!(started);
    assert!(names(loopback(port)).await.expect("names").is_empty());

    let again = portmap::ensure_running(port, &epmd, &["-port", &port_arg])
        .await
        .expect("second call");
    assert!(!again, "a running mapper is not started twice");
}

#[tokio::test]
async fn a_real_erlang_node_registers_with_our_daemon() {
    let Some(epmd) = epmd_or_skip() else { return };
    let Some(erl) = find_on_path("erl") else {
        println!("skipped: erl not installed");
        return;
    };
    let (mapper, _stop) = start_our_daemon().await;
    let name = format!("beam{}", fresh_port());

    // `erl` would start its own epmd if nothing answered; ours answers already.
    let child = Command::new(erl)
        .args([
            "-sname",
            &name,
            "-setcookie",
            "portmap_test",
            "-noshell",
            "-eval",
            "timer:sleep(infinity).",
        ])
        .env("ERL_EPMD_PORT", mapper.port().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start erl");
    let node = KillOnDrop(child);

    eventually("the Erlang node registers", || async {
        lookup(mapper, &name).await.is_ok()
    })
    .await;
    let reg = lookup_registration(mapper, &name).await.expect("lookup");
    assert_eq!(reg.node_type, NODE_TYPE_NORMAL);
    assert!(reg.highest_version >= reg.lowest_version);
    assert_ne!(reg.port, 0);

    let listing = epmd_names(&epmd, mapper.port()).await;
    assert!(
        listing.contains(&format!("name {name} at port {}", reg.port)),
        "epmd -names said: {listing}"
    );

    drop(node);
    eventually("the killed node vanishes", || async {
        matches!(
            lookup(mapper, &name).await,
            Err(PortmapError::NoSuchName(_))
        )
    })
    .await;
}
