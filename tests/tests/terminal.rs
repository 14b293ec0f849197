//! chat-client in a real terminal (issue 3): the real binary in a pseudo-terminal, read
//! as a screen. Typing is never clobbered by incoming lines, Ctrl-C / Ctrl-D, history,
//! Tab completion, timestamps and colours.
//!
//! Each test has its own server and port mapper; the other users are piped clients from
//! the harness, whose stdout shows exactly what they received.

use std::time::{SystemTime, UNIX_EPOCH};

use chat_tests::nodes::ClientBuilder;
use chat_tests::pty::{Snapshot, sgr_sequences};
use chat_tests::{Client, Ctx, LONG, PtyClient, Server, Stream, keys};

/// A server, ann in a terminal, and bob (piped) who joined after her.
fn ann_and_bob() -> (Ctx, Server, PtyClient, Client) {
    ann_and_bob_with(|ann| ann)
}

/// As [`ann_and_bob`], with ann's client built further by `build` (flags, environment,
/// a shell around it).
fn ann_and_bob_with(
    build: impl for<'c> FnOnce(ClientBuilder<'c>) -> ClientBuilder<'c>,
) -> (Ctx, Server, PtyClient, Client) {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = build(ctx.client("ann").to(&server)).join_pty();
    let bob = ctx.join(&server, "bob");
    ann.expect_from_server("* bob has joined *");
    (ctx, server, ann, bob)
}

/// The index of the row that is exactly `text`, if there is one on the screen.
fn row_index(snap: &Snapshot, text: &str) -> Option<usize> {
    snap.rows.iter().position(|r| r.text == text)
}

#[test]
fn incoming_lines_are_printed_above_the_half_typed_line() {
    let (_ctx, server, mut ann, mut bob) = ann_and_bob();
    let s = server.name().to_string();

    ann.press("hello wor", "hello wor");

    bob.send("one");
    bob.send("two");
    bob.send("three");
    let prompt = ann.prompt().to_string();
    let says: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|t| format!("{s}> bob: {t}"))
        .collect();
    let want_input = format!("{prompt}hello wor");
    // The three lines, each a row of its own, in order, above the line being typed,
    // which is intact (cursor included), and the half line nowhere else on the screen.
    ann.pty.wait_for(
        "bob's three lines above the intact input line",
        LONG,
        |snap| {
            let rows: Option<Vec<usize>> = says.iter().map(|t| row_index(snap, t)).collect();
            let rows = rows?;
            let ordered = rows.windows(2).all(|w| w[0] < w[1]);
            let above = rows.iter().all(|&r| r < snap.cursor.0);
            let intact = snap.cursor_row() == want_input
                && usize::from(snap.cursor.1) == want_input.chars().count();
            let once = snap.count("hello wor") == 1;
            (ordered && above && intact && once).then_some(())
        },
    );

    ann.keys("ld, said ann");
    ann.keys(keys::ENTER);
    bob.expect_exact_say("ann", "hello", "hello world, said ann");
    ann.expect_input("");
}

#[test]
fn the_cursor_position_survives_incoming_lines() {
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob();

    ann.press("hello world", "hello world");
    // Five to the left: the cursor sits before "world".
    for _ in 0..5 {
        ann.keys(keys::LEFT);
    }
    ann.expect_input_at("hello world", 6);

    bob.send("interruption one");
    bob.send("interruption two");
    ann.expect_from_server("bob: interruption one");
    ann.expect_from_server("bob: interruption two");
    ann.expect_input_at("hello world", 6);

    // Typing goes where the cursor was.
    ann.press_at("big ", "hello big world", 10);
    ann.keys(keys::ENTER);
    bob.expect_exact_say("ann", "hello", "hello big world");
}

