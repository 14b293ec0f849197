//! Says and private messages from the moment they are typed until the server
//! acknowledges them.
//!
//! Every say and `/pm` gets an id, strictly increasing within the session, and waits in
//! one bounded queue ([`QUEUE_LIMIT`]) until the server answers `Sent { id }`. The
//! current connection's writer takes the entries in order (see [`Sends::take_next`]);
//! after a resume every entry still waiting is sent again with its id, and the server
//! drops the ones it already has. Lines typed while disconnected wait in the same queue.
//!
//! The server answers in order, so an acknowledgement for id `k` means that everything
//! before `k` that is still waiting never made it: the server refused it (a reason it
//! explained, such as an invalid text, or the flood limit, which it explains only once
//! per run of refusals). What never made it is counted in an [`Undelivered`] report.
//!
//! Every change bumps a version on a watch channel, so a writer waiting for something
//! to send and a front end waiting for room both wake up.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use protocol::ClientMessage;
use tokio::sync::watch;

/// Most says and private messages waiting for their acknowledgement at once.
pub const QUEUE_LIMIT: usize = 100;

/// What did not reach the server, counted over the session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Undelivered {
    /// Dropped by the server's flood limit (refused without another explanation).
    pub flood: u32,
    /// Sent, but never acknowledged: they may or may not have reached the room.
    pub unacknowledged: u32,
    /// Never sent: the queue was full, or the client was not in the room or quit first.
    pub not_sent: u32,
}

impl Undelivered {
    /// Whether everything was delivered.
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// All messages that did not make it.
    pub fn total(&self) -> u32 {
        self.flood
            .saturating_add(self.unacknowledged)
            .saturating_add(self.not_sent)
    }
}

/// The queue is full ([`QUEUE_LIMIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// One say or private message waiting for its acknowledgement.
#[derive(Debug)]
struct Entry {
    id: u64,
    msg: ClientMessage,
    /// Written on some connection (so the server may have it).
    sent: bool,
    /// Typed while disconnected: the user is told when it went out.
    typed_away: bool,
}

#[derive(Debug, Default)]
struct Inner {
    /// The id of the last entry queued.
    last_id: u64,
    queue: VecDeque<Entry>,
    /// The connection whose writer takes entries (0: none yet).
    link: u64,
    /// How many entries at the front were written on `link`.
    cursor: usize,
    /// Refusals the server explained (an invalid text, not in the room) and that are
    /// not yet matched to an entry.
    explained: u32,
    /// Entries typed while away and acknowledged since the user was last told.
    away_sent: u32,
    report: Undelivered,
}

/// The session's queue of says and private messages not yet acknowledged.
#[derive(Debug)]
pub(crate) struct Sends {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
}

impl Default for Sends {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            version: watch::Sender::new(0),
        }
    }
}

