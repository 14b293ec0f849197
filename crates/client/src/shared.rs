//! What the session's parts share: where lines go ([`Output`]), who is in the room
//! ([`Members`]), the join state, the place in the room's history and the queue of
//! unacknowledged sends ([`Shared`]), how long a call may wait, and why a session ended
//! ([`SessionError`]).
//!
//! The front end ([`crate::session`]), a connection's tasks (`link`) and the reconnect
//! task ([`crate::reconnect`]) all use these; this module uses none of them, so the
//! dependencies run one way: session -> reconnect -> link -> shared.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::{ClientMessage, EventKind};

use crate::position::Position;
use crate::render::LineKind;
use crate::sends::Sends;

/// How long the front end waits for the answer to a join or a leave (and, on quit, for
/// the socket to be flushed and closed).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the session's output lines go. The plain REPL prints them to standard output;
/// a line editor prints them above the line being typed.
pub trait Output: Send + Sync + 'static {
    /// Shows one complete line (without its line terminator) to the user.
    fn line(&self, line: &str);

    /// Shows a line about something that happened just now: what came from the server,
    /// or the user's own private message; `kind` lets a terminal colour it, and it is
    /// timestamped with `--timestamps`. By default it is shown like any other line.
    fn incoming(&self, kind: LineKind, line: &str) {
        let _ = kind;
        self.line(line);
    }

    /// Shows a line of the client's own about something that happened just now (the
    /// connection lost or back, a resume, queued lines sent): a status line, timestamped
    /// with `--timestamps` as what comes from the server is.
    fn status(&self, line: &str) {
        self.incoming(LineKind::Local, line);
    }
}

/// The nicks in the room as this client last heard them (from the join answer, `/users`
/// answers and join/leave events); empty while not joined. Cheap to clone, so a line
/// editor's completer can hold one.
#[derive(Debug, Clone, Default)]
pub struct Members(Arc<Mutex<BTreeSet<String>>>);

impl Members {
    /// The nicks, sorted.
    pub fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // Every update is a single insert, remove or replace: a poisoned set is still whole.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces the whole list (a join answer, a `/users` answer, leaving).
    pub(crate) fn replace(&self, users: &[String]) {
        *self.lock() = users.iter().cloned().collect();
    }

    /// Follows one room event.
    pub(crate) fn follow(&self, event: &EventKind) {
        match event {
            EventKind::Joined { nick } => {
                self.lock().insert(nick.clone());
            }
            EventKind::Left { nick, .. } => {
                self.lock().remove(nick);
            }
            EventKind::Message { .. } | EventKind::Private { .. } | EventKind::Notice { .. } => {}
        }
    }
}

/// State shared by the front end, the message handlers and the reconnect task.
pub(crate) struct Shared {
    /// Whether the server last told us we are in the room.
    pub(crate) joined: AtomicBool,
    /// Whether the user wants to be in the room: set on asking to join (and on being
    /// in), cleared on leaving or being refused. Decides whether a reconnect rejoins.
    pub(crate) wants_room: AtomicBool,
    /// Set while leaving to exit: the final `Left` prints nothing.
    pub(crate) quitting: AtomicBool,
    /// Set once a join banner pointed to `/help` (the first join of the process only).
    pub(crate) hinted: AtomicBool,
    /// Who is in the room.
    pub(crate) members: Members,
    /// Set while a join the client made by itself (after reconnecting) is unanswered,
    /// so that a refusal also says where the user stands.
    pub(crate) auto_join: AtomicBool,
    /// The nick to join with.
    pub(crate) nick: String,
    /// How many earlier messages a join asks for (`--backlog`).
    pub(crate) backlog: AtomicU16,
    /// The session to resume and the last event printed.
    pub(crate) position: Mutex<Position>,
    /// Says and private messages waiting for their acknowledgement.
    pub(crate) sends: Sends,
    /// The number of the last connection started (each gets the next).
    links: AtomicU64,
}

impl Shared {
    /// The state of a new session joining as `nick`.
    pub(crate) fn new(nick: String) -> Self {
        Self {
            joined: AtomicBool::new(false),
            wants_room: AtomicBool::new(false),
            quitting: AtomicBool::new(false),
            hinted: AtomicBool::new(false),
            members: Members::default(),
            auto_join: AtomicBool::new(false),
            nick,
            backlog: AtomicU16::new(0),
            position: Mutex::default(),
            sends: Sends::default(),
            links: AtomicU64::new(0),
        }
    }

    /// A number for a new connection, never used before in this session.
    pub(crate) fn next_link(&self) -> u64 {
        self.links.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The position in the room's history, locked.
    pub(crate) fn position(&self) -> MutexGuard<'_, Position> {
        // Every update is a few assignments that cannot panic: a poisoned lock still
        // guards a whole position.
        self.position
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The message that joins the room as this session's nick, with its backlog.
    pub(crate) fn join_message(&self) -> ClientMessage {
        ClientMessage::Join {
            nick: self.nick.clone(),
            backlog: self.backlog.load(Ordering::SeqCst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::LeaveReason;

    #[test]
    fn members_follow_joins_leaves_and_user_lists() {
        let members = Members::default();
        members.replace(&["bob".into(), "ann".into()]);
        members.follow(&EventKind::Joined { nick: "cy".into() });
        members.follow(&EventKind::Left {
            nick: "bob".into(),
            reason: LeaveReason::Timeout,
        });
        members.follow(&EventKind::Message {
            from: "ann".into(),
            text: "hi".into(),
        });
        assert_eq!(members.snapshot(), ["ann", "cy"]);
        members.replace(&[]);
        assert!(members.snapshot().is_empty());
    }
}

/// Why a session ended against the user's will. Here rather than in `session`, which
/// re-exports it, so that the reconnect task names it without importing the front end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The connection to the server broke (or the server closed it); the text says why.
    #[error("{0}")]
    Lost(String),
    /// Reconnecting failed for a reason that will not go away by itself (the cookie, a
    /// different node answering); the text says why.
    #[error("{0}")]
    Unreachable(String),
}
