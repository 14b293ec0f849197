//! The chaos suite: the real `chat-server` under floods, slowloris, garbage, a slow
//! consumer, churn and a shutdown with many clients, each scenario printing its numbers
//! (connections tried, bytes sent, messages checked, server RSS from `/proc`).
//!
//! The short form runs with `cargo test --workspace` (the whole file in well under a
//! minute). The long form is the same tests scaled up:
//!
//! ```sh
//! CHAOS_SCALE=long cargo test -p chat-tests --test chaos -- --nocapture --test-threads 1
//! ```
//!
//! | Scenario | short | long |
//! |---|---|---|
//! | a) flood | 2,000 says, 20 bystander messages | 10,000 says, 60 bystander messages |
//! | b) slowloris | 200 connections | 1,000 connections |
//! | c) garbage | 50 rounds of every attack | 500 rounds |
//! | d) slow consumer | default queue limits (1024 frames, 4 MiB) | the same, 3 sloths |
//! | e) churn (a third of the sessions cut once and resumed) | 50 clients for 10 s | 200 clients for 60 s |
//! | f) SIGTERM | 100 clients | 500 clients |
//! | g) SIGTERM, a reader that never reads | 3 MB queued | the same |
//!
//! Many connections run as async raw protocol clients in one tokio runtime
//! ([`chat_tests::chaos::AsyncRaw`]) rather than as hundreds of processes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_tests::chaos::{
    self, AsyncRaw, Memory, Rng, memory, mib, raise_open_files_limit, runtime, scaled,
};
use chat_tests::{BIG_TEXTS_NO_FLOOD_LIMIT, COOKIE, Ctx, LONG, RawClient, Server, Signal, WAIT};
use protocol::{ClientMessage, Event, EventKind, LeaveReason, Reply, ServerMessage, SessionTicket};

/// This suite's report line: see [`chaos::report`].
fn report(scenario: &str, numbers: &[(&str, String)]) {
    chaos::report("chaos", scenario, numbers);
}

fn rss_line(before: Memory, after: Memory) -> String {
    format!(
        "{:.1} MiB -> {:.1} MiB (peak {:.1} MiB)",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(after.peak_kib)
    )
}

/// Waits for an event matching `pred` on `raw`, skipping others.
async fn expect_event(raw: &mut AsyncRaw, what: &str, pred: impl Fn(&EventKind) -> bool) -> Event {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.recv(left).await {
            Ok(Some(ServerMessage::Event(ev))) if pred(&ev.kind) => return ev,
            Ok(Some(_)) => {}
            Ok(None) => panic!("closed while waiting for {what}"),
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

/// Opens a session on the server at `port` and joins as `nick`; panics with the reason if
/// it cannot.
async fn joined(port: u16, server: &str, nick: &str) -> AsyncRaw {
    AsyncRaw::open_joined(port, server, COOKIE, nick)
        .await
        .unwrap_or_else(|e| panic!("{nick}: {e}"))
}

/// Matches `nick`'s arrival in the room.
fn joined_as(nick: &str) -> impl Fn(&EventKind) -> bool + '_ {
    move |k| matches!(k, EventKind::Joined { nick: n } if n == nick)
}

/// Reads `raw` until the server closes it; returns the reason of its `Closing`, if it
/// sent one, and the `SlowDown` replies before. Fails if anything follows `Closing` (a
/// second one included) or if `who` hears nothing for `timeout` while still connected.
async fn read_to_the_close(
    raw: &mut AsyncRaw,
    who: &str,
    timeout: Duration,
) -> (Option<LeaveReason>, u64) {
    let mut closing = None;
    let mut slow_downs = 0;
    loop {
        match raw.recv(timeout).await {
            Ok(Some(msg)) if closing.is_some() => panic!("{who}: {msg:?} after Closing"),
            Ok(Some(ServerMessage::Closing { reason })) => closing = Some(reason),
            Ok(Some(ServerMessage::Reply(Reply::SlowDown))) => slow_downs += 1,
            Ok(Some(_)) => {}
            Ok(None) => return (closing, slow_downs),
            Err(e) => panic!("{who} still connected: {e}"),
        }
    }
}

fn left_with<'a>(nick: &'a str, why: LeaveReason) -> impl Fn(&EventKind) -> bool + 'a {
    move |k| matches!(k, EventKind::Left { nick: n, reason } if n == nick && *reason == why)
}

// ---------------------------------------------------------------------------------------
// a) flood

