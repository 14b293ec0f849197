//! Shared by the cluster tests: a node on a test's own redis-server, events to append,
//! and readers that collect the stream with a deadline.

#![allow(dead_code)] // Each test file uses its own part of this.

use std::time::Duration;

use bytes::Bytes;
use chat_server::cluster::{
    AppendKind, Cluster, ClusterConfig, ClusterError, Follower, LogEntry, NewEvent, Progress,
};
use chat_server::history::{Audience, SessionId};
use chat_tests::redis::RedisServer;

/// The longest any awaited step of a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Settings for a test: quick reconnects, short idle reads, a long lease (no test
/// renews unless it is about leases).
pub fn config(redis: &RedisServer) -> ClusterConfig {
    let mut config = ClusterConfig::new(redis.url());
    config.connect_timeout = Duration::from_secs(2);
    config.response_timeout = Duration::from_secs(5);
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(200);
    config.read_block = Duration::from_millis(200);
    config.read_batch = 64;
    config.lease = Duration::from_secs(300);
    config
}

/// A node connected to `redis`.
pub async fn node(redis: &RedisServer, name: &str) -> Cluster {
    node_with(config(redis), name).await
}

/// A node with these settings.
pub async fn node_with(config: ClusterConfig, name: &str) -> Cluster {
    tokio::time::timeout(WAIT, Cluster::connect(config, name))
        .await
        .expect("connecting timed out")
        .unwrap_or_else(|e| panic!("{name} cannot connect: {e}"))
}

/// A session of `nick` joined through `node`; panics if the nick is taken.
pub async fn member(node: &Cluster, nick: &str) -> SessionId {
    match node
        .join(
            nick,
            nick.as_bytes(),
            &secret(nick),
            format!("+{nick}").as_bytes(),
        )
        .await
        .expect("join")
    {
        chat_server::cluster::Joined::Joined { session, .. } => session,
        other => panic!("{nick} could not join: {other:?}"),
    }
}

/// A secret made from a nick, so tests can present it again.
pub fn secret(nick: &str) -> [u8; 16] {
    let mut secret = [7u8; 16];
    for (i, b) in nick.bytes().enumerate().take(16) {
        secret[i] = b;
    }
    secret
}

/// Something said to the room by `session` with client id `msg_id`.
pub fn say(session: SessionId, msg_id: u64, text: &str) -> NewEvent {
    NewEvent {
        kind: AppendKind::Message,
        audience: Audience::Room { except: session },
        session,
        msg_id,
        payload: Bytes::from(text.to_string()),
    }
}

/// Reads until the reader's position passes `last`; panics on a loss or an error,
/// returns the entries and how many interruptions it reported.
pub async fn collect(follower: &mut Follower, last: u64) -> (Vec<LogEntry>, usize) {
    let mut entries = Vec::new();
    let mut interruptions = 0;
    let work = async {
        while follower.position() <= last {
            match follower.next().await {
                Ok(Progress::Entries(batch)) => entries.extend(batch),
                Ok(Progress::Interrupted(_)) => interruptions += 1,
                Ok(Progress::Lost { from, to }) => panic!("lost {from}..={to}"),
                Err(e) => panic!("reader failed: {e}"),
            }
        }
    };
    tokio::time::timeout(WAIT, work)
        .await
        .unwrap_or_else(|_| panic!("the reader did not reach {last} in time"));
    (entries, interruptions)
}

/// Appends `event`, retrying while Redis is unreachable (same message id, so a retry
/// of something that was in fact appended is recognised); returns the sequence number
/// and how many attempts failed.
pub async fn append_until_done(node: &Cluster, event: &NewEvent) -> (u64, usize) {
    let mut failures = 0;
    let work = async {
        loop {
            match node.append(event).await {
                Ok(chat_server::cluster::Appended::At(seq)) => return seq,
                Ok(chat_server::cluster::Appended::Repeated(seq)) if seq != 0 => return seq,
                Ok(other) => panic!("append of {} refused: {other:?}", event.msg_id),
                Err(e) if e.is_transient() => {
                    failures += 1;
                    tokio::time::sleep(node.ready_in().await.max(Duration::from_millis(1))).await;
                }
                Err(e) => panic!("append of {} failed: {e}", event.msg_id),
            }
        }
    };
    let seq = tokio::time::timeout(WAIT, work)
        .await
        .expect("an append did not get through in time");
    (seq, failures)
}

/// The payload of an entry as text ("" for anything but a room event).
pub fn text(entry: &LogEntry) -> String {
    entry
        .event()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .unwrap_or_default()
}

/// Whether an error says Redis could not be used right now.
pub fn transient(result: &Result<impl std::fmt::Debug, ClusterError>) -> bool {
    matches!(result, Err(e) if e.is_transient())
}
