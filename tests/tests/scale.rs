//! Scale: the real `chat-server` at the limits it advertises (10,000 connections).
//!
//! Four scenarios, each a crowd of raw members in this process
//! ([`chat_tests::crowd`]) against one server process:
//!
//! - a) every member dropped at once with a TCP reset, three rounds on one server (the
//!   reproduction of issue 8: the server used to overflow its stack here);
//! - b) half the members dropped at once while the other half keeps talking: every
//!   remaining member gets every message and every departure, in order;
//! - c) a mass join: more clients than the server admits connect at once; each is
//!   admitted or told `server is full`, none is left hanging;
//! - d) SIGTERM with a full room: every member is told, the server exits 0 in time.
//!
//! The short form runs in `cargo test` at a scale that still showed the stack overflow.
//! The long form is the advertised scale, with release binaries:
//!
//! ```sh
//! CHAOS_SCALE=long cargo test --release -p chat-tests --test scale -- --nocapture --test-threads 1
//! ```
//!
//! Each scenario prints its figures (join time, time to process the departures, server
//! RSS before, at its peak and after).

use std::time::{Duration, Instant};

use chat_tests::chaos::{
    self, AsyncRaw, Memory, memory, mib, raise_open_files_limit, runtime, scaled,
};
use chat_tests::crowd::Member;
use chat_tests::{COOKIE, Ctx, LONG, Server, Signal, WAIT};
use protocol::secure::RefuseReason;
use protocol::{LeaveReason, Reply};

/// The members of a full room: the short form, and the advertised limit.
fn crowd_size() -> usize {
    scaled(2_000, 10_000)
}

/// The flags of the reproduction: everything default but the connection and flood
/// limits, so that nothing but the scale is tested. The handshake timeout is raised too:
/// on a loaded test machine thousands of handshakes at once can take longer than the
/// 5 s default, and that timeout is the slowloris test's subject, not this one's. The
/// resume window is short, so that departed sessions are forgotten before memory is
/// compared.
const FLAGS: &[&str] = &[
    "--max-clients",
    "100000",
    "--rate",
    "1000000",
    "--burst",
    "1000000",
    "--handshake-timeout",
    "120",
    "--resume-window",
    "1",
];

/// Joins at once while filling a room.
const JOINS_IN_FLIGHT: usize = 100;

/// How long the whole of one step (a crowd joining, a crowd leaving) may take.
fn step_limit() -> Duration {
    scaled(Duration::from_secs(120), Duration::from_secs(300))
}

/// The scenarios take the whole machine: they run one at a time, even when the test
/// harness runs tests in parallel.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// This suite's report line: see [`chaos::report`].
fn report(scenario: &str, numbers: &[(&str, String)]) {
    chaos::report("scale", scenario, numbers);
}

/// Joins members `range` (nicks `<prefix><index>`), `in_flight` at a time.
async fn join_crowd(
    server: &Server,
    prefix: &str,
    range: std::ops::Range<usize>,
    in_flight: usize,
) -> Vec<Member> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight));
    let tasks: Vec<_> = range
        .map(|index| {
            let (port, name) = (server.port(), server.name().to_string());
            let nick = format!("{prefix}{index}");
            let prefix = prefix.to_string();
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.expect("the gate stays open");
                match AsyncRaw::open_joined(port, &name, COOKIE, &nick).await {
                    Ok(raw) => Ok(Member::spawn(raw, index, nick, &prefix)),
                    Err(e) => Err(format!("{nick} could not join: {e}")),
                }
            })
        })
        .collect();
    let mut members = Vec::with_capacity(tasks.len());
    let mut failures = Vec::new();
    for task in tasks {
        match task.await.expect("a join task panicked") {
            Ok(member) => members.push(member),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} members could not join, e.g. {:?}",
        failures.len(),
        failures.len() + members.len(),
        &failures[..failures.len().min(3)]
    );
    members
}

