//! [`Members`]: who is in the room, cluster-wide, as of a position in the stream.
//!
//! Redis keeps the members in a hash that changes only inside the scripts that append
//! the matching join or departure, so the hash at sequence number N is exactly what the
//! stream's presence entries up to N say. A node starts from a [`Snapshot`] (the hash
//! and the head, read in one step) and applies the presence entries after the head as
//! its reader delivers them: every node at position N has the same members, and a
//! client never sees a member in `/users` whose join its node has not delivered yet.
//!
//! [`Snapshot`]: super::room::Snapshot

use std::collections::{BTreeMap, HashMap};

use super::entry::{LogEntry, Presence};
use crate::history::SessionId;

/// The members of the room as of one sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    by_nick: BTreeMap<String, SessionId>,
    by_session: HashMap<SessionId, String>,
    at: u64,
}

impl Members {
    /// The members of a snapshot taken at sequence number `at`.
    pub fn new(members: impl IntoIterator<Item = (SessionId, String)>, at: u64) -> Self {
        let mut out = Self {
            at,
            ..Self::default()
        };
        for (session, nick) in members {
            out.insert(session, nick);
        }
        out
    }

    fn insert(&mut self, session: SessionId, nick: String) {
        if let Some(old) = self.by_session.insert(session, nick.clone()) {
            self.by_nick.remove(&old);
        }
        self.by_nick.insert(nick, session);
    }

    /// Applies the next entry of the stream (anything but a presence entry only moves
    /// the position). Entries at or before the current position are ignored.
    pub fn apply(&mut self, entry: &LogEntry) {
        if entry.seq <= self.at {
            return;
        }
        self.at = entry.seq;
        match entry.event().and_then(|e| e.presence.as_ref()) {
            Some(Presence::Joined { session, nick }) => self.insert(*session, nick.clone()),
            Some(Presence::Left { session, .. }) => {
                if let Some(nick) = self.by_session.remove(session) {
                    self.by_nick.remove(&nick);
                }
            }
            None => {}
        }
    }

    /// The sequence number these members are as of.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// The nicks, sorted.
    pub fn nicks(&self) -> impl Iterator<Item = &str> {
        self.by_nick.keys().map(String::as_str)
    }

    /// The session known as `nick`.
    pub fn session_of(&self, nick: &str) -> Option<SessionId> {
        self.by_nick.get(nick).copied()
    }

    /// The nick of `session`, if it is in the room.
    pub fn nick_of(&self, session: SessionId) -> Option<&str> {
        self.by_session.get(&session).map(String::as_str)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_session.len()
    }

    /// Whether the room is empty.
    pub fn is_empty(&self) -> bool {
        self.by_session.is_empty()
    }
}
