//! Cluster-wide nicks and node leases (issue 14) against a real redis-server: of two
//! nodes racing for one nick exactly one wins; a node whose lease expires has its
//! members released exactly once, by exactly one other node.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chat_server::cluster::{Appended, Cluster, ClusterError, Departed, Joined, LogBody, Presence};
use chat_tests::redis::redis_or_skip;
use common::{WAIT, config, member, node, node_with, say, secret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_one_nick_exactly_one_wins_a_hundred_times() {
    let Some(redis) = redis_or_skip("two_nodes_racing_for_one_nick") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let b = node(&redis, "b@localhost").await;
    let mut wins = [0u32; 2];
    for round in 0..100 {
        // Both joins start together; each runs on its own connection.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let race = |node: Cluster, who: u8| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                // Keys are the caller's: "Alice" and "alice" fold to one key.
                let nick = if who == 0 { "Alice" } else { "alice" };
                node.join(nick, b"alice", &secret(nick), b"+").await
            })
        };
        let (ra, rb) = tokio::join!(race(a.clone(), 0), race(b.clone(), 1));
        let results = [ra.unwrap().unwrap(), rb.unwrap().unwrap()];
        let winners: Vec<usize> = (0..2)
            .filter(|&i| matches!(results[i], Joined::Joined { .. }))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner = winners[0];
        wins[winner] += 1;
        let Joined::Joined { session, .. } = results[winner] else {
            unreachable!()
        };
        assert_eq!(
            results[1 - winner],
            Joined::NickInUse { holder: session },
            "round {round}: the loser is told who holds it"
        );
        // Release: the winner leaves on purpose, which frees the key for the next round.
        let holder = [&a, &b][winner];
        let left = holder
            .depart(session, false, |_| Bytes::new())
            .await
            .unwrap();
        assert!(
            matches!(left, Departed::Left { .. }),
            "round {round}: {left:?}"
        );
        assert_eq!(holder.nick_holder(b"alice").await.unwrap(), None);
    }
    // Exactly one join per round reached the room.
    let joins = a
        .range(1, 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e.event().and_then(|ev| ev.presence.as_ref()),
                Some(Presence::Joined { .. })
            )
        })
        .count();
    assert_eq!(joins, 100);
    eprintln!("wins: a {} b {}", wins[0], wins[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_members_leave_once_announced_by_one_node() {
    let Some(redis) = redis_or_skip("a_dead_nodes_members_leave_once") else {
        return;
    };
    // The dying node's lease is short (long enough to join its members on a busy
    // machine) and never renewed; the survivors' are long.
    let mut short = config(&redis);
    short.lease = Duration::from_millis(1500);
    let dying = node_with(short, "dying@localhost").await;
    let b = node(&redis, "b@localhost").await;
    let c = node(&redis, "c@localhost").await;
    let mut sessions = Vec::new();
    for i in 0..5 {
        sessions.push(member(&dying, &format!("d{i}")).await);
    }
    let survivor = member(&b, "bob").await;

    // Both survivors look for dead nodes and reap them, at the same time, until the
    // dying node is gone from the node set.
    let reap = |node: Cluster| {
        tokio::spawn(async move {
            let mut departed = Vec::new();
            let mut seen_dead = false;
            loop {
                let dead = node.dead_nodes().await.unwrap();
                seen_dead |= !dead.is_empty();
                for d in &dead {
                    if let Some(reaped) = node
                        .reap(d, |nick| Bytes::from(format!("-{nick}")))
                        .await
                        .unwrap()
                    {
                        departed.extend(reaped.departed);
                    }
                }
                // Done once the dead node was seen and is gone from the node set (reaped
                // by whichever node got the lock).
                if seen_dead && node.dead_nodes().await.unwrap().is_empty() {
                    return departed;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (by_b, by_c) = tokio::time::timeout(WAIT, async {
        tokio::join!(reap(b.clone()), reap(c.clone()))
    })
    .await
    .expect("the dead node was not reaped in time");
    let (by_b, by_c) = (by_b.unwrap(), by_c.unwrap());
    assert_eq!(by_b.len() + by_c.len(), 5, "b: {by_b:?} c: {by_c:?}");
    assert!(
        by_b.is_empty() || by_c.is_empty(),
        "one node announced them all"
    );

    // The stream says each left once, published by one surviving node.
    let entries = b.range(1, 1000).await.unwrap();
    let lefts: Vec<(u64, String)> = entries
        .iter()
        .filter_map(|e| match &e.body {
            LogBody::Event(ev) => match &ev.presence {
                Some(Presence::Left { session, .. }) => Some((*session, ev.origin.node.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let mut left_sessions: Vec<u64> = lefts.iter().map(|(s, _)| *s).collect();
    left_sessions.sort();
    assert_eq!(
        left_sessions, sessions,
        "every member of the dead node left, once"
    );
    let publishers: std::collections::HashSet<&String> = lefts.iter().map(|(_, n)| n).collect();
    assert_eq!(publishers.len(), 1, "announced by one node");
    assert_ne!(
        publishers.iter().next().unwrap().as_str(),
        dying.node().as_str()
    );

    // Their nicks are free, the members are gone, and the survivor stays.
    let snapshot = b.snapshot(0).await.unwrap();
    assert_eq!(snapshot.members, vec![(survivor, "bob".to_string())]);
    let again = member(&c, "d0").await;
    assert!(again > survivor);
    // The dead node itself finds out, and can no longer speak for its sessions.
    assert_eq!(dying.renew().await, Err(ClusterError::LeaseLost));
    assert_eq!(
        dying
            .append(&say(sessions[0], 1, "still here?"))
            .await
            .unwrap(),
        Appended::NotHere
    );
    assert!(matches!(
        dying.join("late", b"late", &secret("late"), b"+").await,
        Err(ClusterError::LeaseLost)
    ));
    // A node that renews is not dead.
    b.renew().await.unwrap();
    assert!(c.dead_nodes().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_clean_leave_drops_the_node_and_its_lease() {
    let Some(redis) = redis_or_skip("a_clean_leave_drops_the_node") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let b = node(&redis, "b@localhost").await;
    let alice = member(&a, "alice").await;
    a.depart(alice, true, |_| Bytes::new()).await.unwrap();
    a.leave_cluster().await.unwrap();
    assert!(
        b.dead_nodes().await.unwrap().is_empty(),
        "a left: not dead, gone"
    );
    assert_eq!(a.renew().await, Err(ClusterError::LeaseLost));
}
