//! One room on three `chat-server` nodes through one Redis (`--cluster`), as users on
//! every node see it: says and private messages across nodes, one order for everyone,
//! `/users` of the whole cluster, nick races, a node killed, Redis killed.
//!
//! Every test starts its own `redis-server` on a free port (killed on drop) and its own
//! nodes; without `redis-server` the tests are skipped unless `CHAT_REQUIRE_REDIS` is
//! set (as CI does).

use std::collections::{HashMap, HashSet};

use chat_tests::chaos::runtime;
use chat_tests::nodes::{sorted, strings};
use chat_tests::redis::{RedisServer, redis_or_skip};
use chat_tests::talker::{Seen, Talker};
use chat_tests::{COOKIE, Ctx, LONG, Server, Signal, Stream, WAIT};
use protocol::{ClientMessage, Event, EventKind, Reply, ResumeFailure, SessionTicket};

/// Starts node `name` of the cluster in `redis`, with a short tick so that leases and
/// liveness run in test time.
fn node(ctx: &Ctx, redis: &RedisServer, name: &str, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--cluster", url.as_str(), "--tick", "0.5"];
    args.extend_from_slice(extra);
    ctx.server(name).args(&args).start()
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
        .expect_output("Could not join chatroom: nick Bob is in use", WAIT);

    // Leaving on one node is seen on the others.
    cid.send("/leave");
    ann.expect_left("cid");
    bob.expect_left("cid");
    assert_eq!(sorted(&ann.users()), strings(&["ann", "bob"]));
    assert_eq!(sorted(&bob.users()), strings(&["ann", "bob"]));
    drop(copy);
}

/// Joins `nick` on `server` as a talker.
async fn talker(server: &Server, nick: &str) -> Talker {
    joined_talker(server, nick).await.0
}

/// Joins `nick` on `server` as a talker; returns it with the join's answer, which holds
/// the session to resume.
async fn joined_talker(server: &Server, nick: &str) -> (Talker, Reply) {
    Talker::join(server.port(), server.name(), COOKIE, nick)
        .await
        .unwrap_or_else(|e| panic!("{nick}: {e}"))
}

/// Resumes, on `server`, the session that `joined` answered, after the last event `was`
/// received: a client failing over from a dead node. Returns the new talker and the
/// answer.
async fn fail_over(was: &Talker, joined: &Reply, server: &Server) -> (Talker, Reply) {
    let (ticket, epoch, _) = session_of(joined);
    let last = was.seen().events.last().map_or(0, |e| e.seq);
    let label = &was.label;
    Talker::resume(
        label,
        server.port(),
        server.name(),
        COOKIE,
        ticket,
        epoch,
        last,
    )
    .await
    .unwrap_or_else(|e| panic!("{label}: {e}"))
}

