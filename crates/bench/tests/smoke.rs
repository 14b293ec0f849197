//! Smoke test of `chat-bench`: a one-second fan-out against a real `chat-server` (the
//! secure channel), an older build as a protocol version 1 baseline when
//! `CHAT_BASELINE_SERVER` names one, and the relay, all in one run, must finish with zero
//! loss, no reordering and exit status 0.
//!
//! Timings are never asserted: this machine is shared and its numbers move. The binaries
//! are those of this test build, never built from here (no `cargo build` inside `cargo
//! test`): `chat-bench` from cargo (`CARGO_BIN_EXE_chat-bench`), and `chat-server` from
//! `CHAT_SERVER_BIN`, else `CHAT_BIN_DIR` (as the workspace tests use it), else the same
//! target directory, where `cargo test --workspace` builds it (chat-server's own
//! integration tests need it). Alone, `cargo test -p chat-bench` needs `cargo build -p
//! chat-server` first, and says so.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the smoke run may take before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// A child process killed when dropped (a failed assertion must not leave it running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chat-bench"))
}

/// The `chat-server` of this build's target directory (see the module doc).
fn server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CHAT_SERVER_BIN") {
        return PathBuf::from(path);
    }
    if let Some(dir) = std::env::var_os("CHAT_BIN_DIR") {
        return Path::new(&dir).join("chat-server");
    }
    let bench = bench_bin();
    let profile_dir = bench.parent().expect("chat-bench lives in a directory");
    let server = profile_dir.join("chat-server");
    assert!(
        server.is_file(),
        "no chat-server at {}: run `cargo test --workspace`, or `cargo build -p chat-server` \
         (same profile) before `cargo test -p chat-bench`, or set CHAT_BIN_DIR",
        server.display()
    );
    server
}

/// Runs `command` to its end (killed after [`RUN_LIMIT`]), asserts it exited 0, and
/// returns its standard output.
fn run_to_success(mut command: Command) -> String {
    let mut child = Killed(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chat-bench starts"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let stderr = child.0.stderr.take().expect("piped stderr");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out_reader = read_all(Box::new(stdout));
    let err_reader = read_all(Box::new(stderr));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait works") {
            break status;
        }
        assert!(
            started.elapsed() < RUN_LIMIT,
            "chat-bench did not finish within {RUN_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    assert!(
        status.success(),
        "chat-bench failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

#[test]
fn fanout_against_server_baseline_and_relay_loses_nothing() {
    let server = server_bin();
    assert!(server.is_file(), "no chat-server at {}", server.display());
    let mut command = Command::new(bench_bin());
    command
        .args([
            "fanout",
            "--clients",
            "10",
            "--duration",
            "1",
            "--target",
            "all",
        ])
        .args(["--threads", "2", "--json"])
        .arg("--server-bin")
        .arg(&server);
    // A version 1 build (scripts/build-baseline.sh) drives the bench's self-contained
    // version 1 client end to end when CHAT_BASELINE_SERVER names one.
    let baseline = std::env::var_os("CHAT_BASELINE_SERVER").map(PathBuf::from);
    if let Some(baseline) = &baseline {
        command.arg("--baseline-server").arg(baseline);
    }
    let out = run_to_success(command);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect();
    let mut targets: Vec<&str> = rows.iter().filter_map(|r| r["target"].as_str()).collect();
    targets.sort_unstable();
    let mut expected = vec!["relay", "server"];
    if baseline.is_some() {
        expected.insert(0, "baseline");
    }
    assert_eq!(targets, expected, "{out}");
    for row in &rows {
        assert_eq!(row["workload"], "fanout");
        assert_eq!(row["loss"], 0, "{row}");
        assert_eq!(row["reorders"], 0, "{row}");
        assert_eq!(row["other_errors"], 0, "{row}");
        assert_eq!(row["ok"], true, "{row}");
        assert!(
            row["extra"]["deliveries"].as_u64().unwrap_or(0) > 0,
            "{row}"
        );
    }
    let server_row = rows.iter().find(|r| r["target"] == "server").unwrap();
    assert!(server_row["vs_relay"]["rate"].is_number(), "{server_row}");
}

/// Whether `redis-server` can be run here; without it the cluster smoke test is skipped,
/// unless `CHAT_REQUIRE_REDIS` is set (CI sets it), when it fails.
fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CHAT_REQUIRE_REDIS").is_none(),
            "redis-server is not installed and CHAT_REQUIRE_REDIS is set"
        );
        eprintln!("skipped {test}: redis-server is not installed");
    }
    found
}

#[test]
fn cluster_against_one_node_loses_nothing_and_reports_the_added_latency() {
    if !redis_available("cluster_against_one_node_loses_nothing_and_reports_the_added_latency") {
        return;
    }
    let server = server_bin();
    let mut command = Command::new(bench_bin());
    // A light load: what is checked is that every message arrives, not how fast.
    command
        .args([
            "--cluster",
            "--cluster-clients",
            "6",
            "--cluster-duration",
            "0.5",
        ])
        .args(["--cluster-load", "0.002", "--threads", "2", "--json"])
        .arg("--server-bin")
        .arg(&server);
    let out = run_to_success(command);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect();
    let runs: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["workload"].as_str().unwrap(),
                r["target"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        &runs[..4],
        [
            ("fanout", "server"),
            ("fanout", "cluster"),
            ("openloop", "server"),
            ("openloop", "cluster"),
        ],
        "{out}"
    );
    for row in &rows {
        assert_eq!(row["ok"], true, "{row}");
        assert_eq!(row["loss"], 0, "{row}");
        assert_eq!(row["reorders"], 0, "{row}");
    }
    let cluster_latency = &rows[3];
    assert!(
        cluster_latency["extra"]["added_p99_us"].is_number(),
        "{cluster_latency}"
    );
    assert!(
        rows[1]["extra"]["vs_one_node_rate"].is_number(),
        "{}",
        rows[1]
    );
}
