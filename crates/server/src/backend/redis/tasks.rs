//! The Redis backend's tasks: everything that awaits Redis, off the registry.
//!
//! Each task runs one call (or one long job: connecting, following the stream, the
//! lease) against [`Cluster`] and posts what came of it as [`Note`] mail to the
//! registry's inbox, tagged with the backend's generation so that results from before a
//! restart are recognised and dropped. Stream entries are decoded and encoded as room
//! events here, so the registry only appends them.

use std::time::Duration;

use bytes::Bytes;
use protocol::codec;
use protocol::{Event, EventKind, LeaveReason};
use tokio_util::sync::CancellationToken;

use super::Note;
use crate::backend::{Body, Change, Mail, Ordered, Origin, Snapshot};
use crate::cluster::{
    self, Appended, Cluster, ClusterConfig, ClusterError, Control, Departed, Follower, LogBody,
    LogEntry, NewEvent, Presence, Progress, Resume, escape,
};
use crate::history::SessionId;
use crate::peer::{FrameArena, RoomEvent};
use crate::registry::MailSender;

/// An event kind as the stream keeps it: its encoding, without a frame header.
pub(super) fn payload(kind: &EventKind) -> Bytes {
    match codec::encode_frame(kind) {
        Ok(frame) => frame.slice(codec::HEADER_LEN..),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a room event for Redis");
            Bytes::new()
        }
    }
}

/// The payload of a departure of `nick` for `reason`.
pub(super) fn left_payload(nick: &str, reason: LeaveReason) -> Bytes {
    payload(&EventKind::Left {
        nick: nick.to_string(),
        reason,
    })
}

/// A stream entry as the registry applies it. `node` is this node's id: entries it
/// appended are acknowledged here, and a take-over from it closes a stale connection.
pub(super) fn ordered(entry: LogEntry, node: &str, arena: Option<&mut FrameArena>) -> Ordered {
    let seq = entry.seq;
    let body = match entry.body {
        LogBody::Event(room) => {
            let kind = match codec::decode::<EventKind>(&room.payload) {
                Ok(kind) => kind,
                Err(e) => {
                    tracing::warn!(seq, error = %escape(&e.to_string()), "an unreadable room event in Redis; skipped");
                    return Ordered {
                        seq,
                        body: Body::Skip,
                    };
                }
            };
            let event = match arena {
                Some(arena) => RoomEvent::new_in(Event { seq, kind }, arena),
                None => RoomEvent::new(Event { seq, kind }),
            };
            match event {
                Ok(event) => Body::Event {
                    event,
                    audience: room.audience,
                    kind: room.kind,
                    origin: Origin {
                        here: room.origin.node == node,
                        session: room.origin.session,
                        msg_id: room.origin.msg_id,
                    },
                    change: room.presence.map(|p| match p {
                        Presence::Joined { session, nick } => Change::Joined {
                            session,
                            nick,
                            node: room.origin.node.clone(),
                        },
                        Presence::Left { session, nick } => Change::Left { session, nick },
                    }),
                },
                Err(e) => {
                    tracing::warn!(seq, error = %e, "cannot encode a room event from Redis; skipped");
                    Body::Skip
                }
            }
        }
        LogBody::Control(Control::TakenOver { session, from, .. }) => Body::TakenOver {
            session,
            from_here: from == node,
        },
        LogBody::Unreadable(why) => {
            tracing::warn!(seq, why = %why, "an unreadable entry in the room's stream; skipped");
            Body::Skip
        }
    };
    Ordered { seq, body }
}

/// Posts `note`; false once the registry is gone.
async fn post(mail: &MailSender, note: Note) -> bool {
    mail.send(Mail::new(note)).await.is_ok()
}

