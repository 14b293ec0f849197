//! Redis faults (issue 14) against a real redis-server that is SIGKILLed and restarted:
//! with its data (append-only file), nothing acknowledged is lost, nothing is appended
//! twice and the order never breaks, while every failure is reported as a typed error;
//! without its data, the room's epoch changes and every writer and reader reports it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chat_server::cluster::{Appended, Cluster, ClusterConfig, ClusterError, Progress};
use chat_tests::redis::{RedisServer, redis_or_skip};
use common::{WAIT, append_until_done, collect, config, member, node, say, text, transient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_sigkill_and_restart_during_appends_loses_and_repeats_nothing_acknowledged() {
    if redis_or_skip("a_redis_sigkill_and_restart_during_appends").is_none() {
        return;
    }
    let mut redis = RedisServer::start_persistent();
    let a = node(&redis, "a@localhost").await;
    let b = node(&redis, "b@localhost").await;
    let alice = member(&a, "alice").await;
    let bob = member(&b, "bob").await;
    let mut reader = b.follow(1).unwrap();
    const EACH: u64 = 200;
    // The reader follows the whole time, through the outage.
    let reading = tokio::spawn(async move { collect(&mut reader, 2 * EACH + 2).await });
    let (acked, mut progress) = tokio::sync::watch::channel(0u64);
    let writer = |node: Cluster, session, progress: Option<tokio::sync::watch::Sender<u64>>| {
        tokio::spawn(async move {
            let mut acks = Vec::new();
            let mut failures = 0;
            for i in 1..=EACH {
                let (seq, failed) =
                    append_until_done(&node, &say(session, i, &format!("{session}:{i}"))).await;
                failures += failed;
                acks.push((i, seq));
                if let Some(p) = &progress {
                    p.send_replace(i);
                }
            }
            (acks, failures)
        })
    };
    let wa = writer(a.clone(), alice, Some(acked));
    let wb = writer(b.clone(), bob, None);
    // Kill Redis a third of the way in, while both write, then bring it back.
    progress.wait_for(|&n| n >= EACH / 3).await.unwrap();
    let redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let (acks_a, failures_a) = wa.await.unwrap();
    let (acks_b, failures_b) = wb.await.unwrap();
    assert!(
        failures_a + failures_b > 0,
        "the outage was reported to the writers"
    );

    let head = a.head().await.unwrap();
    assert_eq!(head, 2 * EACH + 2, "two joins and each message once");
    let stored = a.range(1, 10_000).await.unwrap();
    let seqs: Vec<u64> = stored.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "gap-free after the restart"
    );
    let by_seq: HashMap<u64, String> = stored.iter().map(|e| (e.seq, text(e))).collect();
    for (session, acks) in [(alice, &acks_a), (bob, &acks_b)] {
        for (i, seq) in acks {
            assert_eq!(
                by_seq.get(seq),
                Some(&format!("{session}:{i}")),
                "acknowledged message {session}:{i} is where it was acknowledged"
            );
        }
        assert!(
            acks.windows(2).all(|w| w[0].1 < w[1].1),
            "one writer's order holds"
        );
    }
    let (read, interruptions) = reading.await.unwrap();
    assert_eq!(
        read, stored,
        "the reader went on from where it was, nothing skipped or repeated"
    );
    assert!(interruptions > 0, "the reader reported the outage");
    drop(redis);
}

#[tokio::test]
async fn a_redis_restarted_empty_is_a_new_epoch_that_writers_and_readers_report() {
    let Some(mut redis) = redis_or_skip("a_redis_restarted_empty_is_a_new_epoch") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let alice = member(&a, "alice").await;
    a.append(&say(alice, 1, "before")).await.unwrap();
    let mut reader = a.follow(1).unwrap();
    collect(&mut reader, 2).await;
    let old = a.epoch();

    let redis_port = redis.port();
    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis.restart();
        redis
    })
    .await
    .unwrap();
    assert_eq!(redis.port(), redis_port);

    // The writer: refused, not renumbered from 1.
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            match a.append(&say(alice, 2, "after")).await {
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(a.ready_in().await.max(Duration::from_millis(1))).await
                }
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        refused,
        Err(ClusterError::EpochChanged {
            expected: old,
            found: None
        })
    );
    // The reader: told, and stops.
    let told = tokio::time::timeout(WAIT, async {
        loop {
            match reader.next().await {
                Ok(Progress::Interrupted(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(told, Err(ClusterError::EpochChanged { expected, found: None }) if expected == old),
        "{told:?}"
    );
    // Every other call says so too.
    assert!(matches!(
        a.snapshot(1).await,
        Err(ClusterError::EpochChanged { .. })
    ));
    assert!(matches!(a.renew().await, Err(ClusterError::LeaseLost)));

    // Connecting again starts a new epoch, and another node that comes later sees the
    // entries of the new epoch, which the old handle never reads as its own.
    let fresh = node(&redis, "a@localhost").await;
    assert_ne!(fresh.epoch(), old);
    let alice2 = member(&fresh, "alice").await;
    assert_eq!(
        fresh.append(&say(alice2, 1, "new")).await.unwrap(),
        Appended::At(2)
    );
    assert!(matches!(
        a.range(1, 10).await,
        Err(ClusterError::EpochChanged { .. })
    ));
    let later = node(&redis, "b@localhost").await;
    assert_eq!(later.epoch(), fresh.epoch());
}

#[tokio::test]
async fn an_unreachable_redis_gives_typed_errors_at_once_and_the_handle_recovers() {
    let Some(mut redis) = redis_or_skip("an_unreachable_redis_gives_typed_errors") else {
        return;
    };
    // Nobody listens here: connecting fails as unreachable.
    let nowhere = ClusterConfig {
        url: format!("redis://127.0.0.1:{}/", redis.port()),
        ..config(&redis)
    };
    let (a, alice) = {
        let a = node(&redis, "a@localhost").await;
        let alice = member(&a, "alice").await;
        (a, alice)
    };
    let mut reader = a.follow(1).unwrap();
    collect(&mut reader, 1).await;
    redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    assert!(matches!(
        Cluster::connect(nowhere.clone(), "b@localhost").await,
        Err(ClusterError::Unavailable(_))
    ));
    // Every call fails with a transient error, none hangs or panics.
    let calls = async {
        assert!(transient(&a.append(&say(alice, 1, "x")).await));
        assert!(transient(&a.append(&say(alice, 1, "x")).await));
        assert!(transient(&a.join("bob", b"bob", &[0; 16], b"+").await));
        assert!(transient(&a.session(alice).await));
        assert!(transient(&a.snapshot(5).await));
        assert!(transient(&a.renew().await));
        assert!(transient(&a.dead_nodes().await));
        assert!(transient(&a.range(1, 5).await));
        match reader.next().await {
            Ok(Progress::Interrupted(e)) => assert!(e.is_transient(), "{e}"),
            other => panic!("the reader should report the outage: {other:?}"),
        }
    };
    tokio::time::timeout(WAIT, calls)
        .await
        .expect("a call hung while Redis was down");

    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    // Redis came back empty: the same handle reconnects on its own and finds the
    // epoch gone (the persistent case is the test above).
    let back = tokio::time::timeout(WAIT, async {
        loop {
            match a.head().await {
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(a.ready_in().await.max(Duration::from_millis(1))).await
                }
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(back, Ok(0), "reconnected");
    assert!(matches!(
        a.append(&say(alice, 1, "x")).await,
        Err(ClusterError::EpochChanged { .. })
    ));
    drop(redis);
}
