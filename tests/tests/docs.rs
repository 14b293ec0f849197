//! Shell completions and man pages are generated from the real flag definitions: check
//! that each binary prints them, that they name the flags users rely on, and that the
//! flags cannot be mixed with a normal run.

use std::process::Command;

use chat_tests::bins;

fn run(program: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
}

fn stdout_of(program: &std::path::Path, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("docs are UTF-8")
}

#[test]
fn completions_name_the_real_flags() {
    let server = stdout_of(&bins::server_bin(), &["--completions", "bash"]);
    for flag in [
        "--sname",
        "--cookie",
        "--tick",
        "--send-queue",
        "port-mapper",
    ] {
        assert!(server.contains(flag), "bash completion lacks {flag}");
    }
    let client = stdout_of(&bins::client_bin(), &["--completions", "zsh"]);
    assert!(client.starts_with("#compdef chat-client"), "{client:.80}");
    for flag in ["--server", "--nick", "--no-reconnect", "--timestamps"] {
        assert!(client.contains(flag), "zsh completion lacks {flag}");
    }
    let fish = stdout_of(&bins::client_bin(), &["--completions", "fish"]);
    assert!(fish.contains("complete -c chat-client"), "{fish:.80}");
}

#[test]
fn man_pages_are_roff_with_every_flag() {
    let server = stdout_of(&bins::server_bin(), &["--manpage"]);
    assert!(server.contains(".TH chat-server 1"), "{server:.200}");
    assert!(server.contains("handshake\\-timeout"));
    let client = stdout_of(&bins::client_bin(), &["--manpage"]);
    assert!(client.contains(".TH chat-client 1"), "{client:.200}");
    assert!(client.contains("no\\-reconnect"));
}

#[test]
fn doc_flags_do_not_mix_with_a_run() {
    let out = run(&bins::client_bin(), &["--manpage", "--nick", "ann"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used"));
    let out = run(&bins::server_bin(), &["--completions", "nosuchshell"]);
    assert!(!out.status.success());
}
