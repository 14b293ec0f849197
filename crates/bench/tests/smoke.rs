//! Smoke test of `chat-bench`: a two-second fan-out against a real release `chat-server`
//! must finish with zero loss, no reordering and exit status 0.
//!
//! Timings are never asserted: this machine is shared and its numbers move. The release
//! binaries are built once through cargo (a no-op when they are up to date); set
//! `CHAT_BENCH_BIN_DIR` to a directory holding release `chat-server` and `chat-bench` to
//! skip that.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the smoke run may take before it is killed and the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/bench lives two levels below the workspace root")
        .to_path_buf()
}

/// The release directory of the target directory this test was built in.
fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // .../target/<profile>/deps/<test binary> -> .../target
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf();
    target.join("release")
}

/// Release `chat-server` and `chat-bench`, built through cargo unless given.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CHAT_BENCH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target_dir = release_dir()
        .parent()
        .expect("release dir has a parent")
        .to_path_buf();
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "chat-server",
            "-p",
            "chat-bench",
        ])
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build --release failed: {status}");
    release_dir()
}

#[test]
fn fanout_smoke_run_loses_nothing() {
    let dir = bin_dir();
    let bench = dir.join("chat-bench");
    assert!(
        dir.join("chat-server").is_file(),
        "no chat-server in {}",
        dir.display()
    );
    let mut child = Command::new(&bench)
        .args([
            "fanout",
            "--clients",
            "10",
            "--senders",
            "10",
            "--duration",
            "2",
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat-bench starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chat-bench did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out_reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    assert!(
        status.success(),
        "chat-bench failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("every stdout line is JSON"))
        .collect();
    assert_eq!(rows.len(), 1, "one row expected:\n{out}");
    let row = &rows[0];
    assert_eq!(row["workload"], "fanout");
    assert_eq!(row["target"], "server");
    assert_eq!(row["loss"], 0, "{row}");
    assert_eq!(row["reorders"], 0, "{row}");
    assert_eq!(row["other_errors"], 0, "{row}");
    assert_eq!(row["ok"], true, "{row}");
    assert!(
        row["extra"]["deliveries"].as_u64().unwrap_or(0) > 0,
        "{row}"
    );
}
