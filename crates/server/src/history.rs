//! The room's history, which is also its fan-out queue.
//!
//! Every room event (and every private message) is encoded once and appended here with
//! its sequence number and its audience. Nobody pushes it to the members: each native
//! member's writer reads the history from its own cursor, copying the frames meant for
//! it into one contiguous buffer, and is woken when something is appended. A broadcast
//! therefore costs the registry one append and a wake-up, whatever the room's size, and
//! the copying is spread over the writers on every core.
//!
//! The history keeps the last events up to a count and a byte budget. What falls out of
//! it is gone: a member whose cursor is older than the oldest event kept is a slow
//! consumer, and a session resuming from before it learns how much it lost.
//!
//! Wake-ups go through a few relay tasks ([`Fanout`]): an append kicks each relay once,
//! and each relay wakes its group of writers, so the registry's cost per append does not
//! grow with the number of members and the wake-ups run on every core.
//!
//! Joins and departures are not urgent: when only they were appended, a relay waits a
//! while (the *presence linger*) for more before waking its writers, so that a crowd
//! joining or leaving costs each member one write per linger instead of one per
//! arrival. The linger grows with the room ([`PRESENCE_LINGER_PER_MEMBER`], at most
//! [`MAX_PRESENCE_LINGER`]): waking every member costs about a microsecond or two per
//! member, so a linger of 25 us per member keeps presence under a twentieth of a core
//! however fast people arrive; nobody notices a join shown a few milliseconds late in
//! a small room, or a quarter of a second late in a room of 10,000. Anything else (a
//! say, a private message, a notice) wakes the writers at once, and takes the presence
//! events waiting before it along, in order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// A session's number (see the registry): stays the same across reconnects.
pub type SessionId = u64;

/// How long a join or departure waits for company before its writers are woken, per
/// member of the room (see the module's documentation).
pub const PRESENCE_LINGER_PER_MEMBER: Duration = Duration::from_micros(25);

/// The longest a join or departure waits for company, whatever the room's size.
pub const MAX_PRESENCE_LINGER: Duration = Duration::from_millis(250);

/// The session number of the server itself (notices).
pub const SERVER_SESSION: SessionId = 0;

/// Who an event in the history is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every member of the room but `except` (the speaker, the one joining or leaving).
    Room {
        /// The session that does not receive it ([`SERVER_SESSION`] for nobody).
        except: SessionId,
    },
    /// One session alone (a private message).
    One(SessionId),
}

impl Audience {
    /// Whether `session` receives this event.
    pub fn includes(self, session: SessionId) -> bool {
        match self {
            Audience::Room { except } => except != session,
            Audience::One(to) => to == session,
        }
    }
}

/// What kind of event an entry holds, for the backlog and for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Something said to the room.
    Message,
    /// A join or a departure.
    Presence,
    /// A private message.
    Private,
    /// A server notice.
    Notice,
}

/// One event as kept: its number, its encoded native frame, who it is for.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Room sequence number.
    pub seq: u64,
    /// The whole native frame (length header and payload).
    pub frame: Bytes,
    /// Who receives it.
    pub audience: Audience,
    /// What it is.
    pub kind: EntryKind,
    /// Bytes appended to the history up to and including this entry (for lag in bytes).
    end_offset: u64,
}

/// How far a reader is behind the newest event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    /// Events after the reader's position.
    pub events: u64,
    /// Bytes of those events.
    pub bytes: u64,
    /// The reader's position is older than anything kept: it has lost events.
    pub fell_off: bool,
}

/// What a read into a writer's buffer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copied {
    /// Copied everything up to the requested limit; the reader's cursor is past it.
    UpTo(u64),
    /// The buffer budget ran out first; the cursor is where to continue.
    Partial(u64),
    /// The cursor is older than the oldest event kept.
    FellOff,
}

/// How a resuming session stands against the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed {
    /// Events for the session after its last seen one that are still kept.
    pub kept: u32,
    /// Events after its last seen one that are no longer kept (counted by number,
    /// whoever they were for: an upper bound).
    pub lost: u64,
    /// The newest sequence number now.
    pub head: u64,
    /// Where its reader should start.
    pub from: u64,
}

#[derive(Debug)]
struct State {
    entries: VecDeque<Entry>,
    /// Bytes held by `entries`.
    bytes: usize,
    /// Bytes ever appended.
    total_bytes: u64,
    /// The newest sequence number (0 before the first event).
    head: u64,
    /// The newest sequence number that fell out (0 if none).
    trimmed_to: u64,
}

