//! The cluster's order (issue 14) against a real redis-server: every event gets a
//! gap-free, strictly increasing number from Redis; every reader delivers the same
//! entries in that order, across trimming and dropped connections; repeated message
//! ids are appended once.

mod common;

use std::collections::HashSet;

use chat_server::cluster::{Appended, LogBody, Presence, Progress};
use chat_server::history::{Audience, EntryKind};
use chat_tests::redis::redis_or_skip;
use common::{WAIT, append_until_done, collect, config, member, node, node_with, say, text};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_from_two_nodes_get_one_gap_free_order_that_every_reader_sees() {
    let Some(redis) = redis_or_skip("appends_from_two_nodes_get_one_gap_free_order") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let b = node(&redis, "b@localhost").await;
    assert_eq!(
        a.epoch(),
        b.epoch(),
        "the first node sets the epoch, the second reads it"
    );
    let alice = member(&a, "alice").await;
    let bob = member(&b, "bob").await;
    let mut reader_a = a.follow(1).unwrap();
    let mut reader_b = b.follow(1).unwrap();
    const EACH: u64 = 150;
    let speak = |node: chat_server::cluster::Cluster, session, who: &'static str| {
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 1..=EACH {
                let (seq, _) =
                    append_until_done(&node, &say(session, i, &format!("{who} {i}"))).await;
                seqs.push(seq);
            }
            seqs
        })
    };
    let (from_a, from_b) = tokio::join!(
        speak(a.clone(), alice, "alice"),
        speak(b.clone(), bob, "bob")
    );
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    for seqs in [&from_a, &from_b] {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one speaker's numbers grow"
        );
    }
    let all: HashSet<u64> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(all.len() as u64, 2 * EACH, "no number is handed out twice");
    let head = a.head().await.unwrap();
    assert_eq!(
        head,
        2 * EACH + 2,
        "two joins and every message, nothing else"
    );
    assert_eq!(
        (1..=head).filter(|s| !all.contains(s)).count(),
        2,
        "the gaps are the joins"
    );

    let (seen_a, _) = collect(&mut reader_a, head).await;
    let (seen_b, _) = collect(&mut reader_b, head).await;
    let seqs: Vec<u64> = seen_a.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "every number, in order, once"
    );
    assert_eq!(
        seen_a, seen_b,
        "both nodes read the same entries in the same order"
    );
    let stored = a.range(1, 10_000).await.unwrap();
    assert_eq!(stored, seen_a, "what was read is what the stream holds");

    // Each message carries what its origin needs to acknowledge it.
    let entry = seen_a.iter().find(|e| e.seq == from_b[4]).unwrap();
    let event = entry.event().unwrap();
    assert_eq!(text(entry), "bob 5");
    assert_eq!(event.kind, EntryKind::Message);
    assert_eq!(event.audience, Audience::Room { except: bob });
    assert_eq!((event.origin.session, event.origin.msg_id), (bob, 5));
    assert_eq!(event.origin.node, b.node().as_str());
}

#[tokio::test]
async fn a_repeated_message_id_is_acknowledged_again_but_appended_once() {
    let Some(redis) = redis_or_skip("a_repeated_message_id_is_acknowledged_again") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let alice = member(&a, "alice").await;
    let first = a.append(&say(alice, 5, "hello")).await.unwrap();
    assert_eq!(first, Appended::At(2));
    assert_eq!(
        a.append(&say(alice, 5, "hello")).await.unwrap(),
        Appended::Repeated(2)
    );
    assert_eq!(
        a.append(&say(alice, 4, "older")).await.unwrap(),
        Appended::Repeated(0),
        "an id older than the last is not appended either"
    );
    assert_eq!(
        a.append(&say(alice, 0, "no id")).await.unwrap(),
        Appended::At(3)
    );
    assert_eq!(
        a.append(&say(alice, 0, "no id")).await.unwrap(),
        Appended::At(4)
    );
    // Ids are compared as numbers, not as text: 10 comes after 9.
    assert_eq!(
        a.append(&say(alice, 9, "nine")).await.unwrap(),
        Appended::At(5)
    );
    assert_eq!(
        a.append(&say(alice, 10, "ten")).await.unwrap(),
        Appended::At(6)
    );
    assert_eq!(
        a.append(&say(alice, u64::MAX, "max")).await.unwrap(),
        Appended::At(7)
    );
    let texts: Vec<String> = a.range(1, 100).await.unwrap().iter().map(text).collect();
    assert_eq!(
        texts,
        ["+alice", "hello", "no id", "no id", "nine", "ten", "max"]
    );
    // The server's own notices need no session.
    let notice = chat_server::cluster::NewEvent {
        kind: chat_server::cluster::AppendKind::Notice,
        audience: Audience::Room { except: 0 },
        session: 0,
        msg_id: 0,
        payload: bytes::Bytes::from_static(b"notice"),
    };
    assert_eq!(a.append(&notice).await.unwrap(), Appended::At(8));
}