#[test]
fn a_flood_is_throttled_then_dropped_while_a_bystander_pair_keeps_talking() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &["--rate", "5", "--burst", "5"]);
    let port = server.port();
    let name = server.name().to_string();
    let says: u64 = scaled(2_000, 10_000);
    let pair_messages: u64 = scaled(20, 60);
    let before = memory(server.proc.pid());

    let rt = runtime();
    let (sent, bytes, slow_downs, closing, pair_checked) = rt.block_on(async {
        let mut ann = joined(port, &name, "ann").await;
        let mut bob = joined(port, &name, "bob").await;
        let mut flooder = joined(port, &name, "flooder").await;
        expect_event(&mut bob, "flooder joined", joined_as("flooder")).await;

        // The bystander pair: ann says numbered messages at 4 per second (under the
        // limit of 5) while the flood runs; bob must get them all, in order.
        let pair = tokio::spawn(async move {
            let talk = async {
                for i in 0..pair_messages {
                    ann.send(&ClientMessage::Say {
                        id: 0,
                        text: format!("pair {i:04}"),
                    })
                    .await
                    .expect("ann says");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            let listen = async {
                let mut next = 0;
                let mut flooder_left = None;
                let deadline = Instant::now() + LONG + Duration::from_secs(pair_messages / 4);
                while next < pair_messages || flooder_left.is_none() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match bob.recv(left).await {
                        Ok(Some(ServerMessage::Event(ev))) => match ev.kind {
                            EventKind::Message { from, text } if from == "ann" => {
                                assert_eq!(text, format!("pair {next:04}"), "bob: out of order");
                                next += 1;
                            }
                            EventKind::Left { nick, reason } if nick == "flooder" => {
                                flooder_left = Some(reason);
                            }
                            _ => {}
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => panic!("bob was disconnected"),
                        Err(e) => panic!("bob got {next}/{pair_messages}: {e}"),
                    }
                }
                assert_eq!(
                    flooder_left,
                    Some(LeaveReason::Flooding),
                    "bob saw the flooder leave for the wrong reason"
                );
                next
            };
            let ((), got) = tokio::join!(talk, listen);
            got
        });

        // The flood: as fast as the socket takes it, until the server closes it.
        let mut sent = 0u64;
        for i in 0..says {
            let msg = ClientMessage::Say {
                id: 0,
                text: format!("flood {i:06}"),
            };
            if flooder.send(&msg).await.is_err() {
                break;
            }
            sent += 1;
        }
        let bytes = flooder.bytes_sent;
        let (closing, slow_downs) = read_to_the_close(&mut flooder, "flooder", WAIT).await;
        let checked = pair.await.expect("bystander pair");
        (sent, bytes, slow_downs, closing, checked)
    });
    let after = memory(server.proc.pid());
    report(
        "a) flood",
        &[
            ("connections", "3".into()),
            ("says sent", sent.to_string()),
            ("bytes sent", bytes.to_string()),
            ("SlowDown replies", slow_downs.to_string()),
            ("bystander messages checked", pair_checked.to_string()),
            ("server RSS", rss_line(before, after)),
        ],
    );
    assert!(slow_downs > 0, "the flooder was never told to slow down");
    assert!(
        slow_downs <= 5,
        "{slow_downs} SlowDown replies: --burst 5 refusals in a row should disconnect"
    );
    assert_eq!(closing, Some(LeaveReason::Flooding), "Closing reason");
    assert_eq!(pair_checked, pair_messages);
}

// ---------------------------------------------------------------------------------------
// b) slowloris

/// Where the slowloris connects from.
const LORIS_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

#[test]
fn b_slowloris_connections_are_all_closed_after_the_handshake_timeout_while_others_chat() {
    let limit = raise_open_files_limit();
    let wanted: u64 = scaled(200, 1_000);
    // Keep well inside the limit: the test process and the server each hold one
    // descriptor per connection, plus the other tests running in parallel.
    let count = wanted.min(limit.saturating_sub(200) / 2).max(10);
    let ctx = Ctx::new();
    let server = ctx.start_server(
        "server@localhost",
        &["--handshake-timeout", "1", "--max-clients", "20000"],
    );
    let port = server.port();
    let before = memory(server.proc.pid());
    let rt = runtime();
    let started = Instant::now();
    // Three kinds of stall: nothing at all, the preamble only, half a frame.
    let mut lorises = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..count {
            // From another loopback address than the real clients below: the
            // per-address cap of handshakes keeps one host from locking others out.
            let mut raw = AsyncRaw::connect_from(LORIS_ADDR, port)
                .await
                .expect("slowloris connect");
            // Past the per-address share of the handshake pool the server closes at
            // once, so a write may find the connection gone.
            match i % 3 {
                0 => {}
                1 => drop(raw.write_bytes(&protocol::PREAMBLE).await),
                _ => {
                    drop(raw.write_bytes(&protocol::PREAMBLE).await);
                    drop(raw.write_bytes(&[0, 0, 0, 40, 1, 2]).await);
                }
            }
            v.push(raw);
        }
        v
    });
    let opened_in = started.elapsed();

    // Meanwhile real clients join and chat.
    let mut ann = ctx.join(&server, "ann");
    let mut bob = ctx.join(&server, "bob");
    ann.send("hello through the slowloris");
    bob.expect_say("ann", "hello through the slowloris");
    bob.send("and back");
    ann.expect_say("bob", "and back");

    // Every stalled connection reads EOF, all of them within the timeout and a margin.
    let closed_after = rt.block_on(async {
        let tasks: Vec<_> = lorises
            .drain(..)
            .map(|mut raw| {
                tokio::spawn(
                    async move { raw.until_closed(LONG).await.map(|()| started.elapsed()) },
                )
            })
            .collect();
        let mut latest = Duration::ZERO;
        for t in tasks {
            let at = t
                .await
                .unwrap()
                .expect("a slowloris connection stayed open");
            latest = latest.max(at);
        }
        latest
    });
    let after = memory(server.proc.pid());
    report(
        "b) slowloris",
        &[
            ("connections", count.to_string()),
            ("open-files limit", limit.to_string()),
            ("opened in", format!("{opened_in:?}")),
            ("last closed after", format!("{closed_after:?}")),
            ("server RSS", rss_line(before, after)),
        ],
    );
    assert!(
        closed_after < opened_in + Duration::from_secs(10),
        "the last stalled connection was closed {closed_after:?} after the first opened"
    );
    // The real clients were not affected.
    ann.send("still here");
    bob.expect_say("ann", "still here");
}

// ---------------------------------------------------------------------------------------
// c) garbage

/// What the server did with one hostile input.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered with this reply and kept the connection.
    Reply(Reply),
    /// Sent `Closing` with this reason, then closed.
    Closing(LeaveReason),
    /// Closed without a word.
    Closed,
}

/// `raw` is closed with `Closing{ProtocolError}` for `what`, and `watcher` sees `nick`
/// leave for that reason.
async fn expect_protocol_error(raw: &mut AsyncRaw, watcher: &mut AsyncRaw, nick: &str, what: &str) {
    assert_eq!(
        outcome(raw).await,
        Outcome::Closing(LeaveReason::ProtocolError),
        "{what}"
    );
    expect_event(
        watcher,
        &format!("{nick} left after {what}"),
        left_with(nick, LeaveReason::ProtocolError),
    )
    .await;
}