/// The history of one room. Shared by the registry (the only writer of it) and every
/// member's writer task (readers).
#[derive(Debug)]
pub struct History {
    state: RwLock<State>,
    max_events: usize,
    max_bytes: usize,
    fanout: Fanout,
}

impl History {
    /// An empty history keeping at most `max_events` events and `max_bytes` bytes of
    /// frames; writers are woken through `groups` relays.
    pub fn new(max_events: usize, max_bytes: usize, groups: usize) -> Self {
        Self {
            state: RwLock::new(State {
                entries: VecDeque::new(),
                bytes: 0,
                total_bytes: 0,
                head: 0,
                trimmed_to: 0,
            }),
            max_events: max_events.max(1),
            max_bytes: max_bytes.max(1),
            fanout: Fanout::new(groups),
        }
    }

    /// Most events it keeps.
    pub fn max_events(&self) -> usize {
        self.max_events
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every critical section leaves the state whole; a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest sequence number (0 before the first event).
    pub fn head(&self) -> u64 {
        self.read().head
    }

    /// The number of the oldest event it can still hand out: everything before it has
    /// fallen out (or was never here).
    pub fn oldest(&self) -> u64 {
        self.read().trimmed_to + 1
    }

    /// Empties it and starts it again after event `base`: everything up to `base`
    /// counts as fallen out, so a reader still before it learns that it lost events.
    /// For a node that starts from a cluster's snapshot, or whose reader of the
    /// cluster's stream lost entries (then no reader may pass over them silently).
    pub fn restart_after(&self, base: u64) {
        {
            let mut state = self.write();
            state.entries.clear();
            state.bytes = 0;
            state.head = base;
            state.trimmed_to = base;
        }
        self.fanout.kick(true);
    }

    /// Appends an event numbered `seq` (above every earlier one), drops what no longer
    /// fits, and wakes the writers: at once, or within the presence linger for a
    /// [`EntryKind::Presence`] event.
    pub fn append(&self, seq: u64, frame: Bytes, audience: Audience, kind: EntryKind) {
        {
            let mut state = self.write();
            debug_assert!(seq > state.head, "sequence numbers only grow");
            state.total_bytes += frame.len() as u64;
            state.bytes += frame.len();
            state.head = seq;
            let end_offset = state.total_bytes;
            state.entries.push_back(Entry {
                seq,
                frame,
                audience,
                kind,
                end_offset,
            });
            while state.entries.len() > self.max_events
                || (state.bytes > self.max_bytes && state.entries.len() > 1)
            {
                if let Some(old) = state.entries.pop_front() {
                    state.bytes -= old.frame.len();
                    state.trimmed_to = old.seq;
                }
            }
        }
        self.fanout.kick(kind != EntryKind::Presence);
    }

    /// Tells the history how many members the room has, which sets the presence linger:
    /// [`PRESENCE_LINGER_PER_MEMBER`] each, at most [`MAX_PRESENCE_LINGER`].
    pub fn set_room_size(&self, members: usize) {
        let linger = PRESENCE_LINGER_PER_MEMBER
            .saturating_mul(u32::try_from(members).unwrap_or(u32::MAX))
            .min(MAX_PRESENCE_LINGER);
        let micros = u64::try_from(linger.as_micros()).unwrap_or(u64::MAX);
        self.fanout.linger_us.store(micros, Ordering::Relaxed);
    }

    /// How long presence events now wait for company (see [`History::set_room_size`]).
    pub fn presence_linger(&self) -> Duration {
        Duration::from_micros(self.fanout.linger_us.load(Ordering::Relaxed))
    }

    /// A future that completes after the next append, for a writer in group `group`.
    /// Enable it (or poll it once) before looking at the history, so that an append in
    /// between is not missed.
    pub fn changed(&self, group: usize) -> Notified<'_> {
        self.fanout.waiters(group).notified()
    }

    /// The relay group a writer numbered `n` waits in.
    pub fn group_of(&self, n: u64) -> usize {
        self.fanout.group_of(n)
    }

    /// Starts the wake-up relays (call once, inside the runtime).
    pub fn start_fanout(self: &Arc<Self>) {
        for group in 0..self.fanout.relays.len() {
            let history = Arc::clone(self);
            tokio::spawn(async move { history.fanout.relay(group).await });
        }
    }

