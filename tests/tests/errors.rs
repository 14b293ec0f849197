//! What a user sees when something is wrong (issue 10): one style for both binaries, a
//! sentence on one line of standard error (`Could not ...: why`), never anyhow's `Error:
//! ... Caused by:` block nor a backtrace, even with `RUST_BACKTRACE=1`; the operating
//! system's reason once; a bad flag or node name is a usage error (exit status 2) on both
//! binaries; and failures to connect say what to do next.

use chat_tests::{Ctx, LONG, Proc, Stream, bins};

/// How lines of anyhow's report, a backtrace or the old `chat-client: cannot ...` style
/// begin; none of ours does.
const NOT_OURS: [&str; 5] = [
    "Error: ",
    "Caused by",
    "Stack backtrace",
    "   0: ",
    "chat-client: ",
];

/// Fails if any line of `proc`'s standard error looks like anyhow's report or a
/// backtrace, or if more than one line says what failed (`Could not ...`).
#[track_caller]
fn expect_one_sentence(proc: &mut Proc) -> String {
    let lines = proc.lines(Stream::Stderr);
    if let Some(line) = lines
        .iter()
        .find(|l| NOT_OURS.iter().any(|bad| l.starts_with(bad)))
    {
        proc.fail(&format!("not our error style: {line:?}"));
    }
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("Could not"))
        .collect();
    match failures.as_slice() {
        [line] => (*line).clone(),
        _ => proc.fail(&format!("expected one `Could not` line, got {failures:?}")),
    }
}

#[test]
fn a_second_server_says_why_in_one_line_without_a_backtrace() {
    let ctx = Ctx::new();
    let _first = ctx.start_server("server@localhost", &[]);
    let mut second = ctx
        .server("server@localhost")
        .env("RUST_BACKTRACE", "1")
        .spawn();
    assert_eq!(second.expect_failure(LONG), 1);
    let line = expect_one_sentence(&mut second);
    assert!(
        line.starts_with("Could not start chat-server: the name server is already registered"),
        "{line}"
    );
}

#[test]
fn a_missing_cookie_file_is_told_once_by_both_binaries() {
    let ctx = Ctx::new();
    let missing = ctx.home().join("no-such-cookie");
    let missing = missing.to_str().expect("a UTF-8 path");
    let mut server = ctx
        .server("server@localhost")
        .no_cookie()
        .args(&["--cookie-file", missing])
        .env("RUST_BACKTRACE", "1")
        .spawn();
    let mut client = ctx
        .client("ann")
        .server_arg("server@localhost", "server@localhost")
        .no_cookie()
        .args(&["--cookie-file", missing])
        .env("RUST_BACKTRACE", "1")
        .spawn();
    for (proc, program) in [
        (&mut server, "chat-server"),
        (&mut client.proc, "chat-client"),
    ] {
        assert_eq!(proc.expect_failure(LONG), 1);
        let line = expect_one_sentence(proc);
        let want = format!("Could not start {program}: cannot read cookie file {missing}: ");
        assert!(line.starts_with(&want), "{line}");
        assert_eq!(line.matches("(os error 2)").count(), 1, "{line}");
    }
}

/// Runs `program` with `args` in `ctx` and returns its exit code and standard error.
fn run(ctx: &Ctx, program: std::path::PathBuf, args: &[&str]) -> (Option<i32>, String) {
    let out = ctx
        .command(program)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("the program runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_node_name_is_a_usage_error_on_both_binaries() {
    let ctx = Ctx::new();
    for (program, args) in [
        (bins::server_bin(), &["--name", "nohost"][..]),
        (bins::server_bin(), &["--sname", "a@b.example"][..]),
        (bins::server_bin(), &["--name", "bad name@localhost"][..]),
        (
            bins::client_bin(),
            &["--name", "nohost", "--nick", "ann"][..],
        ),
        (
            bins::client_bin(),
            &["--server", "no host", "--nick", "ann"][..],
        ),
        (
            bins::client_bin(),
            &["--server", "server@localhost:http", "--nick", "ann"][..],
        ),
    ] {
        let (code, stderr) = run(&ctx, program.clone(), args);
        assert_eq!(code, Some(2), "{} {args:?}: {stderr}", program.display());
        assert!(
            stderr.starts_with("error: invalid value"),
            "{} {args:?}: {stderr}",
            program.display()
        );
        assert!(!stderr.contains("backtrace"), "{stderr}");
    }
}

#[test]
fn no_nick_and_impossible_values_are_usage_errors() {
    let ctx = Ctx::new();
    let out = ctx
        .command(bins::client_bin())
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .expect("the client runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: no --nick given and $USER is not set"),
        "{stderr}"
    );
    let (code, stderr) = run(&ctx, bins::server_bin(), &["--tick", "0"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: --tick must be a positive number of seconds"),
        "{stderr}"
    );
}
