//! Sessions and members across nodes (issue 14) against a real redis-server: a session
//! is readable everywhere, resumes on another node (the old node is told through the
//! stream and can no longer speak for it), and expires after the resume window once
//! departed; every node derives the same members from a snapshot and the stream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chat_server::cluster::{Appended, Control, Departed, LogBody, Members, Presence, Resume};
use chat_tests::redis::redis_or_skip;
use common::{WAIT, collect, config, member, node, node_with, say, secret};

fn joined(nick: &str) -> Bytes {
    Bytes::from(format!("+{nick}"))
}

#[tokio::test]
async fn a_session_resumes_on_another_node_and_the_old_node_is_told() {
    let Some(redis) = redis_or_skip("a_session_resumes_on_another_node") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let b = node(&redis, "b@localhost").await;
    let alice = member(&a, "alice").await;
    assert_eq!(
        a.append(&say(alice, 1, "hi")).await.unwrap(),
        Appended::At(2)
    );

    let record = b.session(alice).await.unwrap().expect("readable on b");
    assert_eq!(record.nick, "alice");
    assert_eq!(record.node, *a.node());
    assert!(record.in_room);
    assert_eq!(record.departed_at_ms, None);
    assert_eq!(record.last_msg, (1, 2));
    assert!(record.verify(&secret("alice")));
    assert!(!record.verify(&secret("mallory")));

    assert_eq!(
        b.resume(alice, &secret("mallory"), joined).await.unwrap(),
        Resume::UnknownSession,
        "a wrong secret is an unknown session"
    );
    assert_eq!(
        b.resume(999, &secret("alice"), joined).await.unwrap(),
        Resume::UnknownSession
    );

    let mut reader = a.follow(3).unwrap();
    let Resume::Resumed(resumed) = b.resume(alice, &secret("alice"), joined).await.unwrap() else {
        panic!("resume refused");
    };
    assert!(!resumed.rejoined, "it never left the room");
    assert_eq!(resumed.from, *a.node());
    assert_eq!(
        resumed.last_msg,
        (1, 2),
        "so b acknowledges a resent message"
    );
    let (entries, _) = collect(&mut reader, resumed.seq).await;
    assert_eq!(
        entries.last().unwrap().body,
        LogBody::Control(Control::TakenOver {
            session: alice,
            from: a.node().as_str().to_string(),
            to: b.node().as_str().to_string(),
        }),
        "the old node reads, in order, that its connection is stale"
    );

    // The old node can no longer speak or depart for it; the new one can.
    assert_eq!(
        a.append(&say(alice, 2, "stale")).await.unwrap(),
        Appended::NotHere
    );
    assert_eq!(
        a.depart(alice, true, |_| Bytes::new()).await.unwrap(),
        Departed::NotHere
    );
    assert_eq!(
        b.append(&say(alice, 1, "hi")).await.unwrap(),
        Appended::Repeated(2),
        "the message id survives the move"
    );
    assert!(matches!(
        b.append(&say(alice, 2, "from b")).await.unwrap(),
        Appended::At(_)
    ));

    // Departed (a dropped link): the nick is free at once, the session resumable.
    let left = b
        .depart(alice, true, |n| Bytes::from(format!("-{n}")))
        .await
        .unwrap();
    assert!(matches!(left, Departed::Left { ref nick, .. } if nick == "alice"));
    let record = a.session(alice).await.unwrap().unwrap();
    assert!(!record.in_room);
    assert!(record.departed_at_ms.is_some());
    assert_eq!(a.nick_holder(b"alice").await.unwrap(), None);

    // Back on a: rejoined, announced with a join.
    let Resume::Resumed(back) = a.resume(alice, &secret("alice"), joined).await.unwrap() else {
        panic!("resume refused");
    };
    assert!(back.rejoined);
    let entry = &a.range(back.seq, 1).await.unwrap()[0];
    assert_eq!(
        entry.event().unwrap().presence,
        Some(Presence::Joined {
            session: alice,
            nick: "alice".into()
        })
    );
    assert_eq!(a.nick_holder(b"alice").await.unwrap(), Some(alice));

    // Departed again, and someone else takes the nick: the resume is refused.
    a.depart(alice, true, |_| Bytes::new()).await.unwrap();
    let other = member(&b, "alice").await;
    assert_ne!(other, alice);
    assert_eq!(
        a.resume(alice, &secret("alice"), joined).await.unwrap(),
        Resume::NickInUse
    );
}

#[tokio::test]
async fn a_departed_session_expires_after_the_resume_window_and_a_left_one_at_once() {
    let Some(redis) = redis_or_skip("a_departed_session_expires") else {
        return;
    };
    let mut settings = config(&redis);
    settings.resume_window = Duration::from_millis(200);
    let a = node_with(settings, "a@localhost").await;
    let alice = member(&a, "alice").await;
    let bob = member(&a, "bob").await;
    a.depart(bob, false, |_| Bytes::new()).await.unwrap();
    assert_eq!(
        a.session(bob).await.unwrap(),
        None,
        "a leave on purpose forgets the session"
    );
    a.depart(alice, true, |_| Bytes::new()).await.unwrap();
    assert!(
        a.session(alice).await.unwrap().is_some(),
        "resumable for a while"
    );
    tokio::time::timeout(WAIT, async {
        while a.session(alice).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the departed session never expired");
    assert_eq!(
        a.resume(alice, &secret("alice"), joined).await.unwrap(),
        Resume::UnknownSession
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_derives_the_same_members_from_a_snapshot_and_the_stream() {
    let Some(redis) = redis_or_skip("every_node_derives_the_same_members") else {
        return;
    };
    let a = node(&redis, "a@localhost").await;
    let b = node(&redis, "b@localhost").await;
    let mut from_start = Members::default();
    let mut reader = a.follow(1).unwrap();
    let mut sessions = Vec::new();
    let mut late: Option<(Members, chat_server::cluster::Follower)> = None;
    for round in 0..60u64 {
        let node = if round % 2 == 0 { &a } else { &b };
        if round % 3 == 2 && !sessions.is_empty() {
            let (session, holder): (u64, usize) =
                sessions.remove((round as usize * 7) % sessions.len());
            [&a, &b][holder]
                .depart(session, round % 2 == 0, |_| Bytes::new())
                .await
                .unwrap();
        } else {
            let session = member(node, &format!("n{round}")).await;
            sessions.push((session, (round % 2) as usize));
        }
        if round == 30 {
            // A node starting halfway: the snapshot, then the stream after its head.
            let snapshot = b.snapshot(5).await.unwrap();
            let follower = b.follow(snapshot.head + 1).unwrap();
            late = Some((Members::new(snapshot.members, snapshot.head), follower));
        }
    }
    let head = a.head().await.unwrap();
    let (entries, _) = collect(&mut reader, head).await;
    for entry in &entries {
        from_start.apply(entry);
    }
    let (mut halfway, mut follower) = late.unwrap();
    let (rest, _) = collect(&mut follower, head).await;
    for entry in &rest {
        halfway.apply(entry);
    }
    let now = a.snapshot(0).await.unwrap();
    let now = Members::new(now.members, now.head);
    assert_eq!(
        from_start, now,
        "the whole stream gives the members Redis holds"
    );
    assert_eq!(
        halfway, now,
        "a snapshot plus the stream after it gives the same"
    );
    let nicks: Vec<&str> = now.nicks().collect();
    assert_eq!(nicks.len(), sessions.len());
    assert!(nicks.windows(2).all(|w| w[0] < w[1]), "sorted for /users");
}