    /// Copies into `out`, in order, the frames for `session` numbered from `*cursor` up
    /// to `upto` (inclusive), stopping once `out` holds `budget` bytes; advances `cursor`.
    pub fn copy_for(
        &self,
        session: SessionId,
        cursor: &mut u64,
        upto: u64,
        out: &mut BytesMut,
        budget: usize,
    ) -> Copied {
        let state = self.read();
        let upto = upto.min(state.head);
        if *cursor > upto {
            return Copied::UpTo(upto);
        }
        if *cursor <= state.trimmed_to {
            return Copied::FellOff;
        }
        let start = first_at_or_after(&state.entries, *cursor);
        for entry in state.entries.range(start..) {
            if entry.seq > upto {
                break;
            }
            if out.len() >= budget {
                *cursor = entry.seq;
                return Copied::Partial(entry.seq);
            }
            if entry.audience.includes(session) {
                out.put_slice(&entry.frame);
            }
        }
        *cursor = upto + 1;
        Copied::UpTo(upto)
    }

    /// How far a reader whose next event is `cursor` is behind.
    pub fn lag(&self, cursor: u64) -> Lag {
        let state = self.read();
        if cursor > state.head {
            return Lag {
                events: 0,
                bytes: 0,
                fell_off: false,
            };
        }
        if cursor <= state.trimmed_to {
            return Lag {
                events: state.head - cursor + 1,
                bytes: state.bytes as u64,
                fell_off: true,
            };
        }
        let start = first_at_or_after(&state.entries, cursor);
        let before = match start.checked_sub(1) {
            Some(i) => state.entries[i].end_offset,
            None => state.total_bytes - state.bytes as u64,
        };
        Lag {
            events: (state.entries.len() - start) as u64,
            bytes: state.total_bytes - before,
            fell_off: false,
        }
    }

    /// What `session`, which last saw `last_seq`, has missed.
    pub fn missed(&self, session: SessionId, last_seq: u64) -> Missed {
        let state = self.read();
        let from = (last_seq + 1).max(state.trimmed_to + 1);
        let lost = state.trimmed_to.saturating_sub(last_seq);
        let start = first_at_or_after(&state.entries, from);
        let kept = state
            .entries
            .range(start..)
            .filter(|e| e.audience.includes(session))
            .count();
        Missed {
            kept: u32::try_from(kept).unwrap_or(u32::MAX),
            lost,
            head: state.head,
            from,
        }
    }

    /// The frames of the last `count` messages said to the whole room up to number
    /// `upto` (oldest first), concatenated: a newcomer's backlog.
    pub fn backlog(&self, count: usize, upto: u64) -> Bytes {
        if count == 0 {
            return Bytes::new();
        }
        let state = self.read();
        let end = first_at_or_after(&state.entries, upto.saturating_add(1));
        let last: Vec<&Entry> = state
            .entries
            .range(..end)
            .rev()
            .filter(|e| e.kind == EntryKind::Message)
            .take(count)
            .collect();
        let mut out = BytesMut::with_capacity(last.iter().map(|e| e.frame.len()).sum());
        for entry in last.into_iter().rev() {
            out.put_slice(&entry.frame);
        }
        out.freeze()
    }
}

/// Index of the first entry numbered `seq` or later.
fn first_at_or_after(entries: &VecDeque<Entry>, seq: u64) -> usize {
    entries.partition_point(|e| e.seq < seq)
}

/// Wakes writers after an append, through one relay task per group.
#[derive(Debug)]
struct Fanout {
    /// Kicked by every append; each relay task waits on its own.
    relays: Box<[Notify]>,
    /// Set with a kick that is not to wait for the presence linger, one per relay.
    urgent: Box<[AtomicBool]>,
    /// The presence linger, in microseconds ([`History::set_room_size`]).
    linger_us: AtomicU64,
    /// Writers of each group wait here; its relay wakes them all.
    groups: Box<[Notify]>,
}

impl Fanout {
    fn new(groups: usize) -> Self {
        let groups = groups.max(1);
        Self {
            relays: (0..groups).map(|_| Notify::new()).collect(),
            urgent: (0..groups).map(|_| AtomicBool::new(false)).collect(),
            linger_us: AtomicU64::new(0),
            groups: (0..groups).map(|_| Notify::new()).collect(),
        }
    }

    fn group_of(&self, n: u64) -> usize {
        (n % self.groups.len() as u64) as usize
    }

    fn waiters(&self, group: usize) -> &Notify {
        &self.groups[group % self.groups.len()]
    }

    /// One cheap signal per relay; a relay that is busy keeps the permit and runs again.
    /// `urgent`: the writers are to be woken without lingering.
    fn kick(&self, urgent: bool) {
        for (relay, flag) in self.relays.iter().zip(self.urgent.iter()) {
            if urgent {
                flag.store(true, Ordering::Release);
            }
            relay.notify_one();
        }
    }