/// Reads what the server does next on `raw`: a reply, or a close (with or without a
/// `Closing` first).
async fn outcome(raw: &mut AsyncRaw) -> Outcome {
    loop {
        match raw.recv(WAIT).await {
            Ok(Some(ServerMessage::Reply(r))) => return Outcome::Reply(r),
            Ok(Some(ServerMessage::Closing { reason })) => {
                raw.until_closed(WAIT).await.expect("open after Closing");
                return Outcome::Closing(reason);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Outcome::Closed,
            Err(e) => panic!("no answer to a hostile input: {e}"),
        }
    }
}

/// A Say frame whose text is `len` bytes of invalid UTF-8.
fn say_with_invalid_utf8(len: usize) -> Vec<u8> {
    let text = "a".repeat(len);
    let frame = protocol::codec::encode_frame(&ClientMessage::Say { id: 0, text }).unwrap();
    let mut bytes = frame.to_vec();
    let n = bytes.len();
    for b in &mut bytes[n - len..] {
        *b = 0xff;
    }
    bytes
}

/// A whole Say frame with a `len`-byte text, encoded by hand (the codec refuses to
/// encode more than a frame holds).
fn oversized_say(len: u32) -> Vec<u8> {
    // bincode: variant 2 (Say), then the length as a varint (0xfc: u32 follows).
    let mut payload = vec![2u8, 0xfc];
    payload.extend_from_slice(&len.to_le_bytes());
    payload.resize(payload.len() + len as usize, b'b');
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// Sends `msg` on `raw` and reads what the server does with it.
async fn answer(raw: &mut AsyncRaw, msg: &ClientMessage) -> Outcome {
    raw.send(msg).await.unwrap();
    outcome(raw).await
}

/// What the attack rounds of scenario c) share: the server, the watcher who sees every
/// attacker leave, and the totals the scenario reports.
struct Attacks {
    port: u16,
    name: String,
    watcher: AsyncRaw,
    connections: u64,
    bytes: u64,
    /// Answers checked.
    checked: u64,
    /// The outcomes that may be one of two, as they came.
    seen: BTreeSet<String>,
}

impl Attacks {
    /// A new attacker's connection, joined as `nick`.
    async fn joined(&self, nick: &str) -> AsyncRaw {
        joined(self.port, &self.name, nick).await
    }

    /// The end of an attack: counts its connection and what it wrote.
    fn done(&mut self, raw: AsyncRaw) {
        self.bytes += raw.bytes_sent;
        self.connections += 1;
    }

    /// Waits until the watcher sees `nick` leave, for whatever reason, and returns why.
    async fn left(&mut self, nick: &str) -> LeaveReason {
        let ev = expect_event(
            &mut self.watcher,
            &format!("{nick} left"),
            |k| matches!(k, EventKind::Left { nick: n, .. } if n == nick),
        )
        .await;
        let EventKind::Left { reason, .. } = ev.kind else {
            unreachable!("the predicate matched a Left")
        };
        reason
    }

    /// Attack 1: garbage instead of the preamble: closed.
    async fn garbage_preamble(&mut self) {
        let mut raw = AsyncRaw::connect(self.port).await.unwrap();
        raw.write_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        raw.until_closed(WAIT).await.expect("garbage preamble");
        self.done(raw);
    }

    /// Attack 2: a 4 GiB length prefix after joining: closed as a protocol error, and
    /// the room is told.
    async fn huge_length_prefix(&mut self, round: u64) {
        let nick = format!("huge{round}");
        let mut raw = self.joined(&nick).await;
        raw.write_sealed(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
            .await
            .unwrap();
        expect_protocol_error(&mut raw, &mut self.watcher, &nick, "4 GiB length prefix").await;
        self.done(raw);
    }

    /// Attack 3: a truncated frame, then EOF: the connection is gone, the nick freed.
    async fn truncated_frame(&mut self, round: u64) {
        let nick = format!("trunc{round}");
        let mut raw = self.joined(&nick).await;
        let frame = protocol::codec::encode_frame(&ClientMessage::Say {
            id: 0,
            text: "cut short".into(),
        })
        .unwrap();
        raw.write_sealed(&frame[..frame.len() - 3]).await.unwrap();
        raw.shutdown_write().await.unwrap();
        raw.until_closed(WAIT).await.expect("truncated frame");
        let reason = self.left(&nick).await;
        assert!(
            matches!(
                reason,
                LeaveReason::ConnectionLost | LeaveReason::ProtocolError
            ),
            "truncated frame: {nick} left: {reason:?}"
        );
        self.seen
            .insert(format!("truncated frame: room told {reason:?}"));
        self.done(raw);
    }

    /// Attack 4: over-long and forbidden nicks, then bad texts, then invalid UTF-8 inside
    /// a Say, all on one connection.
    async fn bad_nicks_and_texts(&mut self, round: u64) {
        let nick = format!("bad{round}");
        let mut raw = AsyncRaw::open(self.port, &format!("{nick}@localhost"), &self.name, COOKIE)
            .await
            .unwrap();
        for bad in [
            "n".repeat(33),
            "é".repeat(17),
            "x".repeat(60_000),
            "with space".into(),
            "SeRvEr".into(),
        ] {
            let join = ClientMessage::Join {
                nick: bad.clone(),
                backlog: 0,
            };
            let out = answer(&mut raw, &join).await;
            assert!(
                matches!(
                    out,
                    Outcome::Reply(Reply::InvalidNick { .. } | Reply::NickNotAllowed)
                ),
                "nick of {} bytes: {out:?}",
                bad.len()
            );
            self.checked += 1;
        }
        assert!(matches!(raw.join(&nick).await, Ok(Reply::Joined { .. })));
        for (text, what) in [
            ("t".repeat(4097), "4097-byte text"),
            ("bell\u{7}".into(), "control character"),
        ] {
            let out = answer(&mut raw, &ClientMessage::Say { id: 0, text }).await;
            assert!(
                matches!(out, Outcome::Reply(Reply::InvalidText { .. })),
                "{what}: {out:?}"
            );
            self.checked += 1;
        }
        raw.write_sealed(&say_with_invalid_utf8(100)).await.unwrap();
        expect_protocol_error(&mut raw, &mut self.watcher, &nick, "invalid UTF-8 in a Say").await;
        self.done(raw);
    }

    /// Attack 5: a text too long for a frame (over 64 KiB): closed before allocation.
    async fn oversized_frame(&mut self, round: u64) {
        let nick = format!("big{round}");
        let mut raw = self.joined(&nick).await;
        let _ = raw.write_sealed(&oversized_say(70_000)).await;
        let out = outcome(&mut raw).await;
        assert!(
            matches!(
                out,
                Outcome::Closing(LeaveReason::ProtocolError) | Outcome::Closed
            ),
            "70 KB frame: {out:?}"
        );
        self.seen.insert(format!("70 KB frame: {out:?}"));
        self.left(&nick).await;
        self.done(raw);
    }

    /// No hostile text ever reached the watcher, who is alone in the room again.
    async fn room_is_clean(&mut self) {
        self.watcher.send(&ClientMessage::ListUsers).await.unwrap();
        loop {
            match self.watcher.recv(WAIT).await.unwrap() {
                Some(ServerMessage::Reply(Reply::Users { users, .. })) => {
                    assert_eq!(users, vec!["watcher".to_string()]);
                    break;
                }
                Some(ServerMessage::Event(Event {
                    kind: EventKind::Message { from, text },
                    ..
                })) => panic!("a hostile say reached the room: {from}: {:.40}", text),
                Some(_) => {}
                None => panic!("watcher closed"),
            }
        }
    }
}

#[test]
fn c_garbage_and_oversized_inputs_each_get_their_answer_and_memory_stays_flat() {
    let ctx = Ctx::new();
    let server = ctx.start_server(
        "server@localhost",
        &["--rate", "100000", "--burst", "100000"],
    );
    let port = server.port();
    let name = server.name().to_string();
    let pid = server.proc.pid();
    let rounds: u64 = scaled(50, 500);
    let rt = runtime();
    let (before, attacks) = rt.block_on(async {
        let mut attacks = Attacks {
            port,
            watcher: joined(port, &name, "watcher").await,
            name,
            connections: 0,
            bytes: 0,
            checked: 0,
            seen: BTreeSet::new(),
        };
        // One warm-up round so that the allocator has its working set before measuring.
        let mut before = None;
        for round in 0..=rounds {
            if round == 1 {
                before = Some(memory(pid));
            }
            attacks.garbage_preamble().await;
            attacks.huge_length_prefix(round).await;
            attacks.truncated_frame(round).await;
            attacks.bad_nicks_and_texts(round).await;
            attacks.oversized_frame(round).await;
            // One answer checked per attack.
            attacks.checked += 5;
        }
        attacks.room_is_clean().await;
        (before.unwrap(), attacks)
    });
    let after = memory(pid);
    report(
        "c) garbage",
        &[
            ("rounds", rounds.to_string()),
            ("connections", attacks.connections.to_string()),
            ("bytes sent", attacks.bytes.to_string()),
            ("answers checked", attacks.checked.to_string()),
            ("variable outcomes", format!("{:?}", attacks.seen)),
            ("server RSS", rss_line(before, after)),
        ],
    );
    let growth = after.rss_kib.saturating_sub(before.rss_kib);
    assert!(
        growth <= 8 * 1024,
        "server RSS grew by {:.1} MiB under garbage",
        mib(growth)
    );
}

// ---------------------------------------------------------------------------------------
// d) slow consumer

/// The documented bound on what a slow consumer may cost the server: the send queue
/// (4 MiB by default) plus as much again in the write in progress, plus the kernel's
/// buffers and the allocator's slack; 24 MiB over the RSS before, per sloth.
const SLOW_CONSUMER_RSS_BOUND_KIB: u64 = 24 * 1024;

#[test]
fn d_a_slow_consumer_is_dropped_with_bounded_memory_and_nobody_else_is_delayed() {
    let ctx = Ctx::new();
    let server = ctx.start_server("server@localhost", &BIG_TEXTS_NO_FLOOD_LIMIT);
    let port = server.port();
    let name = server.name().to_string();
    let pid = server.proc.pid();
    let sloth_count: usize = scaled(1, 3);
    let before = memory(pid);

    // The sloths join with a small receive buffer and never read again.
    let mut sloths: Vec<RawClient> = (0..sloth_count)
        .map(|i| RawClient::joined_sloth(&format!("sloth{i}"), port, &name, COOKIE))
        .collect();

    let rt = runtime();
    let (sent, bytes, bystander_checked, worst_latency, peak) = rt.block_on(async {
        let mut talker = joined(port, &name, "talker").await;
        let mut ann = joined(port, &name, "ann").await;
        let mut bob = joined(port, &name, "bob").await;
        expect_event(&mut ann, "bob joined", joined_as("bob")).await;
        let padding = "x".repeat(16_000);
        let mut sent = 0u64;
        let mut checked = 0u64;
        let mut worst = Duration::ZERO;
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        let mut peak = 0u64;
        // Batches of 8 big messages; ann and bob read each batch whole (so they are
        // never slow), and bob pings ann once per batch to measure her latency.
        while dropped.len() < sloth_count {
            assert!(
                sent < 20_000,
                "the sloths were never dropped after {sent} messages"
            );
            let first = sent;
            for _ in 0..8 {
                talker
                    .send(&ClientMessage::Say {
                        id: 0,
                        text: format!("msg {sent:06} {padding}"),
                    })
                    .await
                    .unwrap();
                sent += 1;
            }
            let t0 = Instant::now();
            bob.send(&ClientMessage::Say {
                id: 0,
                text: format!("bob {first}"),
            })
            .await
            .unwrap();
            let mut next_ann = first;
            let mut bob_seen = false;
            while next_ann < sent || !bob_seen {
                match ann.recv(WAIT).await {
                    Ok(Some(ServerMessage::Event(ev))) => match ev.kind {
                        EventKind::Message { from, text } if from == "talker" => {
                            assert!(text.starts_with(&format!("msg {next_ann:06} ")));
                            next_ann += 1;
                            checked += 1;
                        }
                        EventKind::Message { from, text } if from == "bob" => {
                            assert_eq!(text, format!("bob {first}"));
                            worst = worst.max(t0.elapsed());
                            bob_seen = true;
                            checked += 1;
                        }
                        EventKind::Left { nick, reason } => {
                            assert!(nick.starts_with("sloth"), "{nick} left: {reason:?}");
                            assert_eq!(reason, LeaveReason::SendQueueExceeded);
                            dropped.insert(nick);
                        }
                        _ => {}
                    },
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("ann was disconnected"),
                    Err(e) => panic!("ann: {e} ({next_ann}/{sent})"),
                }
            }
            let mut next_bob = first;
            while next_bob < sent {
                match bob.recv(WAIT).await {
                    Ok(Some(ServerMessage::Event(Event {
                        kind: EventKind::Message { from, text },
                        ..
                    }))) if from == "talker" => {
                        assert!(text.starts_with(&format!("msg {next_bob:06} ")));
                        next_bob += 1;
                        checked += 1;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("bob was disconnected"),
                    Err(e) => panic!("bob: {e}"),
                }
            }
            peak = peak.max(memory(pid).rss_kib);
        }
        (sent, talker.bytes_sent, checked, worst, peak)
    });
    // The sloths' connections are closed (they read EOF once their buffers drain).
    for s in &mut sloths {
        s.expect_closed(LONG);
    }
    let after = memory(pid);
    report(
        "d) slow consumer",
        &[
            ("sloths", sloth_count.to_string()),
            ("messages sent", sent.to_string()),
            ("bytes sent", bytes.to_string()),
            ("bystander messages checked", bystander_checked.to_string()),
            ("worst bystander latency", format!("{worst_latency:?}")),
            ("peak RSS sampled", format!("{:.1} MiB", mib(peak))),
            ("server RSS", rss_line(before, after)),
        ],
    );
    let bound = before.rss_kib + SLOW_CONSUMER_RSS_BOUND_KIB * sloth_count as u64;
    assert!(
        after.peak_kib <= bound,
        "server peak RSS {:.1} MiB over the bound {:.1} MiB",
        mib(after.peak_kib),
        mib(bound)
    );
    assert!(
        worst_latency < Duration::from_secs(5),
        "a bystander waited {worst_latency:?}"
    );
}

// ---------------------------------------------------------------------------------------
// e) churn

/// One session of a churning client, as it saw it (across the connections it resumed
/// on).
#[derive(Default)]
struct Session {
    nick: String,
    /// Room events received, in order: (room seq, what happened).
    received: Vec<(u64, String)>,
    /// The room's number at the join: every later event not about itself is due.
    joined_at: u64,
    /// Messages this session said, with ids 1..=said (none refused: no SlowDown).
    said: u64,
    /// Says not yet acknowledged: sent again, with their ids, after a resume.
    unacked: VecDeque<(u64, String)>,
    /// Connections cut under it and resumed.
    resumed: u64,
    /// Still connected at the end of the churn.
    survivor: bool,
    /// The room seq of the END marker, for survivors.
    end_seq: Option<u64>,
}

impl Session {
    /// The last room event received (0 for none).
    fn last_seq(&self) -> u64 {
        self.received.last().map_or(self.joined_at, |r| r.0)
    }
}

struct ChurnTotals {
    sessions: AtomicU64,
    abrupt: AtomicU64,
    resumed: AtomicU64,
    bytes: AtomicU64,
}

/// Parses `"<nick> <seq>"`.
fn parse_churn(text: &str) -> Option<(String, u64)> {
    let (nick, seq) = text.split_once(' ')?;
    Some((nick.to_string(), seq.parse().ok()?))
}

/// Joins as `nick` on a new connection; returns it with the session's ticket, epoch and
/// the room's number at the join.
async fn churn_join(port: u16, server: &str, nick: &str) -> (AsyncRaw, SessionTicket, u64, u64) {
    let own = format!("{nick}@localhost");
    let mut raw = AsyncRaw::open(port, &own, server, COOKIE)
        .await
        .unwrap_or_else(|e| panic!("{nick}: {e}"));
    match raw.join(nick).await {
        Ok(Reply::Joined {
            ticket, epoch, seq, ..
        }) => (raw, ticket, epoch, seq),
        other => panic!("{nick}: join answered {other:?}"),
    }
}

/// Cuts `raw` (a TCP reset, as a dead link looks), waits `pause`, and resumes the
/// session on a new connection, sending again what was not acknowledged.
async fn churn_resume(
    raw: &mut AsyncRaw,
    s: &mut Session,
    (port, server): (u16, &str),
    (ticket, epoch): (SessionTicket, u64),
    pause: Duration,
) {
    let own = format!("{}@localhost", s.nick);
    let fresh = AsyncRaw::open(port, &own, server, COOKIE)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", s.nick));
    std::mem::replace(raw, fresh).reset();
    tokio::time::sleep(pause).await;
    let resume = ClientMessage::Resume {
        ticket,
        epoch,
        last_seq: s.last_seq(),
    };
    raw.send(&resume)
        .await
        .unwrap_or_else(|e| panic!("{}: cannot resume: {e}", s.nick));
    match raw.expect_reply().await {
        Ok(Reply::Resumed { lost: 0, .. }) => {}
        other => panic!("{}: resume answered {other:?}", s.nick),
    }
    s.resumed += 1;
    for (id, text) in s.unacked.clone() {
        raw.send(&ClientMessage::Say { id, text })
            .await
            .unwrap_or_else(|e| panic!("{}: cannot say again: {e}", s.nick));
    }
}

/// One slot: sessions one after another until `until`; the last one stays connected,
/// waits for `END` and reports. Some sessions have their connection cut and resume it
/// on another after a pause.
async fn churn_slot(
    port: u16,
    server: String,
    slot: u64,
    until: tokio::time::Instant,
    end: Arc<tokio::sync::Notify>,
    totals: Arc<ChurnTotals>,
) -> Vec<Session> {
    let mut rng = Rng::new(slot + 1);
    let mut sessions = Vec::new();
    let mut generation = 0;
    loop {
        let nick = format!("c{slot}g{generation}");
        generation += 1;
        let (mut raw, ticket, epoch, joined_at) = churn_join(port, &server, &nick).await;
        totals.sessions.fetch_add(1, Ordering::Relaxed);
        let mut s = Session {
            nick: nick.clone(),
            joined_at,
            ..Session::default()
        };
        let now = tokio::time::Instant::now();
        let life = Duration::from_millis(rng.range(300, 3_000));
        let session_end = (now + life).min(until);
        let last = session_end >= until;
        let mut next_say = now + Duration::from_millis(rng.range(20, 200));
        let stop_at = if last { until } else { session_end };
        // A third of the sessions lose their connection once, somewhere in their life.
        let mut cut_at = rng
            .chance(33)
            .then(|| now + Duration::from_millis(rng.range(50, 2_000)))
            .filter(|at| *at < stop_at);
        // Talk and listen until the session ends.
        loop {
            tokio::select! {
                got = raw.recv(LONG) => match got {
                    Ok(Some(msg)) => record(&mut s, msg),
                    Ok(None) => panic!("{nick}: disconnected by the server"),
                    Err(e) => panic!("{nick}: {e}"),
                },
                () = tokio::time::sleep_until(next_say), if next_say < stop_at => {
                    s.said += 1;
                    let (id, text) = (s.said, format!("{nick} {}", s.said - 1));
                    s.unacked.push_back((id, text.clone()));
                    raw.send(&ClientMessage::Say { id, text })
                        .await
                        .unwrap_or_else(|e| panic!("{nick}: cannot say: {e}"));
                    next_say += Duration::from_millis(rng.range(20, 200));
                }
                () = tokio::time::sleep_until(cut_at.unwrap_or(stop_at)), if cut_at.is_some() => {
                    cut_at = None;
                    let pause = Duration::from_millis(rng.range(0, 500));
                    churn_resume(&mut raw, &mut s, (port, &server), (ticket, epoch), pause).await;
                    totals.resumed.fetch_add(1, Ordering::Relaxed);
                }
                () = tokio::time::sleep_until(stop_at) => break,
            }
        }
        if last {
            // Survive: keep reading until the END marker.
            s.survivor = true;
            end.notified().await;
            loop {
                match raw.recv(LONG).await {
                    Ok(Some(msg)) => {
                        if let ServerMessage::Event(Event {
                            seq,
                            kind: EventKind::Message { from, text },
                        }) = &msg
                            && from == "ender"
                            && text == "END"
                        {
                            s.end_seq = Some(*seq);
                            break;
                        }
                        record(&mut s, msg);
                    }
                    Ok(None) => panic!("{nick}: disconnected awaiting END"),
                    Err(e) => panic!("{nick}: awaiting END: {e}"),
                }
            }
            totals.bytes.fetch_add(raw.bytes_sent, Ordering::Relaxed);
            sessions.push(s);
            // Keep the connection open until the registry has been checked.
            end.notified().await;
            drop(raw);
            return sessions;
        }
        totals.bytes.fetch_add(raw.bytes_sent, Ordering::Relaxed);
        if rng.chance(40) {
            // Killed: the socket just goes away, no Leave.
            totals.abrupt.fetch_add(1, Ordering::Relaxed);
            drop(raw);
        } else {
            // A clean leave; events arriving meanwhile still count.
            raw.send(&ClientMessage::Leave).await.unwrap();
            loop {
                match raw.recv(LONG).await {
                    Ok(Some(ServerMessage::Reply(Reply::Left))) => break,
                    Ok(Some(msg)) => record(&mut s, msg),
                    Ok(None) => panic!("{nick}: closed while leaving"),
                    Err(e) => panic!("{nick}: leaving: {e}"),
                }
            }
            // Everything said before the leave was answered before it.
            assert!(
                s.unacked.is_empty(),
                "{nick}: unacknowledged says {:?}",
                s.unacked
            );
        }
        sessions.push(s);
    }
}

/// Keeps what a session received: every room event with what it was, and the
/// acknowledgements of its says.
fn record(s: &mut Session, msg: ServerMessage) {
    match msg {
        ServerMessage::Event(Event { seq, kind }) => {
            let what = match kind {
                EventKind::Message { from, text } => {
                    let Some((sender, _)) = parse_churn(&text) else {
                        panic!("{}: unexpected text {text:?} from {from}", s.nick)
                    };
                    assert_eq!(sender, from, "{}: text {text:?} from {from}", s.nick);
                    format!("say {text}")
                }
                EventKind::Joined { nick } => format!("joined {nick}"),
                EventKind::Left { nick, reason } => format!("left {nick} {reason:?}"),
                other => panic!("{}: unexpected event {other:?}", s.nick),
            };
            s.received.push((seq, what));
        }
        ServerMessage::Reply(Reply::Sent { id, .. }) => {
            while s.unacked.front().is_some_and(|(first, _)| *first <= id) {
                s.unacked.pop_front();
            }
        }
        ServerMessage::Reply(Reply::SlowDown) => panic!("{}: told to slow down", s.nick),
        ServerMessage::Closing { reason } => panic!("{}: closed: {reason:?}", s.nick),
        _ => {}
    }
}

/// Whether the event described as `what` is about `nick` itself (its own say, its own
/// arrival or departure), which the room never sends back to it.
fn about(what: &str, nick: &str) -> bool {
    let mut words = what.split(' ');
    let (kind, subject) = (words.next(), words.next());
    matches!(kind, Some("say" | "joined" | "left")) && subject == Some(nick)
}

#[test]
fn e_churn_loses_nothing_and_the_registry_ends_exact() {
    raise_open_files_limit();
    let clients: u64 = scaled(50, 200);
    let duration = Duration::from_secs(scaled(10, 60));
    let ctx = Ctx::new();
    let server = ctx.start_server(
        "server@localhost",
        &[
            "--rate",
            "1000",
            "--burst",
            "1000",
            "--max-clients",
            "20000",
        ],
    );
    let port = server.port();
    let name = server.name().to_string();
    let pid = server.proc.pid();
    let before = memory(pid);

    // A few real chat-client processes join and are killed with SIGKILL meanwhile.
    let killed_procs: Vec<String> = (0..scaled(3, 10)).map(|i| format!("victim{i}")).collect();

    let rt = runtime();
    let totals = Arc::new(ChurnTotals {
        sessions: AtomicU64::new(0),
        abrupt: AtomicU64::new(0),
        resumed: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let end = Arc::new(tokio::sync::Notify::new());
    let until = rt.block_on(async { tokio::time::Instant::now() }) + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|slot| {
            rt.spawn(churn_slot(
                port,
                name.clone(),
                slot,
                until,
                end.clone(),
                totals.clone(),
            ))
        })
        .collect();
    for nick in &killed_procs {
        let mut victim = ctx.join(&server, nick);
        victim.proc.signal(Signal::Kill);
    }
    let mut peak_sampled = 0;
    while tokio::time::Instant::now() < until {
        peak_sampled = peak_sampled.max(memory(pid).rss_kib);
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every slot's last session is now a survivor waiting to be told; the END marker
    // goes out after all of them wait for it.
    let (sessions, users) = rt.block_on(async {
        let mut ender = joined(port, &name, "ender").await;
        // notify_waiters only wakes tasks already waiting; wake them until all finished.
        let mut sessions = Vec::new();
        let mut pending = tasks;
        let mut said_end = false;
        let expected_survivors = clients as usize;
        let deadline = Instant::now() + LONG;
        // First wait until every slot has reached its survivor phase: poll the room
        // until exactly the survivors, ender, and no victims are there.
        let users = loop {
            ender.send(&ClientMessage::ListUsers).await.unwrap();
            let reply = ender.expect_reply().await.unwrap();
            let Reply::Users { users: u, more } = reply else {
                panic!("ListUsers answered {reply:?}")
            };
            assert_eq!(more, 0);
            let survivors = u.iter().filter(|n| n.starts_with('c')).count();
            let victims = u.iter().filter(|n| n.starts_with("victim")).count();
            if survivors == expected_survivors && victims == 0 && u.len() == expected_survivors + 1
            {
                break u;
            }
            assert!(
                Instant::now() < deadline,
                "the room never settled to the survivors: {u:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        while !pending.is_empty() {
            end.notify_waiters();
            if !said_end {
                ender
                    .send(&ClientMessage::Say {
                        id: 0,
                        text: "END".into(),
                    })
                    .await
                    .unwrap();
                said_end = true;
            }
            let mut still = Vec::new();
            for t in pending {
                if t.is_finished() {
                    sessions.extend(t.await.expect("churn task"));
                } else {
                    still.push(t);
                }
            }
            pending = still;
            assert!(Instant::now() < deadline, "churn tasks did not finish");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (sessions, users)
    });

    // The registry held exactly the connected nicks.
    let mut expected: Vec<String> = sessions
        .iter()
        .filter(|s| s.survivor)
        .map(|s| s.nick.clone())
        .collect();
    expected.push("ender".into());
    expected.sort();
    let mut users = users;
    users.sort();
    assert_eq!(users, expected, "the registry after churn");

    // Every room event, by its number, as anyone saw it: one number, one event.
    let mut events: BTreeMap<u64, &str> = BTreeMap::new();
    let mut said_by: BTreeMap<String, u64> = BTreeMap::new();
    for s in &sessions {
        said_by.insert(s.nick.clone(), s.said);
        for (seq, what) in &s.received {
            if let Some(old) = events.insert(*seq, what) {
                assert_eq!(old, what, "room seq {seq} is two events");
            }
        }
    }
    let mut checked = 0u64;
    for s in &sessions {
        // Exactly once and in room order, across the connections it resumed on.
        assert!(
            s.received.windows(2).all(|w| w[0].0 < w[1].0),
            "{}: events repeated or out of room order",
            s.nick
        );
        // Each sender's messages in order, with no gap, each one said.
        let mut last: HashMap<String, u64> = HashMap::new();
        for (_, what) in &s.received {
            let Some((from, n)) = what.strip_prefix("say ").and_then(parse_churn) else {
                continue;
            };
            let said = said_by.get(&from).copied().unwrap_or(0);
            assert!(n < said, "{}: {from} {n} was never said", s.nick);
            if let Some(prev) = last.insert(from.clone(), n) {
                assert_eq!(n, prev + 1, "{}: from {from}, {n} after {prev}", s.nick);
            }
        }
        // Every event after its join and before its last (or END, for survivors) that
        // is not about itself reached it: it was in the room, or away and resumed.
        let until = s.end_seq.unwrap_or_else(|| s.last_seq());
        let got: BTreeSet<u64> = s.received.iter().map(|r| r.0).collect();
        for (seq, what) in events.range(s.joined_at + 1..until) {
            if !about(what, &s.nick) {
                assert!(
                    got.contains(seq),
                    "{} missed {what:?} (room seq {seq}) while in the room ({}..{until})",
                    s.nick,
                    s.joined_at
                );
                checked += 1;
            }
        }
    }
    let total_said: u64 = said_by.values().sum();
    let total_received: usize = sessions.iter().map(|s| s.received.len()).sum();
    let after = memory(pid);
    report(
        "e) churn",
        &[
            ("slots", clients.to_string()),
            ("duration", format!("{duration:?}")),
            (
                "sessions",
                totals.sessions.load(Ordering::Relaxed).to_string(),
            ),
            (
                "abrupt drops",
                totals.abrupt.load(Ordering::Relaxed).to_string(),
            ),
            (
                "cut and resumed",
                totals.resumed.load(Ordering::Relaxed).to_string(),
            ),
            ("SIGKILLed chat-clients", killed_procs.len().to_string()),
            (
                "bytes sent",
                totals.bytes.load(Ordering::Relaxed).to_string(),
            ),
            ("messages said", total_said.to_string()),
            ("deliveries received", total_received.to_string()),
            ("deliveries checked", checked.to_string()),
            ("peak RSS sampled", format!("{:.1} MiB", mib(peak_sampled))),
            ("server RSS", rss_line(before, after)),
        ],
    );
    assert!(total_said > clients, "hardly anything was said");
    assert!(checked > 0);
    assert!(
        totals.resumed.load(Ordering::Relaxed) > 0,
        "no session was cut and resumed"
    );
}

// ---------------------------------------------------------------------------------------
// f) SIGTERM

#[test]
fn f_sigterm_with_many_clients_tells_each_and_exits_zero_within_5_s() {
    raise_open_files_limit();
    let count: u64 = scaled(100, 500);
    let ctx = Ctx::new();
    let mut server: Server = ctx.start_server("server@localhost", &["--max-clients", "20000"]);
    let port = server.port();
    let name = server.name().to_string();
    let pid = server.proc.pid();
    let rt = runtime();
    let clients = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..count {
            v.push(joined(port, &name, &format!("u{i}")).await);
        }
        v
    });
    let mem = memory(pid);
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut raw)| {
            rt.spawn(async move { read_to_the_close(&mut raw, &format!("u{i}"), LONG).await.0 })
        })
        .collect();
    let t0 = Instant::now();
    server.proc.signal(Signal::Term);
    let status = server.proc.wait_exit(LONG);
    let exit_after = t0.elapsed();
    let told: Vec<Option<LeaveReason>> = rt.block_on(async {
        let mut v = Vec::new();
        for r in readers {
            v.push(r.await.expect("reader"));
        }
        v
    });
    let told_ok = told
        .iter()
        .filter(|t| **t == Some(LeaveReason::ServerShutdown))
        .count();
    report(
        "f) SIGTERM",
        &[
            ("clients", count.to_string()),
            ("told ServerShutdown", told_ok.to_string()),
            ("exit after", format!("{exit_after:?}")),
            ("exit status", format!("{status}")),
            (
                "server RSS before",
                format!(
                    "{:.1} MiB (peak {:.1} MiB)",
                    mib(mem.rss_kib),
                    mib(mem.peak_kib)
                ),
            ),
        ],
    );
    assert_eq!(
        told_ok, count as usize,
        "clients told of the shutdown: {told:?}"
    );
    assert!(status.success(), "server exit status {status}");
    assert!(
        exit_after < Duration::from_secs(5),
        "exit took {exit_after:?}"
    );
}

// ---------------------------------------------------------------------------------------
// g) SIGTERM with a reader that never reads: the 3 s flush limit

#[test]
fn g_sigterm_does_not_wait_on_a_reader_that_never_reads() {
    let ctx = Ctx::new();
    let mut server: Server = ctx.start_server("server@localhost", &BIG_TEXTS_NO_FLOOD_LIMIT);
    let port = server.port();
    let name = server.name().to_string();
    let mut sloth = RawClient::joined_sloth("sloth", port, &name, COOKIE);
    let rt = runtime();
    // 3 MB for the sloth: more than the sockets hold, less than its 4 MiB send queue,
    // so the server still has frames for it when told to stop.
    let messages = 190u64;
    let (talker, mut ann) = rt.block_on(async {
        let mut talker = joined(port, &name, "talker").await;
        let mut ann = joined(port, &name, "ann").await;
        let padding = "y".repeat(16_000);
        for i in 0..messages {
            talker
                .send(&ClientMessage::Say {
                    id: 0,
                    text: format!("big {i} {padding}"),
                })
                .await
                .unwrap();
            let ev = expect_event(
                &mut ann,
                "a big message",
                |k| matches!(k, EventKind::Message { from, .. } if from == "talker"),
            )
            .await;
            let EventKind::Message { text, .. } = ev.kind else {
                unreachable!()
            };
            assert!(text.starts_with(&format!("big {i} ")));
        }
        (talker, ann)
    });
    let t0 = Instant::now();
    server.proc.signal(Signal::Term);
    let told = rt.block_on(async {
        match ann.recv(LONG).await {
            Ok(Some(ServerMessage::Closing { reason })) => reason,
            Ok(Some(other)) => panic!("ann got {other:?} before Closing"),
            Ok(None) => panic!("ann closed without Closing"),
            Err(e) => panic!("ann: {e}"),
        }
    });
    let status = server.proc.wait_exit(LONG);
    let exit_after = t0.elapsed();
    sloth.expect_closed(WAIT);
    drop(talker);
    report(
        "g) SIGTERM with a sloth",
        &[
            (
                "bytes queued for the sloth",
                (messages * 16_010).to_string(),
            ),
            ("ann told", format!("{told:?}")),
            ("exit after", format!("{exit_after:?}")),
            ("exit status", format!("{status}")),
        ],
    );
    assert_eq!(told, LeaveReason::ServerShutdown);
    assert!(status.success(), "exit status {status}");
    assert!(
        exit_after < Duration::from_secs(5),
        "the server waited {exit_after:?} for a reader that never reads (limit: 3 s to flush)"
    );
}