impl Sends {
    /// A receiver that sees a new version after every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Wakes everyone watching (when the connection changes).
    pub(crate) fn touch(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Queues the message `make` builds with the next id. `typed_away`: the user typed
    /// it while disconnected. Returns how many messages wait now.
    pub(crate) fn push(
        &self,
        make: impl FnOnce(u64) -> ClientMessage,
        typed_away: bool,
    ) -> Result<usize, Full> {
        let waiting = {
            let mut inner = self.lock();
            if inner.queue.len() >= QUEUE_LIMIT {
                return Err(Full);
            }
            inner.last_id += 1;
            let id = inner.last_id;
            inner.queue.push_back(Entry {
                id,
                msg: make(id),
                sent: false,
                typed_away,
            });
            inner.queue.len()
        };
        self.touch();
        Ok(waiting)
    }

    /// How many messages wait for their acknowledgement.
    pub(crate) fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next message for connection `link` to write, marked as written; `None` when
    /// everything was written or another connection is the writer's.
    pub(crate) fn take_next(&self, link: u64) -> Option<ClientMessage> {
        let mut inner = self.lock();
        if inner.link != link {
            return None;
        }
        let cursor = inner.cursor;
        let entry = inner.queue.get_mut(cursor)?;
        entry.sent = true;
        let msg = entry.msg.clone();
        inner.cursor += 1;
        Some(msg)
    }

    /// Whether connection `link` has something to write.
    pub(crate) fn has_unsent(&self, link: u64) -> bool {
        let inner = self.lock();
        inner.link == link && inner.cursor < inner.queue.len()
    }

    /// The session was resumed on connection `link`: everything waiting is written
    /// again, with the same ids (the server drops what it already has).
    pub(crate) fn resume_on(&self, link: u64) {
        {
            let mut inner = self.lock();
            inner.link = link;
            inner.cursor = 0;
        }
        self.touch();
    }

    /// A new session started on connection `link` (a fresh join): the server cannot
    /// tell which of the messages written before it has, so those are given up as
    /// unacknowledged (sending them again could repeat them); the ones never written
    /// are kept and go out now. Returns how many were given up.
    pub(crate) fn start_on(&self, link: u64) -> u32 {
        let given_up = {
            let mut inner = self.lock();
            let before = inner.queue.len();
            inner.queue.retain(|e| !e.sent);
            let given_up = count(before - inner.queue.len());
            inner.report.unacknowledged = inner.report.unacknowledged.saturating_add(given_up);
            inner.link = link;
            inner.cursor = 0;
            inner.explained = 0;
            given_up
        };
        self.touch();
        given_up
    }

    /// The server acknowledged `id`. Returns, when this was the last of the messages
    /// typed while away, how many of those went out.
    pub(crate) fn acknowledged(&self, id: u64) -> Option<u32> {
        let away_done = {
            let mut inner = self.lock();
            let acked = inner.queue.partition_point(|e| e.id <= id);
            let mut away = false;
            for entry in inner.queue.drain(..acked).collect::<Vec<_>>() {
                if entry.id == id {
                    away = entry.typed_away;
                } else {
                    inner.refused();
                }
            }
            inner.cursor = inner.cursor.saturating_sub(acked);
            if away {
                inner.away_sent += 1;
            }
            let away_left = inner.queue.iter().any(|e| e.typed_away);
            (!away_left && inner.away_sent > 0).then(|| std::mem::take(&mut inner.away_sent))
        };
        self.touch();
        away_done
    }

    /// The server refused a message with a reason it told (an invalid text, not in the
    /// room); the entry is matched when a later acknowledgement passes it.
    pub(crate) fn explained_refusal(&self) {
        let mut inner = self.lock();
        inner.explained = inner.explained.saturating_add(1);
    }

    /// The server answered that nobody called `nick` is in the room: the first private
    /// message to `nick` still waiting is done with.
    pub(crate) fn no_such_user(&self, nick: &str) {
        {
            let mut inner = self.lock();
            let cursor = inner.cursor;
            let found =
                inner.queue.iter().take(cursor).position(
                    |e| matches!(&e.msg, ClientMessage::Private { to, .. } if to == nick),
                );
            if let Some(index) = found {
                inner.queue.remove(index);
                inner.cursor -= 1;
            }
        }
        self.touch();
    }

    /// The server confirmed leaving the room, after everything written before: what
    /// was written and is still waiting was refused; what was not written never will be.
    pub(crate) fn settle_after_leaving(&self) {
        {
            let mut inner = self.lock();
            let queue = std::mem::take(&mut inner.queue);
            for entry in queue {
                if entry.sent {
                    inner.refused();
                } else {
                    inner.report.not_sent = inner.report.not_sent.saturating_add(1);
                }
            }
            inner.cursor = 0;
            inner.explained = 0;
        }
        self.touch();
    }

    /// Gives up on everything waiting (quitting, or no longer in the room); returns how
    /// many messages that was.
    pub(crate) fn abandon(&self) -> u32 {
        let abandoned = {
            let mut inner = self.lock();
            let queue = std::mem::take(&mut inner.queue);
            for entry in &queue {
                let report = &mut inner.report;
                if entry.sent {
                    report.unacknowledged = report.unacknowledged.saturating_add(1);
                } else {
                    report.not_sent = report.not_sent.saturating_add(1);
                }
            }
            inner.cursor = 0;
            count(queue.len())
        };
        self.touch();
        abandoned
    }

    /// Counts a message refused because the queue was full.
    pub(crate) fn refused_full(&self) {
        let mut inner = self.lock();
        inner.report.not_sent = inner.report.not_sent.saturating_add(1);
    }

    /// What did not make it so far, counting what still waits as not making it (the
    /// answer at the end of a session).
    pub(crate) fn report(&self) -> Undelivered {
        let inner = self.lock();
        let mut report = inner.report;
        for entry in &inner.queue {
            if entry.sent {
                report.unacknowledged = report.unacknowledged.saturating_add(1);
            } else {
                report.not_sent = report.not_sent.saturating_add(1);
            }
        }
        report
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every change completes under the lock before anything can panic: a poisoned
        // queue is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Inner {
    /// Counts one written message the server did not take.
    fn refused(&mut self) {
        if self.explained > 0 {
            self.explained -= 1;
        } else {
            self.report.flood = self.report.flood.saturating_add(1);
        }
    }
}

/// A queue length as a count (the queue is bounded far below `u32::MAX`).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(text: &str) -> impl FnOnce(u64) -> ClientMessage + '_ {
        move |id| ClientMessage::Say {
            id,
            text: text.into(),
        }
    }