    async fn relay(&self, group: usize) {
        let (kicked, urgent) = (&self.relays[group], &self.urgent[group]);
        loop {
            kicked.notified().await;
            let linger = Duration::from_micros(self.linger_us.load(Ordering::Relaxed));
            if !urgent.swap(false, Ordering::AcqRel) && !linger.is_zero() {
                // Only presence so far: wait for company, or for something urgent.
                let deadline = tokio::time::Instant::now() + linger;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => break,
                        () = kicked.notified() => {
                            if urgent.swap(false, Ordering::AcqRel) {
                                break;
                            }
                        }
                    }
                }
            }
            self.groups[group].notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    fn room() -> Audience {
        Audience::Room { except: 0 }
    }

    #[test]
    fn readers_get_what_is_meant_for_them_in_order() {
        let history = History::new(100, 1 << 20, 1);
        history.append(
            1,
            frame(1, 3),
            Audience::Room { except: 7 },
            EntryKind::Message,
        );
        history.append(2, frame(2, 3), Audience::One(7), EntryKind::Private);
        history.append(3, frame(3, 3), Audience::One(8), EntryKind::Private);
        history.append(4, frame(4, 3), room(), EntryKind::Presence);
        let mut out = BytesMut::new();
        let mut cursor = 1;
        assert_eq!(
            history.copy_for(7, &mut cursor, u64::MAX, &mut out, 1 << 20),
            Copied::UpTo(4)
        );
        assert_eq!(&out[..], &[2, 2, 2, 4, 4, 4]);
        assert_eq!(cursor, 5);
        out.clear();
        let mut cursor = 1;
        history.copy_for(8, &mut cursor, 3, &mut out, 1 << 20);
        assert_eq!(&out[..], &[1, 1, 1, 3, 3, 3]);
        assert_eq!(cursor, 4);
    }

    #[test]
    fn a_full_budget_stops_the_copy_where_it_can_continue() {
        let history = History::new(100, 1 << 20, 1);
        for seq in 1..=10 {
            history.append(seq, frame(seq as u8, 4), room(), EntryKind::Message);
        }
        let mut out = BytesMut::new();
        let mut cursor = 1;
        assert_eq!(
            history.copy_for(9, &mut cursor, u64::MAX, &mut out, 8),
            Copied::Partial(3)
        );
        assert_eq!(out.len(), 8);
        out.clear();
        assert_eq!(
            history.copy_for(9, &mut cursor, u64::MAX, &mut out, 1000),
            Copied::UpTo(10)
        );
        assert_eq!(out.len(), 32);
    }

    #[test]
    fn old_events_fall_out_by_count_and_by_bytes() {
        let history = History::new(3, 10, 1);
        for seq in 1..=5 {
            history.append(seq, frame(0, 2), room(), EntryKind::Message);
        }
        let mut cursor = 2;
        let mut out = BytesMut::new();
        assert_eq!(
            history.copy_for(9, &mut cursor, u64::MAX, &mut out, 100),
            Copied::FellOff
        );
        assert!(history.lag(2).fell_off);
        assert_eq!(
            history.lag(4),
            Lag {
                events: 2,
                bytes: 4,
                fell_off: false
            }
        );
        history.append(6, frame(0, 9), room(), EntryKind::Message);
        // 9 bytes alone fit the 10-byte budget; the older ones went.
        assert_eq!(history.lag(6).events, 1);
        assert!(history.lag(5).fell_off);
    }

    #[test]
    fn a_resume_counts_what_was_kept_and_what_was_lost() {
        let history = History::new(3, 1 << 20, 1);
        for seq in 1..=6 {
            let audience = if seq == 5 { Audience::One(8) } else { room() };
            history.append(seq, frame(0, 1), audience, EntryKind::Message);
        }
        let missed = history.missed(7, 1);
        assert_eq!(missed.lost, 2, "events 2 and 3 are gone");
        assert_eq!(missed.kept, 2, "4 and 6; 5 was for someone else");
        assert_eq!(missed.from, 4);
        assert_eq!(missed.head, 6);
        let none = history.missed(7, 6);
        assert_eq!((none.kept, none.lost, none.from), (0, 0, 7));
    }

