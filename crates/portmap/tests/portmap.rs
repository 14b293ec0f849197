//! The port mapper daemon and client against each other over real loopback sockets.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use portmap::{PortmapError, lookup, lookup_registration, names, register, serve};
use protocol::epmd::{self, NodeRegistration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Generous bound for anything a test waits on.
const PATIENCE: Duration = Duration::from_secs(10);

/// A daemon running in the test's runtime; shut down (or aborted) on drop.
struct Daemon {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), PortmapError>>,
}

impl Daemon {
    async fn start() -> Daemon {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));
        Daemon {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Asks the daemon to stop and waits until it has.
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = timeout(PATIENCE, &mut self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task did not panic");
        result.expect("daemon returned an error");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns true, failing the test after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An address where nothing listens: bind an ephemeral port, then free it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("local addr")
}

/// Sends raw bytes to the daemon and returns what it answers before closing.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The daemon may close before reading everything; a failed write is fine here.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let _ = timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("daemon closes the connection");
    answer
}

#[tokio::test]
async fn register_lookup_list_and_unregister() {
    let daemon = Daemon::start().await;
    let mapper = daemon.addr;

    let alpha = register(mapper, "alpha", 1111)
        .await
        .expect("register alpha");
    let beta = register(mapper, "beta", 2222).await.expect("register beta");
    assert_ne!(alpha.creation(), 0);
    assert_eq!(alpha.name(), "alpha");
    assert_eq!(beta.port(), 2222);

    assert_eq!(lookup(mapper, "alpha").await.expect("lookup alpha"), 1111);
    assert_eq!(lookup(mapper, "beta").await.expect("lookup beta"), 2222);

    let full = lookup_registration(mapper, "alpha").await.expect("full");
    assert_eq!(full, NodeRegistration::normal("alpha", 1111));

    let mut listed = names(mapper).await.expect("names");
    listed.sort();
    assert_eq!(
        listed,
        vec![("alpha".to_owned(), 1111), ("beta".to_owned(), 2222)]
    );

    match register(mapper, "alpha", 3333).await {
        Err(PortmapError::NameTaken(name)) => assert_eq!(name, "alpha"),
        other => panic!("expected NameTaken, got {other:?}"),
    }
    // The refused attempt did not disturb the original registration.
    assert_eq!(lookup(mapper, "alpha").await.expect("lookup alpha"), 1111);

    drop(alpha);
    eventually("alpha is unregistered", || async {
        matches!(
            lookup(mapper, "alpha").await,
            Err(PortmapError::NoSuchName(_))
        )
    })
    .await;
    assert_eq!(lookup(mapper, "beta").await.expect("beta survives"), 2222);
    assert_eq!(
        names(mapper).await.expect("names"),
        vec![("beta".to_owned(), 2222)]
    );

    // The freed name can be taken again.
    let again = register(mapper, "alpha", 4444).await.expect("re-register");
    assert_eq!(lookup(mapper, "alpha").await.expect("lookup"), 4444);
    drop(again);
    drop(beta);
    daemon.shutdown().await;
}