#[test]
fn long_lines_wrap_and_the_typed_line_survives_them() {
    let (_ctx, server, mut ann, mut bob) = ann_and_bob();
    let s = server.name().to_string();

    // Both longer than the 100-column terminal: the input takes two rows.
    let typed: String = (0..26).map(|i| format!("w{i:02} ")).collect();
    let incoming: String = (0..30).map(|i| format!("long{i:02} ")).collect();
    let incoming = incoming.trim_end().to_string();
    ann.press(&typed, &typed);

    bob.send(&incoming);
    ann.expect_exact_row(&format!("{s}> bob: {incoming}"));
    ann.expect_input(&typed);
    // Nothing of the input line was left behind above it.
    let snap = ann.snapshot();
    let start = snap.input_start();
    if let Some(row) = snap.rows[..start].iter().find(|r| r.text.contains("w25")) {
        let row = row.text.clone();
        ann.fail(&format!(
            "a piece of the input line was left on the screen: {row:?}"
        ));
    }

    ann.keys("end");
    ann.keys(keys::ENTER);
    bob.expect_exact_say("ann", "w00", &format!("{typed}end"));
}

#[test]
fn emacs_keys_edit_the_line() {
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob();

    // Ctrl-A, type at the start, Ctrl-E, type at the end.
    ann.press("middle", "middle");
    ann.press_at(keys::CTRL_A, "middle", 0);
    ann.press_at("start ", "start middle", 6);
    ann.keys(keys::CTRL_E);
    ann.press(" end", "start middle end");
    // Ctrl-W deletes the last word.
    ann.press(keys::CTRL_W, "start middle ");
    ann.keys("finish");
    ann.keys(keys::ENTER);
    bob.expect_exact_say("ann", "start", "start middle finish");

    // Ctrl-U throws the whole line away.
    ann.expect_input("");
    ann.press("throw this away", "throw this away");
    ann.press(keys::CTRL_U, "");
    ann.type_line("kept");
    bob.expect_exact_say("ann", "kept", "kept");
    bob.expect_not_received("throw this away");
}

#[test]
fn ctrl_d_on_an_empty_line_leaves_and_exits_zero() {
    let (_ctx, server, mut ann, mut bob) = ann_and_bob();
    ann.keys(keys::CTRL_D);
    ann.pty.expect_success(LONG);
    let line = bob.expect_left("ann");
    assert_eq!(line, format!("{}> * ann has left *", server.name()));
    bob.expect_not_received("ann has left * (");
}

#[test]
fn ctrl_c_clears_the_line_and_the_client_goes_on() {
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob();

    ann.press("secret draft", "secret draft");
    ann.press(keys::CTRL_C, "");
    ann.pty.expect_running();

    ann.type_line("after the interrupt");
    bob.expect_exact_say("ann", "after the interrupt", "after the interrupt");
    // Nothing of the cleared text was sent, before or with that line.
    bob.expect_not_received("secret");

    // And the client still talks both ways.
    bob.send("still there?");
    ann.expect_from_server("bob: still there?");
    ann.pty.expect_running();
}

#[test]
fn up_arrow_recalls_earlier_lines() {
    let (_ctx, server, mut ann, mut bob) = ann_and_bob();
    let s = server.name().to_string();

    ann.type_line("first line");
    bob.expect_exact_say("ann", "first line", "first line");
    ann.expect_input("");

    // Up: the line just sent, ready to send again.
    ann.press(keys::UP, "first line");
    ann.keys(keys::ENTER);
    bob.expect_exact_say("ann", "first line", "first line");
    ann.expect_input("");

    ann.type_line("second line");
    bob.expect_exact_say("ann", "second line", "second line");
    ann.expect_input("");

    // Up twice: the one before; Down: the newer one again, which Enter sends.
    ann.press(keys::UP, "second line");
    ann.press(keys::UP, "first line");
    ann.press(keys::DOWN, "second line");
    ann.keys(keys::ENTER);
    bob.expect_exact_say("ann", "second line", "second line");

    // bob got exactly that, in that order.
    bob.expect_not_received("ann: ");
    let prefix = format!("{s}> ann: ");
    let said: Vec<String> = bob
        .proc
        .lines(Stream::Stdout)
        .into_iter()
        .filter(|l| l.starts_with(&prefix))
        .collect();
    assert_eq!(
        said,
        ["first line", "first line", "second line", "second line"]
            .iter()
            .map(|t| format!("{prefix}{t}"))
            .collect::<Vec<_>>()
    );
}

