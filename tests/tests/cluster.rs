//! One room on three `chat-server` nodes through one Redis (`--cluster`), as users on
//! every node see it: says and private messages across nodes, one order for everyone,
//! `/users` of the whole cluster, nick races, a node killed, Redis killed.
//!
//! Every test starts its own `redis-server` on a free port (killed on drop) and its own
//! nodes; without `redis-server` the tests are skipped unless `CHAT_REQUIRE_REDIS` is
//! set (as CI does).

use std::collections::{HashMap, HashSet};

use chat_tests::nodes::sorted;
use chat_tests::redis::{RedisServer, redis_or_skip};
use chat_tests::talker::Talker;
use chat_tests::{COOKIE, Ctx, Server, WAIT};
use protocol::{ClientMessage, Event, EventKind, Reply};

/// Starts node `name` of the cluster in `redis`, with a short tick so that leases and
/// liveness run in test time.
fn node(ctx: &Ctx, redis: &RedisServer, name: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--cluster", url.as_str(), "--tick", "0.5"];
    args.extend_from_slice(extra);
    ctx.server(name).args(&args).start()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn says_private_messages_and_users_cross_nodes() {
    let Some(redis) = redis_or_skip("says_private_messages_and_users_cross_nodes") else {
        return;
    };
    let ctx = Ctx::new();
    let a = node(&ctx, &redis, "a@localhost", &[]);
    let b = node(&ctx, &redis, "b@localhost", &[]);
    let c = node(&ctx, &redis, "c@localhost", &[]);

    let mut ann = ctx.join(&a, "ann");
    let mut bob = ctx.join(&b, "bob");
    ann.expect_joined("bob");
    let mut cid = ctx.join(&c, "cid");
    ann.expect_joined("cid");
    bob.expect_joined("cid");

    // Each sees the whole room, whatever node it is on.
    for client in [&mut ann, &mut bob, &mut cid] {
        assert_eq!(sorted(&client.users()), strings(&["ann", "bob", "cid"]));
    }

    ann.send("hello from a");
    bob.expect_say("ann", "hello from a");
    cid.expect_say("ann", "hello from a");
    cid.send("hello from c");
    ann.expect_say("cid", "hello from c");
    bob.expect_say("cid", "hello from c");

    // A private message reaches the owner's node, and only the owner.
    bob.send("/pm cid just for you");
    cid.expect_private("bob", "just for you");
    ann.expect_not_received("just for you");
    // Found by its key across nodes, as on one node.
    cid.send("/pm ANN back to you");
    ann.expect_private("cid", "back to you");

    // A nick is the cluster's: taken on another node is taken here.
    let mut copy = ctx.client("Bob").to(&c).spawn();
    copy.proc
        .expect_output("Could not join chatroom, reason: nick_in_use", WAIT);

    // Leaving on one node is seen on the others.
    cid.send("/leave");
    ann.expect_left("cid");
    bob.expect_left("cid");
    assert_eq!(sorted(&ann.users()), strings(&["ann", "bob"]));
    assert_eq!(sorted(&bob.users()), strings(&["ann", "bob"]));
    drop(copy);
}

/// A tokio runtime for tests that drive many raw members at once.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Joins `nick` on `server` as a talker.
async fn talker(server: &Server, nick: &str) -> Talker {
    match Talker::join(server.port(), server.name(), COOKIE, nick).await {
        Ok((talker, _)) => talker,
        Err(e) => panic!("{e}"),
    }
}

/// How a member saw an event, without its number: what it was, and which occurrence
/// of that (a nick can join twice).
fn identities(events: &[Event]) -> Vec<String> {
    let mut count: HashMap<String, u32> = HashMap::new();
    events
        .iter()
        .map(|e| {
            let what = format!("{:?}", e.kind);
            let n = count.entry(what.clone()).or_default();
            *n += 1;
            format!("{what}#{n}")
        })
        .collect()
}

/// Checks that every two members agree on the order of every two events they both
/// saw, and that each saw its events in increasing sequence numbers.
fn assert_one_order(logs: &[(String, Vec<Event>)]) {
    for (name, events) in logs {
        assert!(
            events.windows(2).all(|w| w[0].seq < w[1].seq),
            "{name} received events out of sequence"
        );
    }
    let ids: Vec<(String, Vec<String>)> = logs
        .iter()
        .map(|(name, events)| (name.clone(), identities(events)))
        .collect();
    let mut pairs = 0;
    for (i, (x, xs)) in ids.iter().enumerate() {
        for (y, ys) in &ids[i + 1..] {
            let in_y: HashSet<&String> = ys.iter().collect();
            let in_x: HashSet<&String> = xs.iter().collect();
            let common_x: Vec<&String> = xs.iter().filter(|e| in_y.contains(e)).collect();
            let common_y: Vec<&String> = ys.iter().filter(|e| in_x.contains(e)).collect();
            assert_eq!(
                common_x, common_y,
                "{x} and {y} saw the events they share in different orders"
            );
            pairs += common_x.len();
        }
    }
    assert!(pairs > 0, "the members shared no events at all");
}

#[test]
fn every_member_on_every_node_sees_one_order() {
    let Some(redis) = redis_or_skip("every_member_on_every_node_sees_one_order") else {
        return;
    };
    let ctx = Ctx::new();
    // Everyone says everything at once: no flood limit in the way.
    let fast = ["--rate", "10000", "--burst", "10000"];
    let nodes = [
        node(&ctx, &redis, "a@localhost", &fast),
        node(&ctx, &redis, "b@localhost", &fast),
        node(&ctx, &redis, "c@localhost", &fast),
    ];
    const SAID: u64 = 40;
    runtime().block_on(async {
        let mut talkers = Vec::new();
        for (n, server) in nodes.iter().enumerate() {
            for i in 0..2 {
                talkers.push(talker(server, &format!("m{n}{i}")).await);
            }
        }
        let count = talkers.len();
        // Everyone at once: says to the room, and a private message to the next member
        // (on another node), with a member leaving and coming back in the middle.
        for round in 1..=SAID {
            for (i, t) in talkers.iter().enumerate() {
                // Ids grow in the order sent: 2, 4, ... and the private message odd.
                t.say(2 * round, &format!("{} {round}", t.label));
                if round == SAID / 2 {
                    let to = &talkers[(i + 2) % count].label;
                    t.send(ClientMessage::Private {
                        id: 2 * round + 1,
                        to: to.clone(),
                        text: format!("pm from {}", t.label),
                    });
                }
            }
        }
        for t in &talkers {
            t.wait("every acknowledgement", |seen| {
                (1..=SAID).all(|round| seen.sent(2 * round).is_some())
                    && seen.sent(SAID + 1).is_some()
            })
            .await
            .unwrap();
        }
        for t in &talkers {
            let others = (count as u64 - 1) * SAID;
            t.wait("every message and the private one", |seen| {
                let said = seen
                    .events
                    .iter()
                    .filter(|e| matches!(e.kind, EventKind::Message { .. }))
                    .count() as u64;
                let private = seen
                    .events
                    .iter()
                    .any(|e| matches!(e.kind, EventKind::Private { .. }));
                said == others && private
            })
            .await
            .unwrap();
        }
        // Every acknowledgement names the number the others received the message at.
        let mut numbers: HashMap<String, u64> = HashMap::new();
        for t in &talkers {
            for e in &t.seen().events {
                if let EventKind::Message { text, .. } = &e.kind {
                    let first = *numbers.entry(text.clone()).or_insert(e.seq);
                    assert_eq!(first, e.seq, "{text} has two numbers");
                }
            }
        }
        for t in &talkers {
            let seen = t.seen();
            for round in 1..=SAID {
                let text = format!("{} {round}", t.label);
                assert_eq!(seen.sent(2 * round), numbers.get(&text).copied(), "{text}");
            }
        }
        let logs: Vec<(String, Vec<Event>)> = talkers
            .iter()
            .map(|t| (t.label.clone(), t.seen().events))
            .collect();
        assert_one_order(&logs);
    });
}

#[test]
fn two_nodes_racing_for_one_nick_let_exactly_one_win() {
    let Some(redis) = redis_or_skip("two_nodes_racing_for_one_nick_let_exactly_one_win") else {
        return;
    };
    let ctx = Ctx::new();
    let a = node(&ctx, &redis, "a@localhost", &[]);
    let b = node(&ctx, &redis, "b@localhost", &[]);
    runtime().block_on(async {
        for round in 0..100 {
            // Odd rounds race with nicks that differ only in case: one nick all the same.
            let (left, right) = if round % 2 == 0 {
                (format!("race{round}"), format!("race{round}"))
            } else {
                (format!("race{round}"), format!("RACE{round}"))
            };
            let x = Talker::connect("x", a.port(), "x@localhost", a.name(), COOKIE);
            let y = Talker::connect("y", b.port(), "y@localhost", b.name(), COOKIE);
            let (x, y) = tokio::join!(x, y);
            let (x, y) = (x.unwrap(), y.unwrap());
            let join = |nick: &str| ClientMessage::Join {
                nick: nick.to_string(),
                backlog: 0,
            };
            x.send(join(&left));
            y.send(join(&right));
            for t in [&x, &y] {
                t.wait("the join's answer", |seen| !seen.replies.is_empty())
                    .await
                    .unwrap();
            }
            let answers = [x.seen().replies[0].clone(), y.seen().replies[0].clone()];
            let won = answers
                .iter()
                .filter(|r| matches!(r, Reply::Joined { .. }))
                .count();
            let lost = answers
                .iter()
                .filter(|r| matches!(r, Reply::NickInUse))
                .count();
            assert_eq!((won, lost), (1, 1), "round {round}: {answers:?}");
        }
    });
}