/// Connects (again, after a backoff, until it works or `stop`), reads a snapshot,
/// posts it, then follows the stream from there until `stop` or the stream is gone.
pub(super) async fn connect_and_follow(
    config: ClusterConfig,
    name: String,
    recent: usize,
    mail: MailSender,
    generation: u64,
    stop: CancellationToken,
) {
    let mut delay = config.backoff_min;
    let mut failures: u32 = 0;
    let (cluster, snapshot, follower) = loop {
        let attempt = async {
            let cluster = Cluster::connect(config.clone(), &name).await?;
            let snapshot = cluster.snapshot(recent).await?;
            let follower = cluster.follow(snapshot.head + 1)?;
            Ok::<_, ClusterError>((cluster, snapshot, follower))
        };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = attempt => result,
        };
        match result {
            Ok(connected) => break connected,
            Err(e) => {
                if failures.is_multiple_of(20) {
                    tracing::warn!(error = %e, "cannot reach the cluster's Redis; retrying");
                }
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(config.backoff_max);
            }
        }
    };
    let node = cluster.node().as_str().to_string();
    let mut arena = FrameArena::default();
    let recent = snapshot
        .recent
        .into_iter()
        .map(|entry| ordered(entry, &node, Some(&mut arena)))
        .collect();
    let start = Snapshot {
        head: snapshot.head,
        members: snapshot.members,
        recent,
    };
    let connected = Note::Connected {
        generation,
        cluster,
        snapshot: Box::new(start),
    };
    if !post(&mail, connected).await {
        return;
    }
    follow(follower, &node, &mail, generation, &stop).await;
}

/// Feeds the stream's entries, in order, to the registry.
async fn follow(
    mut follower: Follower,
    node: &str,
    mail: &MailSender,
    generation: u64,
    stop: &CancellationToken,
) {
    let mut arena = FrameArena::default();
    loop {
        let progress = tokio::select! {
            () = stop.cancelled() => return,
            progress = follower.next() => progress,
        };
        let note = match progress {
            Ok(Progress::Entries(entries)) => Note::Entries {
                generation,
                entries: entries
                    .into_iter()
                    .map(|entry| ordered(entry, node, Some(&mut arena)))
                    .collect(),
            },
            Ok(Progress::Lost { from, to }) => Note::Lost {
                generation,
                from,
                to,
            },
            Ok(Progress::Interrupted(error)) => Note::Interrupted { generation, error },
            Err(error) => {
                let _ = post(mail, Note::Gone { generation, error }).await;
                return;
            }
        };
        if !post(mail, note).await {
            return;
        }
    }
}

/// Waits until Redis answers again, then posts [`Note::Up`].
pub(super) async fn probe(
    cluster: Cluster,
    mail: MailSender,
    generation: u64,
    stop: CancellationToken,
) {
    let pause = cluster.config().backoff_min.max(Duration::from_millis(10));
    loop {
        let wait = cluster.ready_in().await.max(pause);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        if cluster.head().await.is_ok() {
            let _ = post(&mail, Note::Up { generation }).await;
            return;
        }
    }
}

/// Renews the lease and releases the members of nodes whose lease expired.
pub(super) async fn tick(cluster: Cluster, mail: MailSender, generation: u64) {
    let result = async {
        cluster.renew().await?;
        for dead in cluster.dead_nodes().await? {
            if let Some(reaped) = cluster
                .reap(&dead, |nick| {
                    left_payload(nick, LeaveReason::ConnectionLost)
                })
                .await?
            {
                tracing::info!(
                    node = %reaped.node,
                    members = reaped.departed.len(),
                    "released the members of a node whose lease expired"
                );
            }
        }
        Ok::<_, ClusterError>(())
    }
    .await;
    let _ = post(&mail, Note::Ticked { generation, result }).await;
}

/// Joins `nick` as a new session. A join that may or may not have been made is
/// answered as not made, and its session departed (once Redis answers) so it does not
/// linger in the room.
pub(super) async fn join(
    cluster: Cluster,
    mail: MailSender,
    generation: u64,
    conn: crate::peer::ConnId,
    nick: String,
    key: String,
    secret: [u8; 16],
) {
    let joined = payload(&EventKind::Joined { nick: nick.clone() });
    let (result, undo) = match cluster.new_session().await {
        Ok(session) => {
            let result = cluster
                .join_as(session, &nick, key.as_bytes(), &secret, &joined)
                .await;
            let undo = matches!(result, Err(ClusterError::Indeterminate(_))).then_some(session);
            (result, undo)
        }
        Err(e) => (Err(e), None),
    };
    let note = Note::JoinDone {
        generation,
        conn,
        nick: nick.clone(),
        secret,
        result,
    };
    if !post(&mail, note).await {
        return;
    }
    if let Some(session) = undo {
        undo_join(&cluster, session, &nick).await;
    }
}