    #[test]
    fn the_backlog_holds_the_last_room_messages() {
        let history = History::new(100, 1 << 20, 1);
        history.append(1, frame(1, 1), room(), EntryKind::Message);
        history.append(2, frame(2, 1), room(), EntryKind::Presence);
        history.append(3, frame(3, 1), Audience::One(4), EntryKind::Private);
        history.append(4, frame(4, 1), room(), EntryKind::Message);
        assert_eq!(&history.backlog(10, 4)[..], &[1, 4]);
        assert_eq!(&history.backlog(1, 4)[..], &[4]);
        assert!(history.backlog(0, 4).is_empty());
        // A member that joined at 3 does not get 4 as earlier: it reads it live.
        assert_eq!(&history.backlog(10, 3)[..], &[1]);
    }

    #[test]
    fn a_restart_counts_everything_before_it_as_lost() {
        let history = History::new(100, 1 << 20, 1);
        history.append(1, frame(1, 1), room(), EntryKind::Message);
        history.restart_after(40);
        assert_eq!((history.head(), history.oldest()), (40, 41));
        let mut cursor = 2;
        let mut out = BytesMut::new();
        let copied = history.copy_for(9, &mut cursor, u64::MAX, &mut out, 1 << 20);
        assert_eq!(copied, Copied::FellOff);
        history.append(41, frame(41, 1), room(), EntryKind::Message);
        let missed = history.missed(9, 30);
        assert_eq!((missed.kept, missed.lost, missed.from), (1, 10, 41));
    }

    #[tokio::test]
    async fn an_append_wakes_a_waiting_writer() {
        let history = Arc::new(History::new(10, 1000, 2));
        history.start_fanout();
        let waiter = {
            let history = history.clone();
            tokio::spawn(async move {
                let changed = history.changed(1);
                tokio::pin!(changed);
                changed.as_mut().enable();
                if history.head() == 0 {
                    changed.await;
                }
                history.head()
            })
        };
        tokio::task::yield_now().await;
        history.append(1, frame(1, 1), room(), EntryKind::Message);
        assert_eq!(waiter.await.unwrap(), 1);
    }

    /// Starts a task that waits for the history's next change in group 0, from head
    /// `seen`, and answers the head it then finds.
    fn wait_for_change(history: &Arc<History>, seen: u64) -> tokio::task::JoinHandle<u64> {
        let history = history.clone();
        tokio::spawn(async move {
            let changed = history.changed(0);
            tokio::pin!(changed);
            changed.as_mut().enable();
            if history.head() == seen {
                changed.await;
            }
            history.head()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn joins_and_departures_wake_writers_together_after_the_linger() {
        let history = Arc::new(History::new(100, 1 << 20, 1));
        history.start_fanout();
        history.set_room_size(400);
        let linger = history.presence_linger();
        assert_eq!(linger, Duration::from_millis(10));
        let waiter = wait_for_change(&history, 0);
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        history.append(1, frame(1, 1), room(), EntryKind::Presence);
        tokio::time::sleep(linger / 2).await;
        history.append(2, frame(2, 1), room(), EntryKind::Presence);
        // Both presence events arrive in one wake-up, after the first one's linger.
        assert_eq!(waiter.await.unwrap(), 2);
        assert_eq!(start.elapsed(), linger);
    }

    #[test]
    fn the_presence_linger_grows_with_the_room_up_to_its_limit() {
        let history = History::new(100, 1 << 20, 1);
        assert_eq!(history.presence_linger(), Duration::ZERO);
        history.set_room_size(2);
        assert_eq!(history.presence_linger(), Duration::from_micros(50));
        history.set_room_size(10_000);
        assert_eq!(history.presence_linger(), MAX_PRESENCE_LINGER);
        history.set_room_size(1_000_000);
        assert_eq!(history.presence_linger(), MAX_PRESENCE_LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_say_after_a_join_wakes_writers_at_once() {
        let history = Arc::new(History::new(100, 1 << 20, 1));
        history.start_fanout();
        history.set_room_size(10_000);
        let waiter = wait_for_change(&history, 0);
        tokio::task::yield_now().await;
        let start = tokio::time::Instant::now();
        history.append(1, frame(1, 1), room(), EntryKind::Presence);
        history.append(2, frame(2, 1), room(), EntryKind::Message);
        assert_eq!(waiter.await.unwrap(), 2);
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A private message or a notice is as urgent as a say.
        for (seq, kind) in [(3, EntryKind::Private), (4, EntryKind::Notice)] {
            let waiter = wait_for_change(&history, seq - 1);
            tokio::task::yield_now().await;
            history.append(seq, frame(1, 1), Audience::One(7), kind);
            assert_eq!(waiter.await.unwrap(), seq);
            assert_eq!(start.elapsed(), Duration::ZERO);
        }
    }
}
