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

/// The defaults in README's limits table are the binary's: the flood limit, send queue,
/// handshake timeout, tick, connection limit, text limit, history and resume window (the behaviour at each limit
/// is tested in hostile.rs, liveness.rs and chaos.rs with smaller values).
#[test]
fn the_limits_tables_defaults_are_the_servers() {
    let help = stdout_of(&bins::server_bin(), &["--help"]);
    let readme = std::fs::read_to_string(bins::workspace_root().join("README.md"))
        .expect("README.md is readable");
    for (flag, default, in_readme) in [
        ("--tick", "15", "4 ticks of 15 s"),
        ("--handshake-timeout", "5", "5 s from connect"),
        ("--max-clients", "10000", "10,000"),
        ("--max-text", "4096", "4096 bytes"),
        ("--send-queue", "1024", "1024 frames"),
        ("--send-queue-bytes", "4194304", "4 MiB per connection"),
        ("--history", "10000", "10,000 events"),
        ("--history-bytes", "16777216", "16 MiB"),
        ("--resume-window", "120", "for 120 s"),
        ("--rate", "10", "10 messages/s"),
        ("--burst", "20", "bursts of 20"),
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} missing from --help"));
        assert!(
            line.ends_with(&format!("[default: {default}]")),
            "{flag}: {line}"
        );
        assert!(readme.contains(in_readme), "README lacks {in_readme:?}");
    }
}

/// The SYNOPSIS of a man page, as plain text.
fn synopsis(page: &str) -> String {
    let start = page
        .find(".SH SYNOPSIS\n.nf\n")
        .expect("a SYNOPSIS section")
        + 17;
    let end = start + page[start..].find("\n.fi").expect("the synopsis ends");
    page[start..end].replace("\\-", "-")
}

#[test]
fn man_pages_say_values_commands_environment_and_files_and_agree_with_readme() {
    let readme = std::fs::read_to_string(bins::workspace_root().join("README.md"))
        .expect("README.md is readable");
    let server = stdout_of(&bins::server_bin(), &["--manpage"]);
    let client = stdout_of(&bins::client_bin(), &["--manpage"]);
    for (name, page, vars) in [
        (
            "chat-server",
            &server,
            &["CHAT_COOKIE", "ERL_EPMD_PORT", "RUST_LOG", "CHAT_CLUSTER"][..],
        ),
        (
            "chat-client",
            &client,
            &[
                "CHAT_COOKIE",
                "ERL_EPMD_PORT",
                "NO_COLOR",
                "USER, LOGNAME",
                "RUST_LOG",
            ][..],
        ),
    ] {
        // The synopsis gives every flag its value, with the README's names.
        let synopsis = synopsis(page);
        assert!(
            synopsis.contains("--cookie COOKIE") && synopsis.contains("--cookie-file PATH"),
            "{name}: {synopsis}"
        );
        assert!(
            readme.contains(&synopsis),
            "README.md lacks {name}'s synopsis:\n{synopsis}"
        );
        let environment = &page[page.find(".SH ENVIRONMENT").expect("ENVIRONMENT")..];
        for var in vars {
            assert!(environment.contains(var), "{name}: ENVIRONMENT lacks {var}");
        }
        assert!(page.contains(".SH FILES"), "{name}: no FILES");
        assert!(page.contains("~/.erlang.cookie"), "{name}: no cookie file");
        // No reference to a page nothing generates (clap's chat-server-port-mapper(1)).
        assert!(!page.contains("port\\-mapper(1)"), "{name}: {page}");
        // --help names the environment variables too.
        let program = if name == "chat-server" {
            bins::server_bin()
        } else {
            bins::client_bin()
        };
        let help = stdout_of(&program, &["--help"]);
        for var in vars {
            assert!(help.contains(var), "{name} --help lacks {var}");
        }
    }
    assert!(client.contains(".SH \"COMMANDS IN THE CHAT\""), "{client}");
    assert!(client.contains("/msg"), "the chat commands lack /msg");
    assert!(server.contains(".SH \"THE PORT MAPPER\""), "{server}");
}