/// Waits until every node in `nodes` says it serves the cluster's room.
#[track_caller]
fn serving(nodes: [&mut Server; 2]) {
    for n in nodes {
        n.proc
            .expect_stderr_line("serving the cluster's room", WAIT);
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

/// The ticket, epoch and number of a join's answer.
fn session_of(reply: &Reply) -> (SessionTicket, u64, u64) {
    match reply {
        Reply::Joined {
            ticket, epoch, seq, ..
        } => (*ticket, *epoch, *seq),
        other => panic!("not a join's answer: {other:?}"),
    }
}

/// The texts of the room messages in `events`, in order.
fn texts(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Message { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

fn left(nick: &str) -> impl Fn(&Seen) -> bool + '_ {
    move |seen| {
        seen.events
            .iter()
            .any(|e| matches!(&e.kind, EventKind::Left { nick: n, .. } if n == nick))
    }
}

fn heard(text: &str) -> impl Fn(&Seen) -> bool + '_ {
    move |seen| texts(&seen.events).iter().any(|t| t == text)
}

#[test]
fn a_killed_node_s_members_leave_and_its_clients_resume_elsewhere() {
    let Some(redis) =
        redis_or_skip("a_killed_node_s_members_leave_and_its_clients_resume_elsewhere")
    else {
        return;
    };
    let ctx = Ctx::new();
    let a = node(&ctx, &redis, "a@localhost", &[]);
    let b = node(&ctx, &redis, "b@localhost", &[]);
    let mut c = node(&ctx, &redis, "c@localhost", &[]);
    runtime().block_on(async {
        let ann = talker(&a, "ann").await;
        let bob = talker(&b, "bob").await;
        let (cid, cid_joined) = joined_talker(&c, "cid").await;
        let (dan, dan_joined) = joined_talker(&c, "dan").await;
        ann.say(1, "before");
        for t in [&bob, &cid, &dan] {
            t.wait("ann's first message", heard("before"))
                .await
                .unwrap();
        }

        c.proc.signal(Signal::Kill);
        for t in [&cid, &dan] {
            t.wait("the end of the connection", |seen| seen.ended.is_some())
                .await
                .unwrap();
        }
        // The others keep talking while c's members are away.
        ann.say(2, "while away 1");
        bob.say(1, "while away 2");
        bob.wait("an acknowledgement", |seen| seen.sent(1).is_some())
            .await
            .unwrap();
        ann.wait("an acknowledgement", |seen| seen.sent(2).is_some())
            .await
            .unwrap();

        // cid fails over to a at once and takes its session over: nobody saw it go.
        let (cid2, answer) = fail_over(&cid, &cid_joined, &a).await;
        assert!(
            matches!(
                answer,
                Reply::Resumed {
                    lost: 0,
                    rejoined: false,
                    ..
                }
            ),
            "{answer:?}"
        );
        cid2.wait("what it missed", heard("while away 2"))
            .await
            .unwrap();

        // dan does not come back in time: the cluster releases it once c's lease ends.
        for t in [&ann, &bob, &cid2] {
            t.wait("dan's departure", left("dan")).await.unwrap();
        }
        bob.say(2, "after");
        for t in [&ann, &cid2] {
            t.wait("bob's last message", heard("after")).await.unwrap();
        }
        assert!(
            !left("cid")(&ann.seen()),
            "cid's failover was seen as a departure"
        );

        // dan comes back later, on b: it rejoins and gets what it missed.
        let (dan2, answer) = fail_over(&dan, &dan_joined, &b).await;
        assert!(
            matches!(
                answer,
                Reply::Resumed {
                    lost: 0,
                    rejoined: true,
                    ..
                }
            ),
            "{answer:?}"
        );
        dan2.wait("what it missed", heard("after")).await.unwrap();
        ann.wait("dan's return", |seen| {
            seen.events
                .iter()
                .filter(|e| matches!(&e.kind, EventKind::Joined { nick } if nick == "dan"))
                .count()
                == 2
        })
        .await
        .unwrap();

        // Nothing lost, nothing twice: each of c's members heard every message once.
        let said = ["before", "while away 1", "while away 2", "after"];
        for (name, before, after) in [("cid", &cid, &cid2), ("dan", &dan, &dan2)] {
            let mut all = before.seen().events;
            all.extend(after.seen().events);
            assert!(
                all.windows(2).all(|w| w[0].seq < w[1].seq),
                "{name} got events out of sequence or twice"
            );
            // (The two said while away were said at once: Redis ordered them.)
            let mut got = texts(&all);
            got.sort();
            let mut want = said.map(String::from).to_vec();
            want.sort();
            assert_eq!(got, want, "{name}");
        }
        // And everyone agrees on the order.
        let mut cid_all = cid.seen().events;
        cid_all.extend(cid2.seen().events);
        assert_one_order(&[
            ("ann".into(), ann.seen().events),
            ("bob".into(), bob.seen().events),
            ("cid".into(), cid_all),
        ]);
    });
}

/// A persistent redis-server (every write on disk before the answer), or `None` when
/// redis-server is missing and not required.
fn persistent_redis(test: &str) -> Option<RedisServer> {
    redis_or_skip(test)?;
    Some(RedisServer::start_persistent())
}

fn unavailable(held: bool) -> impl Fn(&Seen) -> bool {
    move |seen| {
        seen.replies
            .iter()
            .any(|r| matches!(r, Reply::Unavailable { held: h, .. } if *h == held))
    }
}

#[test]
fn redis_killed_and_restarted_during_traffic_loses_nothing_accepted() {
    let Some(mut redis) =
        persistent_redis("redis_killed_and_restarted_during_traffic_loses_nothing_accepted")
    else {
        return;
    };
    let ctx = Ctx::new();
    // Leases longer than the outage: the nodes stay the room's through it.
    let args = [
        "--rate",
        "10000",
        "--burst",
        "10000",
        "--cluster-lease",
        "60",
    ];
    let a = node(&ctx, &redis, "a@localhost", &args);
    let b = node(&ctx, &redis, "b@localhost", &args);
    runtime().block_on(async {
        let ann = talker(&a, "ann").await;
        let bob = talker(&b, "bob").await;
        let cid = talker(&b, "cid").await;
        for id in 1..=10 {
            ann.say(id, &format!("ann {id}"));
        }
        ann.wait("the first acknowledgements", |seen| seen.sent(10).is_some())
            .await
            .unwrap();

        tokio::task::block_in_place(|| redis.kill());
        // Said while Redis is down: held by the nodes (up to a bound), the senders told.
        const OUTAGE: u64 = 300;
        for id in 11..=10 + OUTAGE {
            ann.say(id, &format!("ann {id}"));
        }
        for id in 1..=10 {
            bob.say(id, &format!("bob {id}"));
        }
        ann.wait("the notice that messages are held", unavailable(true))
            .await
            .unwrap();
        bob.wait("the notice that messages are held", unavailable(true))
            .await
            .unwrap();
        // More than a node holds for one sender is refused, and the sender told.
        ann.wait("a refusal", unavailable(false)).await.unwrap();
        // A join needs Redis: refused, to be tried again later.
        let (_, refused) = Talker::open(
            "eve",
            a.port(),
            "eve@localhost",
            a.name(),
            COOKIE,
            ClientMessage::Join {
                nick: "eve".into(),
                backlog: 0,
            },
        )
        .await
        .unwrap();
        assert_eq!(refused, Reply::Unavailable { id: 0, held: false });

        tokio::task::block_in_place(|| redis.restart());
        // Every message is answered: acknowledged (with its number) or refused.
        let answered = |last: u64| {
            move |seen: &Seen| {
                (1..=last).all(|id| {
                    seen.sent(id).is_some()
                        || seen
                            .replies
                            .contains(&Reply::Unavailable { id, held: false })
                })
            }
        };
        ann.wait("an answer to every message", answered(10 + OUTAGE))
            .await
            .unwrap();
        bob.wait("an answer to every message", answered(10))
            .await
            .unwrap();
        let (ann_seen, bob_seen) = (ann.seen(), bob.seen());
        let accepted: Vec<(u64, String)> = (1..=10 + OUTAGE)
            .filter_map(|id| ann_seen.sent(id).map(|seq| (seq, format!("ann {id}"))))
            .chain(
                (1..=10).filter_map(|id| bob_seen.sent(id).map(|seq| (seq, format!("bob {id}")))),
            )
            .collect();
        let refused = 10 + OUTAGE + 10 - accepted.len() as u64;
        assert!(refused > 0 && refused < OUTAGE, "{refused} refused");
        for (seq, _) in &accepted {
            assert!(*seq > 0, "an acknowledgement without a number");
        }
        // cid hears exactly the accepted messages, once each, at their numbers.
        let last_seq = accepted.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        cid.wait("every accepted message", |seen| {
            seen.events.last().is_some_and(|e| e.seq >= last_seq)
        })
        .await
        .unwrap();
        let mut expected: Vec<(u64, String)> = accepted
            .iter()
            .filter(|(_, text)| text.starts_with("ann"))
            .cloned()
            .collect();
        expected.sort();
        let heard_from_ann: Vec<(u64, String)> = cid
            .seen()
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Message { from, text } if from == "ann" => Some((e.seq, text.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(heard_from_ann, expected);
        // A sender's accepted messages keep the order it sent them in.
        let ids: Vec<u64> = expected
            .iter()
            .filter_map(|(_, t)| t.strip_prefix("ann ")?.parse().ok())
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ann's order broke");
        assert_one_order(&[
            ("ann".into(), ann.seen().events),
            ("bob".into(), bob.seen().events),
            ("cid".into(), cid.seen().events),
        ]);
    });
}

#[test]
fn a_redis_that_lost_the_room_makes_every_node_start_again() {
    let Some(mut redis) = redis_or_skip("a_redis_that_lost_the_room_makes_every_node_start_again")
    else {
        return;
    };
    let ctx = Ctx::new();
    let mut a = node(&ctx, &redis, "a@localhost", &[]);
    let mut b = node(&ctx, &redis, "b@localhost", &[]);
    serving([&mut a, &mut b]);
    runtime().block_on(async {
        let (ann, joined) = joined_talker(&a, "ann").await;
        let bob = talker(&b, "bob").await;
        ann.say(1, "before");
        bob.wait("ann's message", heard("before")).await.unwrap();

        // Restarted without its data: the room's epoch is gone.
        tokio::task::block_in_place(|| redis.restart());
        for t in [&ann, &bob] {
            t.wait("the end of the connection", |seen| seen.ended.is_some())
                .await
                .unwrap();
        }
        tokio::task::block_in_place(|| serving([&mut a, &mut b]));
        let (ticket, epoch, _) = session_of(&joined);
        let (_, answer) = Talker::resume("ann", a.port(), a.name(), COOKIE, ticket, epoch, 1)
            .await
            .unwrap();
        assert_eq!(
            answer,
            Reply::ResumeFailed {
                reason: ResumeFailure::EpochChanged
            }
        );
        // The room works again, across nodes, in the new epoch.
        let ann = talker(&a, "ann").await;
        let bob = talker(&b, "bob").await;
        ann.say(1, "after");
        bob.wait("ann's message", heard("after")).await.unwrap();
    });
}

#[test]
fn chat_client_fails_over_to_another_node_and_resumes() {
    let Some(redis) = redis_or_skip("chat_client_fails_over_to_another_node_and_resumes") else {
        return;
    };
    let ctx = Ctx::new();
    // A lease longer than the failover: the room does not see ann go.
    let lease = ["--cluster-lease", "30"];
    let a = node(&ctx, &redis, "a@localhost", &lease);
    let _b = node(&ctx, &redis, "b@localhost", &lease);
    let mut c = node(&ctx, &redis, "c@localhost", &lease);
    let mut bob = ctx.join(&a, "bob");
    let mut ann = ctx
        .client("ann")
        .server_arg("c@localhost,a@localhost,b@localhost", "c@localhost")
        .reconnect()
        .join();
    bob.expect_joined("ann");
    ann.send("before");
    bob.expect_say("ann", "before");

    c.proc.signal(Signal::Kill);
    ann.expect("Connection to c@localhost lost:");
    bob.send("while you were away");
    // Typed while failing over: queued, sent after the resume.
    ann.send("typed while away");
    ann.expect("* Reconnected to a@localhost *");
    bob.expect_say("ann", "typed while away");
    ann.proc
        .expect_line("a@localhost> bob: while you were away", WAIT);
    bob.send("after");
    ann.proc.expect_line("a@localhost> bob: after", WAIT);

    // Nothing twice, on either side; the room never saw ann leave.
    bob.expect_not_received("ann has left");
    let ann_out = ann.proc.lines(Stream::Stdout);
    let count =
        |lines: &[String], needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count(&ann_out, "bob: while you were away"),
        1,
        "{ann_out:#?}"
    );
    let bob_out = bob.proc.lines(Stream::Stdout);
    assert_eq!(count(&bob_out, "ann: typed while away"), 1, "{bob_out:#?}");
    assert_eq!(count(&bob_out, "ann: before"), 1, "{bob_out:#?}");
}

#[test]
fn chat_client_tries_the_next_node_when_the_first_is_down() {
    let Some(redis) = redis_or_skip("chat_client_tries_the_next_node_when_the_first_is_down")
    else {
        return;
    };
    let ctx = Ctx::new();
    let b = node(&ctx, &redis, "b@localhost", &[]);
    let mut bob = ctx.join(&b, "bob");
    // a@localhost is not running: the client says so and joins through b.
    let mut ann = ctx
        .client("ann")
        .server_arg("a@localhost,b@localhost", "b@localhost")
        .spawn();
    ann.proc
        .expect_in(Stream::Stderr, "Could not connect to a@localhost", WAIT);
    assert_eq!(sorted(&ann.expect_banner()), strings(&["ann", "bob"]));
    bob.expect_joined("ann");
}

/// A node whose Redis cannot be reached turns every join away (`Unavailable`): the client
/// says so once and keeps trying quietly, instead of a `lost ... reconnecting` and a
/// `Reconnected` pair at every try. Needs no redis-server: nothing listens on port 1.
#[test]
fn a_node_whose_store_is_away_is_told_once_while_the_client_keeps_trying() {
    let ctx = Ctx::new();
    // Never ready (it waits for its store), but listening and registered.
    let mut server = ctx
        .server("server@localhost")
        .args(&["--cluster", "redis://127.0.0.1:1"])
        .spawn();
    ctx.wait_registered("server");
    let mut ann = ctx
        .client("ann")
        .server_arg("server@localhost", "server@localhost")
        .reconnect()
        .spawn();
    // Three joins turned away: the first, and two tries after it (1 s, then 2 s).
    for _ in 0..3 {
        let logged = server.expect_stderr_line("join refused nick=ann", LONG);
        assert!(
            logged.contains("reason=\"the room is unavailable on this node\""),
            "{logged}"
        );
    }
    let told = ann
        .proc
        .lines_containing(Stream::Any, "the room is unavailable");
    assert_eq!(told.len(), 1, "told {} times: {told:?}", told.len());
    let reconnected = ann.proc.lines_containing(Stream::Any, "Reconnected");
    assert!(reconnected.len() <= 1, "{reconnected:?}");
    assert!(ann.proc.try_status().is_none(), "the client gave up");
}