#[test]
fn tab_completes_commands() {
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob();
    ann.press("/he", "/he");
    ann.press(keys::TAB, "/help ");
    ann.keys(keys::ENTER);
    // One row per command, each starting with the command.
    for command in ["/help", "/join", "/leave", "/users", "/pm", "/quit"] {
        ann.pty.wait_for(
            &format!("a /help row starting with {command}"),
            chat_tests::WAIT,
            |snap| {
                snap.rows[..snap.cursor.0.min(snap.rows.len())]
                    .iter()
                    .any(|r| r.text.trim_start().starts_with(command))
                    .then_some(())
            },
        );
    }
    ann.expect_input("");
    bob.expect_not_received("show this list");
}

#[test]
fn tab_completes_nicks_after_pm() {
    // Both join after ann: her list of nicks must follow the room.
    let (ctx, server, mut ann, mut bob) = ann_and_bob();
    let mut carol = ctx.join(&server, "carol");
    ann.expect_from_server("* carol has joined *");

    ann.press("/pm b", "/pm b");
    ann.press(keys::TAB, "/pm bob ");
    ann.keys("psst, a secret");
    ann.keys(keys::ENTER);
    let line = bob.expect_private("ann", "psst");
    assert_eq!(
        line,
        format!("{}> ann (private): psst, a secret", server.name())
    );
    carol.expect_not_received("psst");

    ann.expect_input("");
    ann.press("/pm ca", "/pm ca");
    ann.press(keys::TAB, "/pm carol ");
    ann.keys("hi carol");
    ann.keys(keys::ENTER);
    carol.expect_private("ann", "hi carol");
    bob.expect_not_received("hi carol");

    // Once carol has left, her nick is no longer offered: Tab changes nothing, so the
    // next key lands right after "ca" (keys are handled in order).
    ann.expect_input("");
    carol.send("/quit");
    ann.expect_from_server("* carol has left *");
    ann.press("/pm ca", "/pm ca");
    ann.keys(keys::TAB);
    ann.press("x", "/pm cax");
    ann.press(keys::CTRL_U, "");
}

/// `HH:MM` for the wall clock in a zone `offset_minutes` east of UTC, now.
fn clock(offset_minutes: i64) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let minutes =
        (i64::try_from(secs / 60).expect("minutes fit") + offset_minutes).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// True if `line` is `HH:MM ` followed by `rest`, HH:MM being one of `times`.
fn stamped(line: &str, rest: &str, times: &[String]) -> bool {
    let b = line.as_bytes();
    b.len() > 6
        && b[0].is_ascii_digit()
        && b[1].is_ascii_digit()
        && b[2] == b':'
        && b[3].is_ascii_digit()
        && b[4].is_ascii_digit()
        && b[5] == b' '
        && &line[6..] == rest
        && times.iter().any(|t| *t == line[..5])
}

/// A zone with no daylight saving time, 5 h 30 east of UTC, so that local time and UTC
/// differ (the name needs tzdata; the POSIX form does not).
fn india_tz() -> (&'static str, i64) {
    if std::path::Path::new("/usr/share/zoneinfo/Asia/Kolkata").exists() {
        ("Asia/Kolkata", 330)
    } else {
        ("IST-5:30", 330)
    }
}

#[test]
fn timestamps_prefix_incoming_lines_with_local_time_in_a_terminal_and_a_pipe() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let s = server.name().to_string();
    let (tz, offset) = india_tz();
    let mut ann = ctx
        .client("ann")
        .to(&server)
        .args(&["--timestamps"])
        .env("TZ", tz)
        .join_pty();
    let mut piped = ctx
        .client("pipe")
        .to(&server)
        .args(&["--timestamps"])
        .env("TZ", tz)
        .join();
    let mut bob = ctx.join(&server, "bob");

    let before = clock(offset);
    bob.send("hi with a time");
    let want = format!("{s}> bob: hi with a time");
    let row = ann.expect_row(&want);
    let line = piped.proc.expect_line(&want, chat_tests::WAIT);
    let after = clock(offset);
    let times = [before, after];
    if !stamped(&row, &want, &times) {
        ann.fail(&format!(
            "expected {want:?} after a local HH:MM among {times:?} (TZ={tz}), got {row:?}"
        ));
    }
    if !stamped(&line, &want, &times) {
        piped.proc.fail(&format!(
            "expected {want:?} after a local HH:MM among {times:?} (TZ={tz}), got {line:?}"
        ));
    }
    // The input line has no timestamp.
    ann.expect_input("");
    // A line of the user's own is stamped once entered, as what arrives is.
    let before = clock(offset);
    ann.type_line("my own line");
    bob.expect_say("ann", "my own line");
    ann.expect_input("");
    let own = format!("{}my own line", ann.prompt());
    // Waits for the stamped copy, not the editor's own (which comes first).
    let row = ann.expect_line_where(&format!("HH:MM {own}"), chat_tests::WAIT, |line| {
        line.len() == own.len() + 6 && line.ends_with(&own) && line.as_bytes()[2] == b':'
    });
    let times = [before, clock(offset)];
    if !stamped(&row, &own, &times) {
        ann.fail(&format!(
            "expected {own:?} after a local HH:MM among {times:?} (TZ={tz}), got {row:?}"
        ));
    }
}