/// Waits until `watcher`'s user list counts `size` members; returns how long it took.
async fn wait_room_size(watcher: &Member, size: usize) -> Duration {
    let start = Instant::now();
    loop {
        // The answer waits behind everything sent to the watcher before it, which in a
        // mass departure is thousands of events.
        match watcher.room_size(step_limit()).await {
            Some(now) if now == size => return start.elapsed(),
            Some(_) if start.elapsed() < step_limit() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!(
                "the room did not reach {size} members within {:?} (last seen: {other:?})",
                step_limit()
            ),
        }
    }
}

/// Events that fill the history: a fixed-size cache that a busy server always has full.
const HISTORY: usize = 10_000;

/// Members of the warm-up crowd: a tenth of the rounds' crowds.
fn warm_up_size() -> usize {
    crowd_size() / 10
}

/// The server's memory once it has settled: RSS sampled until it has not fallen for a
/// second (the allocator is trimmed a moment after a crowd leaves), at most [`WAIT`].
fn settled_memory(pid: u32) -> Memory {
    let start = Instant::now();
    let mut lowest = memory(pid);
    let mut since_lower = Instant::now();
    while since_lower.elapsed() < Duration::from_secs(1) && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
        let now = memory(pid);
        if now.rss_kib < lowest.rss_kib {
            lowest = now;
            since_lower = Instant::now();
        }
    }
    lowest
}

/// Serves a crowd once (join, talk, reset) and fills the history, so that what is
/// resident for good once the server has served anybody (code pages, the runtime's
/// threads, a full history) is in the level memory is compared with.
async fn warm_up(server: &Server, watcher: &Member) {
    let members = join_crowd(server, "warm", 0..warm_up_size(), JOINS_IN_FLIGHT).await;
    for member in &members[..10] {
        member.say(format!("{} 1", member.nick));
    }
    for member in &members {
        assert!(
            member.barrier(step_limit()).await,
            "{} is gone or does not answer",
            member.nick
        );
        member.reset();
    }
    wait_room_size(watcher, 1).await;
    for member in members {
        member.finish().await;
    }
    for k in 0..HISTORY {
        watcher.say(format!("filling the history {k}"));
    }
    assert!(watcher.barrier(LONG).await, "the watcher is gone");
}

/// Starts a server with `args` and a watcher member that stays in the room throughout.
fn server_and_watcher(ctx: &Ctx, rt: &tokio::runtime::Runtime, args: &[&str]) -> (Server, Member) {
    let server = ctx.start_server("server@localhost", args);
    let watcher = rt.block_on(async {
        let raw = AsyncRaw::open_joined(server.port(), server.name(), COOKIE, "watcher")
            .await
            .expect("the watcher joins");
        Member::spawn(raw, usize::MAX, "watcher".into(), "m")
    });
    (server, watcher)
}