#[tokio::test]
async fn unknown_names_and_missing_mappers_are_told_apart() {
    let daemon = Daemon::start().await;

    match lookup(daemon.addr, "nobody").await {
        Err(PortmapError::NoSuchName(name)) => assert_eq!(name, "nobody"),
        other => panic!("expected NoSuchName, got {other:?}"),
    }
    assert!(names(daemon.addr).await.expect("names").is_empty());

    let nowhere = closed_port().await;
    match lookup(nowhere, "anybody").await {
        Err(PortmapError::Unreachable(_)) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(matches!(
        register(nowhere, "x", 1).await,
        Err(PortmapError::Unreachable(_))
    ));
    assert!(matches!(
        names(nowhere).await,
        Err(PortmapError::Unreachable(_))
    ));
    daemon.shutdown().await;
}

#[tokio::test]
async fn garbage_and_oversized_requests_are_closed_harmlessly() {
    let daemon = Daemon::start().await;
    let mapper = daemon.addr;
    let _reg = register(mapper, "steady", 5555).await.expect("register");

    // An HTTP request: its first two bytes read as a length of 18245.
    assert!(
        raw_exchange(mapper, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .is_empty()
    );
    // A declared length far beyond the limit, with no body.
    assert!(raw_exchange(mapper, &[0xff, 0xff]).await.is_empty());
    // An empty request.
    assert!(raw_exchange(mapper, &[0, 0]).await.is_empty());
    // An unsupported request code (KILL_REQ): we never let anyone kill the mapper.
    assert!(raw_exchange(mapper, &[0, 1, 107]).await.is_empty());
    // A truncated ALIVE2_REQ body.
    assert!(raw_exchange(mapper, &[0, 3, 120, 0, 1]).await.is_empty());
    // A length prefix promising more than is ever sent: the connection is closed once
    // we hang up (the daemon's read timeout covers clients that never hang up).
    let mut half = TcpStream::connect(mapper).await.expect("connect");
    half.write_all(&[0, 10, 122, b's']).await.expect("write");
    half.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let _ = timeout(PATIENCE, half.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(rest.is_empty());

    assert_eq!(lookup(mapper, "steady").await.expect("lookup"), 5555);
    assert_eq!(
        names(mapper).await.expect("names"),
        vec![("steady".to_owned(), 5555)]
    );
    daemon.shutdown().await;
}

#[tokio::test]
async fn erlang_style_registrations_are_stored_and_returned_in_full() {
    let daemon = Daemon::start().await;
    let mapper = daemon.addr;

    // A hidden node with extra bytes and an old version range: it gets ALIVE2_RESP
    // with a small creation, and a lookup returns every field it registered.
    let node = NodeRegistration {
        port: 40_000,
        node_type: epmd::NODE_TYPE_HIDDEN,
        protocol: epmd::PROTOCOL_TCP,
        highest_version: 5,
        lowest_version: 5,
        name: "hidden_node".to_owned(),
        extra: b"\x01extra".to_vec(),
    };
    let mut stream = TcpStream::connect(mapper).await.expect("connect");
    stream
        .write_all(&epmd::encode_alive2_req(&node).expect("encode"))
        .await
        .expect("write");
    let mut answer = [0u8; 4];
    timeout(PATIENCE, stream.read_exact(&mut answer))
        .await
        .expect("answer in time")
        .expect("read answer");
    let parsed = epmd::parse_alive2_response(&answer).expect("parse");
    assert!(!parsed.extended);
    assert_eq!(parsed.result, epmd::RESULT_OK);
    assert!((1..=3).contains(&parsed.creation));

    let found = lookup_registration(mapper, "hidden_node")
        .await
        .expect("lookup");
    assert_eq!(found, node);

    // A not-found answer is exactly the two bytes epmd sends.
    let missing = raw_exchange(
        mapper,
        &epmd::encode_port_please2_req("absent").expect("encode"),
    )
    .await;
    assert_eq!(missing, [epmd::PORT2_RESP, epmd::RESULT_ERROR]);

    // NAMES carries the mapper's own port first, like epmd.
    let listing = raw_exchange(mapper, &epmd::encode_names_req()).await;
    let parsed = epmd::parse_names_response(&listing).expect("parse names");
    assert_eq!(parsed.epmd_port, u32::from(mapper.port()));
    assert_eq!(parsed.nodes, vec![("hidden_node".to_owned(), 40_000)]);

    // Closing the raw connection unregisters, as for any node.
    drop(stream);
    eventually("hidden_node is unregistered", || async {
        matches!(
            lookup(mapper, "hidden_node").await,
            Err(PortmapError::NoSuchName(_))
        )
    })
    .await;
    daemon.shutdown().await;
}

#[tokio::test]
async fn registrations_notice_when_the_mapper_stops() {
    let daemon = Daemon::start().await;
    let mut reg = register(daemon.addr, "watcher", 6666)
        .await
        .expect("register");
    daemon.shutdown().await;
    timeout(PATIENCE, reg.closed())
        .await
        .expect("closed() resolves once the mapper is gone");
}

#[tokio::test]
async fn ensure_running_leaves_a_running_mapper_alone() {
    let daemon = Daemon::start().await;
    // The program does not exist: if ensure_running tried to start it, it would fail.
    let started = portmap::ensure_running(
        daemon.addr.port(),
        Path::new("/nonexistent/port-mapper"),
        &[],
    )
    .await
    .expect("a running mapper is detected");
    assert!(!started);
    daemon.shutdown().await;
}

#[tokio::test]
async fn ensure_running_reports_programs_that_fail() {
    let port = closed_port().await.port();
    match portmap::ensure_running(port, Path::new("/nonexistent/port-mapper"), &[]).await {
        Err(PortmapError::Spawn { .. }) => {}
        other => panic!("expected Spawn error, got {other:?}"),
    }
    // A program that exits at once without ever listening.
    match portmap::ensure_running(port, Path::new("/bin/sh"), &["-c", "exit 3"]).await {
        Err(PortmapError::MapperExited { status, .. }) => assert_eq!(status.code(), Some(3)),
        other => panic!("expected MapperExited, got {other:?}"),
    }
}
