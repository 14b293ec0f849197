//! Finding (and first building) the `chat-server` and `chat-client` binaries.
//!
//! A test package cannot use another package's `CARGO_BIN_EXE_*`, so the first test of
//! each test process runs `cargo build --bins -p chat-server -p chat-client` for the
//! profile it was itself built with, and every test then uses the binaries from the same
//! target directory. That keeps a plain `cargo test --workspace` working. Set
//! `CHAT_BIN_DIR` to a directory holding both binaries to skip the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (where the workspace `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests package lives inside the workspace")
        .to_path_buf()
}

/// The directory holding `chat-server` and `chat-client`, built once per test process.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(build) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    }
}

/// Path of the `chat-server` binary.
pub fn server_bin() -> PathBuf {
    bin_dir().join("chat-server")
}

/// Path of the `chat-client` binary.
pub fn client_bin() -> PathBuf {
    bin_dir().join("chat-client")
}

fn build() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CHAT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // .../target/<profile>/deps/<test binary> -> .../target/<profile>
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();

    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("build")
        .arg("--bins")
        .arg("-p")
        .arg("chat-server")
        .arg("-p")
        .arg("chat-client")
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    // The binaries must land next to this test binary, whatever the environment says.
    if let Some(target_dir) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target_dir);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run cargo to build the binaries: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building chat-server and chat-client failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for bin in ["chat-server", "chat-client"] {
        let path = profile_dir.join(bin);
        if !path.is_file() {
            return Err(format!("cargo built, but {} is missing", path.display()));
        }
    }
    Ok(profile_dir)
}