#[tokio::test]
async fn a_late_reader_is_told_what_was_trimmed_then_reads_on_in_order() {
    let Some(redis) = redis_or_skip("a_late_reader_is_told_what_was_trimmed") else {
        return;
    };
    let mut settings = config(&redis);
    settings.history = 50;
    let a = node_with(settings, "a@localhost").await;
    let alice = member(&a, "alice").await;
    for i in 1..=600 {
        a.append(&say(alice, i, &format!("m{i}"))).await.unwrap();
    }
    let stored = a.range(1, 10_000).await.unwrap();
    assert!(
        stored.len() < 300,
        "trimmed to about the history size: {}",
        stored.len()
    );
    assert!(
        stored.len() >= 50,
        "never below the history size: {}",
        stored.len()
    );
    let first_kept = stored[0].seq;

    let mut late = a.follow(1).unwrap();
    match tokio::time::timeout(WAIT, late.next())
        .await
        .unwrap()
        .unwrap()
    {
        Progress::Lost { from, to } => assert_eq!((from, to), (1, first_kept - 1)),
        other => panic!("expected a loss first, got {other:?}"),
    }
    let (rest, _) = collect(&mut late, 601).await;
    assert_eq!(rest, stored, "then everything kept, in order");

    // A starting node's backlog: the last entries, oldest first, with the members.
    let snapshot = a.snapshot(10).await.unwrap();
    assert_eq!(snapshot.head, 601);
    assert_eq!(snapshot.members, vec![(alice, "alice".to_string())]);
    let recent: Vec<u64> = snapshot.recent.iter().map(|e| e.seq).collect();
    assert_eq!(recent, (592..=601).collect::<Vec<_>>());
    assert_eq!(text(&snapshot.recent[9]), "m600");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_whose_connection_is_killed_repeatedly_skips_and_repeats_nothing() {
    let Some(redis) = redis_or_skip("a_reader_whose_connection_is_killed_repeatedly") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let alice = member(&a, "alice").await;
    let mut reader = a.follow(1).unwrap();
    const COUNT: u64 = 400;
    let (acked, mut progress) = tokio::sync::watch::channel(0u64);
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            for i in 1..=COUNT {
                failures += append_until_done(&a, &say(alice, i, &i.to_string()))
                    .await
                    .1;
                acked.send_replace(i);
            }
            failures
        })
    };
    let reading = tokio::spawn(async move { collect(&mut reader, COUNT + 1).await });
    // Drop every client connection (the reader's and the writer's) five times, spread
    // over the writing; each kill is a real disconnect seen by both.
    let port = redis.port();
    let killer = tokio::spawn(async move {
        let mut kills = 0;
        for k in 1..=5 {
            progress
                .wait_for(|&n| n >= k * COUNT / 6)
                .await
                .expect("the writer stopped early");
            let answer = tokio::task::spawn_blocking(move || {
                chat_tests::redis::RedisServer::command_on(
                    port,
                    &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"],
                )
            })
            .await
            .unwrap();
            kills += answer.and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
        kills
    });
    let kills = killer.await.unwrap();
    let failures = writer.await.unwrap();
    let (entries, interruptions) = reading.await.unwrap();
    assert!(kills > 0, "connections were killed");
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=COUNT + 1).collect::<Vec<_>>(),
        "every entry once, in order"
    );
    let texts: Vec<String> = entries[1..].iter().map(text).collect();
    let expected: Vec<String> = (1..=COUNT).map(|i| i.to_string()).collect();
    assert_eq!(
        texts, expected,
        "each message once, in the order it was said"
    );
    eprintln!(
        "{kills} connections killed; writer retried {failures} times, reader interrupted {interruptions} times"
    );
}

#[tokio::test]
async fn presence_entries_carry_the_membership_change() {
    let Some(redis) = redis_or_skip("presence_entries_carry_the_membership_change") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let alice = member(&a, "alice").await;
    a.depart(alice, false, |nick| bytes::Bytes::from(format!("-{nick}")))
        .await
        .unwrap();
    let entries = a.range(1, 10).await.unwrap();
    let presence: Vec<(Option<Presence>, String)> = entries
        .iter()
        .map(|e| match &e.body {
            LogBody::Event(ev) => (ev.presence.clone(), text(e)),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        presence,
        vec![
            (
                Some(Presence::Joined {
                    session: alice,
                    nick: "alice".into()
                }),
                "+alice".into()
            ),
            (
                Some(Presence::Left {
                    session: alice,
                    nick: "alice".into()
                }),
                "-alice".into()
            ),
        ]
    );
}