#[test]
fn no_timestamps_without_the_flag() {
    let (_ctx, server, mut ann, mut bob) = ann_and_bob();
    bob.send("plain");
    // Exactly the line, nothing before it.
    ann.expect_exact_row(&format!("{}> bob: plain", server.name()));
}

/// What ann sees of the four kinds of lines: a room message, a private message, a
/// presence line and a server line. Returns their rows (by index) once all are there.
fn four_kinds(colour: bool) -> (Ctx, Server, PtyClient, [usize; 4], Vec<u8>) {
    let (ctx, server, mut ann, mut bob) = ann_and_bob_with(|ann| {
        if colour {
            ann.env_remove("NO_COLOR")
        } else {
            ann
        }
    });
    let s = server.name().to_string();
    bob.send("a room message");
    ann.expect_from_server("bob: a room message");
    bob.send("/pm ann a private message");
    ann.expect_from_server("bob (private): a private message");
    ann.type_line("/pm nobody hello");
    ann.expect_from_server("server: no user named nobody in the room; message not sent");
    ann.expect_input("");

    let want = [
        format!("{s}> bob: a room message"),
        format!("{s}> bob (private): a private message"),
        format!("{s}> * bob has joined *"),
        format!("{s}> server: no user named nobody in the room; message not sent"),
    ];
    let snap = ann.snapshot();
    let mut rows = [0; 4];
    for (i, text) in want.iter().enumerate() {
        match row_index(&snap, text) {
            Some(r) => rows[i] = r,
            None => ann.fail(&format!("no row is exactly {text:?}")),
        }
    }
    let raw = ann.pty.raw_output();
    (ctx, server, ann, rows, raw)
}

#[test]
fn colours_tell_the_kinds_of_lines_apart_on_a_terminal() {
    let (_ctx, _server, mut ann, rows, raw) = four_kinds(true);
    let snap = ann.snapshot();
    let names = ["room message", "private message", "presence", "server line"];
    // Told apart by colour: no two kinds drawn alike (one of them may be plain).
    for i in 0..4 {
        for j in i + 1..4 {
            if snap.rows[rows[i]].style_set() == snap.rows[rows[j]].style_set() {
                ann.fail(&format!(
                    "the {} and the {} look the same: {:?}",
                    names[i],
                    names[j],
                    snap.rows[rows[i]].style_set()
                ));
            }
        }
    }
    assert!(
        !sgr_sequences(&raw).is_empty(),
        "no SGR escape in the output"
    );
}

#[test]
fn no_colours_with_no_color() {
    let (_ctx, _server, mut ann, _rows, raw) = four_kinds(false);
    let snap = ann.snapshot();
    if let Some(row) = snap.rows.iter().find(|r| r.is_styled()) {
        let text = row.text.clone();
        ann.fail(&format!("with NO_COLOR=1 the row {text:?} is styled"));
    }
    let styling: Vec<String> = sgr_sequences(&raw)
        .into_iter()
        .filter(|p| p.split(';').any(|n| !n.is_empty() && n != "0"))
        .collect();
    if !styling.is_empty() {
        ann.fail(&format!(
            "with NO_COLOR=1 the output has SGR escapes {styling:?}"
        ));
    }
}