    fn id_of(msg: &ClientMessage) -> u64 {
        match msg {
            ClientMessage::Say { id, .. } | ClientMessage::Private { id, .. } => *id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_increase_and_entries_go_out_once_per_connection() {
        let sends = Sends::default();
        sends.start_on(1);
        assert_eq!(sends.push(say("a"), false), Ok(1));
        assert_eq!(sends.push(say("b"), false), Ok(2));
        assert_eq!(sends.take_next(1).as_ref().map(id_of), Some(1));
        assert_eq!(sends.take_next(2), None, "not this connection's");
        assert_eq!(sends.take_next(1).as_ref().map(id_of), Some(2));
        assert_eq!(sends.take_next(1), None);
        assert!(!sends.has_unsent(1));
        assert_eq!(sends.acknowledged(1), None);
        assert_eq!(sends.len(), 1);
        // Resumed elsewhere: what waits is written again, with its id.
        sends.resume_on(2);
        assert_eq!(sends.take_next(2).as_ref().map(id_of), Some(2));
        assert_eq!(sends.acknowledged(2), None);
        assert!(sends.is_empty());
        assert!(sends.report().is_empty());
    }

    #[test]
    fn passed_over_entries_were_refused() {
        let sends = Sends::default();
        sends.start_on(1);
        for text in ["a", "b", "c", "d"] {
            sends.push(say(text), false).unwrap();
            sends.take_next(1).unwrap();
        }
        // "b" was an invalid text (explained), "c" fell to the flood limit.
        sends.explained_refusal();
        sends.acknowledged(1);
        sends.acknowledged(4);
        assert!(sends.is_empty());
        assert_eq!(
            sends.report(),
            Undelivered {
                flood: 1,
                ..Undelivered::default()
            }
        );
    }

    #[test]
    fn the_queue_is_bounded() {
        let sends = Sends::default();
        for _ in 0..QUEUE_LIMIT {
            sends.push(say("x"), true).unwrap();
        }
        assert_eq!(sends.push(say("x"), true), Err(Full));
        sends.refused_full();
        assert_eq!(sends.report().not_sent, QUEUE_LIMIT as u32 + 1);
        sends.abandon();
        assert_eq!(sends.report().not_sent, QUEUE_LIMIT as u32 + 1);
    }

    #[test]
    fn lines_typed_away_are_reported_once_all_went_out() {
        let sends = Sends::default();
        sends.start_on(1);
        sends.push(say("live"), false).unwrap();
        sends.take_next(1).unwrap();
        sends.push(say("away 1"), true).unwrap();
        sends.push(say("away 2"), true).unwrap();
        sends.resume_on(2);
        while sends.take_next(2).is_some() {}
        assert_eq!(sends.acknowledged(1), None);
        assert_eq!(sends.acknowledged(2), None);
        assert_eq!(sends.acknowledged(3), Some(2));
        assert_eq!(sends.acknowledged(3), None, "told once");
    }

    #[test]
    fn a_fresh_session_gives_up_what_was_written_and_sends_the_rest() {
        let sends = Sends::default();
        sends.start_on(1);
        sends.push(say("written"), false).unwrap();
        sends.take_next(1).unwrap();
        sends.push(say("typed away"), true).unwrap();
        assert_eq!(sends.start_on(2), 1);
        assert_eq!(sends.take_next(2).as_ref().map(id_of), Some(2));
        assert_eq!(sends.acknowledged(2), Some(1));
        assert_eq!(
            sends.report(),
            Undelivered {
                unacknowledged: 1,
                ..Undelivered::default()
            }
        );
    }

    #[test]
    fn no_such_user_takes_the_private_message_out() {
        let sends = Sends::default();
        sends.start_on(1);
        sends
            .push(
                |id| ClientMessage::Private {
                    id,
                    to: "bob".into(),
                    text: "psst".into(),
                },
                false,
            )
            .unwrap();
        sends.push(say("after"), false).unwrap();
        sends.take_next(1).unwrap();
        sends.take_next(1).unwrap();
        sends.no_such_user("bob");
        assert_eq!(sends.len(), 1);
        sends.acknowledged(2);
        assert!(sends.report().is_empty());
    }

    #[test]
    fn leaving_and_abandoning_settle_every_entry() {
        let sends = Sends::default();
        sends.start_on(1);
        sends.push(say("written"), false).unwrap();
        sends.take_next(1).unwrap();
        sends.push(say("not written"), false).unwrap();
        sends.settle_after_leaving();
        assert_eq!(
            sends.report(),
            Undelivered {
                flood: 1,
                unacknowledged: 0,
                not_sent: 1
            }
        );
        sends.push(say("written"), false).unwrap();
        sends.take_next(1).unwrap();
        sends.push(say("not written"), false).unwrap();
        assert_eq!(sends.abandon(), 2);
        assert_eq!(sends.report().total(), 4);
    }
}