/// Waits (at most [`WAIT`]) for the server's RSS to come back within 20% of the level
/// before the first round; returns the level it settled at. The level before is taken
/// after a warm-up round ([`warm_up`]), so that the program's code pages that serving
/// a crowd brings into memory for good count on both sides.
fn assert_memory_returned(pid: u32, round: usize, before: Memory) -> Memory {
    let limit = before.rss_kib + before.rss_kib / 5;
    let start = Instant::now();
    loop {
        let now = memory(pid);
        if now.rss_kib <= limit {
            return now;
        }
        assert!(
            start.elapsed() < WAIT,
            "round {round}: server RSS {:.1} MiB (heap and stacks {:.1}), more than 20% above its {:.1} MiB ({:.1}) before the run",
            mib(now.rss_kib),
            mib(now.anon_kib),
            mib(before.rss_kib),
            mib(before.anon_kib)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------
// a) everyone dropped at once, three times

#[test]
fn a_the_whole_room_reset_at_once_three_times_and_the_server_stays_up() {
    let _turn = one_at_a_time();
    raise_open_files_limit();
    let n = crowd_size();
    let ctx = Ctx::new();
    let rt = runtime();
    let (mut server, watcher) = server_and_watcher(&ctx, &rt, FLAGS);
    let pid = server.proc.pid();
    rt.block_on(async {
        warm_up(&server, &watcher).await;
        let before = settled_memory(pid);
        for round in 1..=3 {
            let start = Instant::now();
            let prefix = format!("r{round}m");
            let members = join_crowd(&server, &prefix, 0..n, JOINS_IN_FLIGHT).await;
            wait_room_size(&watcher, n + 1).await;
            let joined_in = start.elapsed();
            let full = memory(pid);
            for member in &members {
                member.reset();
            }
            let left_in = wait_room_size(&watcher, 1).await;
            for member in members {
                member.finish().await;
            }
            let after = assert_memory_returned(pid, round, before);
            report(
                "a) reset all",
                &[
                    ("round", round.to_string()),
                    ("members", n.to_string()),
                    ("all joined in", format!("{joined_in:.2?}")),
                    ("departures processed in", format!("{left_in:.2?}")),
                    ("RSS before run", format!("{:.1} MiB", mib(before.rss_kib))),
                    ("RSS full", format!("{:.1} MiB", mib(full.rss_kib))),
                    ("RSS after", format!("{:.1} MiB", mib(after.rss_kib))),
                    ("peak", format!("{:.1} MiB", mib(after.peak_kib))),
                    (
                        "heap before/full/after",
                        format!(
                            "{:.1}/{:.1}/{:.1} MiB",
                            mib(before.anon_kib),
                            mib(full.anon_kib),
                            mib(after.anon_kib)
                        ),
                    ),
                ],
            );
        }
        let log = watcher.finish().await;
        assert_eq!(log.error, None, "the watcher");
        assert_eq!(log.out_of_order, 0, "events out of order");
        assert_eq!(
            log.departures,
            (3 * n + warm_up_size()) as u64,
            "each departure told once (the warm-up's and three rounds')"
        );
    });
    server.terminate();
}

// ---------------------------------------------------------------------------------------
// b) half dropped while the other half talks

#[test]
fn b_half_the_room_reset_while_the_rest_talks_and_nobody_misses_anything() {
    let _turn = one_at_a_time();
    raise_open_files_limit();
    let n = crowd_size();
    let talkers = scaled(20, 100);
    let says = scaled(10, 20);
    let ctx = Ctx::new();
    let rt = runtime();
    let (mut server, watcher) = server_and_watcher(&ctx, &rt, FLAGS);
    let pid = server.proc.pid();
    rt.block_on(async {
        let before = memory(pid);
        let mut members = join_crowd(&server, "m", 0..n, JOINS_IN_FLIGHT).await;
        wait_room_size(&watcher, n + 1).await;
        let staying = members.split_off(n / 2);
        for member in &members {
            member.reset();
        }
        for k in 1..=says {
            for talker in &staying[..talkers] {
                talker.say(format!("{} {k}", talker.nick));
            }
        }
        let left_in = wait_room_size(&watcher, n - n / 2 + 1).await;
        for member in members {
            member.finish().await;
        }
        // Every say has reached the registry before its speaker's barrier answer, and
        // every member's barrier answer comes after everything sent to it before.
        for talker in &staying[..talkers] {
            assert!(
                talker.barrier(step_limit()).await,
                "{} is gone or does not answer",
                talker.nick
            );
        }
        // Snapshots first: a member that stops closes its connection, which the others
        // would then see leave.
        let mut logs = Vec::with_capacity(staying.len());
        for member in &staying {
            assert!(
                member.barrier(step_limit()).await,
                "{} is gone or does not answer",
                member.nick
            );
            logs.push(member.snapshot(WAIT).await.expect("a member's log"));
        }
        for member in staying {
            member.finish().await;
        }
        let after = memory(pid);
        report(
            "b) reset half while talking",
            &[
                ("members", n.to_string()),
                ("talkers", talkers.to_string()),
                ("messages", (talkers * says).to_string()),
                ("departures processed in", format!("{left_in:.2?}")),
                ("RSS before", format!("{:.1} MiB", mib(before.rss_kib))),
                ("RSS after", format!("{:.1} MiB", mib(after.rss_kib))),
                ("peak", format!("{:.1} MiB", mib(after.peak_kib))),
            ],
        );
        for log in &logs {
            let who = format!("m{}", log.index);
            assert_eq!(log.error, None, "{who}: {:?}", log.error);
            assert_eq!(log.closing, None, "{who} was closed by the server");
            assert_eq!(log.out_of_order, 0, "{who} got events out of order");
            assert_eq!(
                log.messages_out_of_order, 0,
                "{who} got messages out of order"
            );
            assert_eq!(log.left.len(), n / 2, "{who} saw every departure once");
            assert!(
                (0..n / 2).all(|i| log.left.contains(i)),
                "{who}: departures"
            );
            for talker in 0..talkers {
                let talker = format!("m{}", n / 2 + talker);
                let got = log.messages.get(&talker).map_or(0, |(count, _)| *count);
                let expected = if talker == who { 0 } else { says as u64 };
                assert_eq!(got, expected, "{who}: messages from {talker}");
            }
        }
        watcher.finish().await;
    });
    server.terminate();
}

// ---------------------------------------------------------------------------------------
// c) a mass join

/// How a client that tried to join ended.
enum Admission {
    /// In the room; the connection is kept open until everybody has tried.
    Joined {
        _kept: Box<AsyncRaw>,
    },
    Full,
    Other(String),
}

async fn try_join(port: u16, name: &str, nick: &str) -> Admission {
    let mut raw = match AsyncRaw::connect(port).await {
        Ok(raw) => raw,
        Err(e) => return Admission::Other(format!("connect: {e}")),
    };
    let own = format!("{nick}@localhost");
    match raw.handshake(&own, name, COOKIE).await {
        Ok(()) => {}
        Err(e) if e == format!("refused: {}", RefuseReason::ServerFull) => return Admission::Full,
        Err(e) => return Admission::Other(e),
    }
    match raw.join(nick).await {
        Ok(Reply::Joined { .. }) => Admission::Joined {
            _kept: Box::new(raw),
        },
        Ok(other) => Admission::Other(format!("{other:?}")),
        Err(e) => Admission::Other(e),
    }
}

#[test]
fn c_a_mass_join_admits_up_to_the_limit_and_tells_the_rest_the_server_is_full() {
    let _turn = one_at_a_time();
    raise_open_files_limit();
    let limit = crowd_size();
    let extra = limit / 10;
    let ctx = Ctx::new();
    let limit_arg = limit.to_string();
    let mut server = ctx.start_server(
        "server@localhost",
        &[
            "--max-clients",
            &limit_arg,
            "--rate",
            "1000000",
            "--burst",
            "1000000",
            "--handshake-timeout",
            "120",
        ],
    );
    let pid = server.proc.pid();
    let rt = runtime();
    let before = memory(pid);
    let (port, name) = (server.port(), server.name().to_string());
    let start = Instant::now();
    let mut kept = Vec::new();
    let mut waves = Vec::new();
    let mut pending: Vec<usize> = (0..limit + extra).collect();
    // Everyone connects at once, as after a server restart; whoever is told the server
    // is full tries again a moment later, as chat-client does, until the room is full.
    while !pending.is_empty() {
        let outcomes = rt.block_on(async {
            let tasks: Vec<_> = pending
                .iter()
                .map(|&i| {
                    let name = name.clone();
                    tokio::spawn(async move {
                        let nick = format!("j{i}");
                        let joined =
                            tokio::time::timeout(step_limit(), try_join(port, &name, &nick));
                        let outcome = joined
                            .await
                            .unwrap_or_else(|_| Admission::Other("left hanging".into()));
                        (i, outcome)
                    })
                })
                .collect();
            let mut outcomes = Vec::new();
            for task in tasks {
                outcomes.push(task.await.expect("a join task panicked"));
            }
            outcomes
        });
        let mut full = Vec::new();
        let mut others = Vec::new();
        for (i, outcome) in outcomes {
            match outcome {
                Admission::Joined { _kept } => kept.push(_kept),
                Admission::Full => full.push(i),
                Admission::Other(why) => others.push(why),
            }
        }
        let mut why: std::collections::BTreeMap<&str, usize> = Default::default();
        for other in &others {
            *why.entry(other.as_str()).or_default() += 1;
        }
        if !others.is_empty() {
            // The server's own account of the connections it ended without a refusal.
            let unusual: Vec<String> = server
                .proc
                .lines(chat_tests::Stream::Stderr)
                .into_iter()
                .filter(|line| !line.contains(" joined ") && !line.contains(" connected "))
                .filter(|line| {
                    !line.contains("server full") && !line.contains("in their handshake")
                })
                .take(40)
                .collect();
            panic!(
                "wave {}: {} clients neither joined nor were told the server is full: {why:?}\n\
                 the server's other log lines:\n{}",
                waves.len() + 1,
                others.len(),
                unusual.join("\n")
            );
        }
        waves.push((pending.len(), kept.len(), full.len()));
        if kept.len() == limit {
            assert_eq!(
                full.len(),
                extra,
                "everyone past the limit is told it is full"
            );
            break;
        }
        assert!(
            start.elapsed() < step_limit(),
            "the room did not fill up within {:?}: {waves:?}",
            step_limit()
        );
        pending = full;
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let after = memory(pid);
    report(
        "c) mass join",
        &[
            ("clients", (limit + extra).to_string()),
            ("limit", limit.to_string()),
            (
                "waves (tried, in the room, told full)",
                format!("{waves:?}"),
            ),
            ("room full in", format!("{took:.2?}")),
            ("RSS before", format!("{:.1} MiB", mib(before.rss_kib))),
            ("RSS after", format!("{:.1} MiB", mib(after.rss_kib))),
        ],
    );
    assert_eq!(
        kept.len(),
        limit,
        "every client up to the limit is admitted"
    );
    rt.block_on(async move { drop(kept) });
    server.terminate();
}

// ---------------------------------------------------------------------------------------
// d) SIGTERM with a full room

#[test]
fn d_sigterm_with_a_full_room_tells_everyone_and_exits_zero_in_time() {
    let _turn = one_at_a_time();
    raise_open_files_limit();
    let n = crowd_size();
    let ctx = Ctx::new();
    let rt = runtime();
    let (mut server, watcher) = server_and_watcher(&ctx, &rt, FLAGS);
    let mut members = rt.block_on(async {
        let members = join_crowd(&server, "m", 0..n, JOINS_IN_FLIGHT).await;
        wait_room_size(&watcher, n + 1).await;
        members
    });
    members.push(watcher);
    let start = Instant::now();
    server.proc.signal(Signal::Term);
    let status = server.proc.wait_exit(LONG);
    let exited_in = start.elapsed();
    let told = rt.block_on(async {
        let mut told = 0;
        for member in &mut members {
            let log = member
                .ended(WAIT)
                .await
                .expect("the connection ends after a shutdown");
            if log.closing == Some(LeaveReason::ServerShutdown) {
                told += 1;
            }
        }
        told
    });
    report(
        "d) SIGTERM",
        &[
            ("members", (n + 1).to_string()),
            ("told", told.to_string()),
            ("exit after", format!("{exited_in:.2?}")),
            ("exit status", status.to_string()),
        ],
    );
    assert_eq!(
        told,
        n + 1,
        "every member is told the server is shutting down"
    );
    assert!(status.success(), "exit status {status}");
    // The documented flush time is 3 s; allow for process teardown on a loaded machine.
    assert!(
        exited_in < Duration::from_secs(5),
        "exit took {exited_in:?}"
    );
}