#[test]
fn no_colours_from_a_pipe_even_on_a_terminal() {
    // `cat | chat-client`: pipe mode (no prompt, every line in order), whose output is
    // never coloured, even when it goes to a terminal.
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx
        .client("ann")
        .to(&server)
        .env_remove("NO_COLOR")
        .stdin_piped()
        .spawn_pty();
    ann.expect_banner();
    let mut bob = ctx.join(&server, "bob");
    ann.expect_from_server("* bob has joined *");
    bob.send("/pm ann a private message");
    ann.expect_from_server("bob (private): a private message");
    let raw = ann.pty.raw_output();
    assert!(
        sgr_sequences(&raw).is_empty(),
        "escape sequences in pipe mode: {:?}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn no_colours_in_a_pipe_even_without_no_color() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &[]);
    let mut ann = ctx.client("ann").to(&server).env_remove("NO_COLOR").join();
    let mut bob = ctx.join(&server, "bob");
    ann.expect_joined("bob");
    bob.send("a room message");
    ann.expect_say("bob", "a room message");
    bob.send("/pm ann a private message");
    ann.expect_private("bob", "a private message");
    assert_eq!(ann.users(), ["ann", "bob"]);
    ann.send("/nonsense");
    ann.expect("Unknown command /nonsense");
    let escaped = ann.proc.lines_containing(Stream::Any, "\x1b");
    assert!(
        escaped.is_empty(),
        "escape sequences in a pipe: {escaped:?}"
    );
}

/// The rows on screen that contain `needle`.
fn rows_containing(snap: &Snapshot, needle: &str) -> usize {
    snap.rows.iter().filter(|r| r.text.contains(needle)).count()
}

#[test]
fn ctrl_z_then_fg_redraws_the_half_typed_line_and_echoes_the_next_once() {
    // Started from an interactive shell, as a user does: Ctrl-Z stops it, `fg` goes on.
    // Reconnecting, as by default: the old client lost its terminal only then.
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob_with(|ann| ann.reconnect().in_shell());
    ann.press("hello wor", "hello wor");
    ann.keys(keys::CTRL_Z);
    ann.expect_row("Stopped");
    // As a person does: wait for the shell's prompt, type `fg`, wait for the shell to
    // name the job it continues.
    ann.pty
        .wait_for("the shell's prompt", chat_tests::WAIT, |snap| {
            (snap.cursor_row().trim_end() == "$").then_some(())
        });
    ann.keys("fg\r");
    ann.expect_row("chat-client");
    // The prompt and the half-typed line are back, and the editor has the keys again.
    ann.expect_input("hello wor");
    ann.press("ld", "hello world");
    ann.keys(keys::ENTER);
    bob.expect_say("ann", "hello world");
    ann.expect_input("");
    ann.type_line("next");
    bob.expect_say("ann", "next");
    ann.expect_row("> next");
    ann.expect_input("");
    let snap = ann.snapshot();
    for line in ["hello world", "next"] {
        assert_eq!(
            rows_containing(&snap, line),
            1,
            "{line:?} is not on screen exactly once:\n{}",
            snap.dump()
        );
    }
}

/// A closed terminal window: the terminal is hung up (every read and write of it fails
/// from then on) and the client gets SIGHUP. It leaves the room as Ctrl-D does and exits
/// 0. (It used to die of a panic as soon as it logged anything once the terminal was
/// gone: the logging library reported the failed write with `eprintln!`, which panics;
/// the debug log makes that certain, since restoring the terminal's mode fails and is
/// logged on every such exit.)
#[test]
fn closing_the_terminal_leaves_the_room_cleanly() {
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob_with(|ann| ann.env("RUST_LOG", "debug"));
    ann.keys("half a line");
    ann.pty.hang_up();
    // A clean leave: no reason after it.
    let line = bob.expect_left("ann");
    assert!(line.ends_with("* ann has left *"), "{line:?}");
    ann.pty.expect_success(LONG);
}

#[test]
fn after_a_resize_no_stale_copy_of_the_typed_line_stays() {
    let (_ctx, _server, mut ann, mut bob) = ann_and_bob();
    ann.press("a draft that is being typed", "a draft that is being typed");
    ann.pty.resize(60, 20);
    bob.send("after the resize");
    ann.expect_from_server("bob: after the resize");
    ann.expect_input("a draft that is being typed");
    let snap = ann.snapshot();
    assert_eq!(
        rows_containing(&snap, "a draft that is being typed"),
        1,
        "a stale copy of the typed line stays:\n{}",
        snap.dump()
    );
}