/// Departs `session` (a join that may have been made) until Redis says it is gone.
async fn undo_join(cluster: &Cluster, session: SessionId, nick: &str) {
    let pause = cluster.config().backoff_min.max(Duration::from_millis(10));
    for _ in 0..100 {
        match cluster
            .depart(session, false, |n| {
                left_payload(n, LeaveReason::ConnectionLost)
            })
            .await
        {
            Ok(_) => return,
            Err(e) if e.is_transient() => {
                tokio::time::sleep(cluster.ready_in().await.max(pause)).await;
            }
            Err(e) => {
                tracing::warn!(
                    nick = %escape(nick),
                    error = %e,
                    "cannot undo a join that may have been made"
                );
                return;
            }
        }
    }
}

/// What one queued operation of a session came to.
#[derive(Debug)]
pub(super) enum Outcome {
    /// An append.
    Appended(Result<Appended, ClusterError>),
    /// A departure.
    Departed(Result<Departed, ClusterError>),
    /// A resume, with what the client missed from before the local history.
    Resumed(Result<(Resume, Older), ClusterError>),
}

/// Events a resuming client missed from before the local history.
#[derive(Debug, Default)]
pub(super) struct Older {
    /// The events Redis still had, in order.
    pub(super) entries: Vec<Ordered>,
    /// The last number asked for.
    pub(super) upto: u64,
    /// Numbers asked for that Redis no longer had.
    pub(super) lost: u64,
}

/// Appends one event.
pub(super) async fn append(cluster: Cluster, event: NewEvent) -> Outcome {
    Outcome::Appended(cluster.append(&event).await)
}

/// Departs one session.
pub(super) async fn depart(cluster: Cluster, session: SessionId, reason: LeaveReason) -> Outcome {
    let resumable = reason != LeaveReason::Left;
    Outcome::Departed(
        cluster
            .depart(session, resumable, |nick| left_payload(nick, reason))
            .await,
    )
}

/// Resumes a session here, then reads what its client missed before `oldest_local`.
pub(super) async fn resume(
    cluster: Cluster,
    session: SessionId,
    secret: [u8; 16],
    last_seq: u64,
    oldest_local: u64,
) -> Outcome {
    let result = cluster
        .resume(session, &secret, |nick| {
            payload(&EventKind::Joined {
                nick: nick.to_string(),
            })
        })
        .await;
    let resume = match result {
        Ok(resume) => resume,
        Err(e) => return Outcome::Resumed(Err(e)),
    };
    let mut older = Older {
        upto: last_seq,
        ..Older::default()
    };
    let upto = oldest_local.saturating_sub(1);
    if matches!(resume, Resume::Resumed(_)) && last_seq < upto {
        older.upto = upto;
        older_events(&cluster, last_seq, upto, &mut older).await;
    }
    Outcome::Resumed(Ok((resume, older)))
}

/// Reads entries `last_seq + 1 ..= upto` into `older`, counting what Redis no longer
/// has (or could not be read) as lost. Bounded by the stream's own length.
async fn older_events(cluster: &Cluster, last_seq: u64, upto: u64, older: &mut Older) {
    let node = cluster.node().as_str().to_string();
    // The stream keeps about `history` entries: anything further back is gone.
    let keep = u64::try_from(cluster.config().history.saturating_mul(2)).unwrap_or(u64::MAX);
    let mut from = last_seq + 1;
    if upto - last_seq > keep {
        from = upto + 1 - keep;
        older.lost += from - (last_seq + 1);
    }
    while from <= upto {
        let want = usize::try_from(upto - from + 1)
            .unwrap_or(usize::MAX)
            .min(cluster::MAX_RANGE);
        let batch = match cluster.range(from, want).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::info!(error = %e, "cannot read a resuming client's older events");
                break;
            }
        };
        if batch.is_empty() {
            break;
        }
        for entry in batch {
            if entry.seq > upto {
                from = upto + 1;
                break;
            }
            if entry.seq < from {
                continue;
            }
            older.lost += entry.seq - from;
            from = entry.seq + 1;
            older.entries.push(ordered(entry, &node, None));
        }
    }
    if from <= upto {
        older.lost += upto - from + 1;
    }
}

/// Lets go of the room at shutdown: the lease goes, so the others release whoever did
/// not resume elsewhere at their next tick.
pub(super) async fn leave(cluster: Cluster, done: tokio::sync::oneshot::Sender<()>) {
    let wait = cluster.config().response_timeout;
    match tokio::time::timeout(wait, cluster.leave_cluster()).await {
        Ok(Ok(())) => tracing::info!("left the cluster"),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot leave the cluster cleanly"),
        Err(_) => tracing::warn!("Redis did not answer in time; leaving the cluster anyway"),
    }
    let _ = done.send(());
}
