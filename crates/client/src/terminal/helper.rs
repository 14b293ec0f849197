//! The line editor's helper: Tab completion of commands and of nicks after `/pm `.
//!
//! What to complete is decided by the pure [`command::complete`]; this only adapts it to
//! rustyline's [`Completer`] and reads the room's nicks when Tab is pressed. Hints,
//! highlighting and validation are rustyline's no-op defaults: a line is sent as typed.

use std::sync::{Arc, Mutex, PoisonError};

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

use crate::command;
use crate::session::Members;

/// The current session's room members, replaceable when a new session starts.
pub(crate) type MembersSlot = Arc<Mutex<Members>>;

/// The rustyline [`Helper`] of the terminal front end.
pub(crate) struct ChatHelper {
    members: MembersSlot,
}

impl ChatHelper {
    /// A helper completing nicks from whatever `members` holds when Tab is pressed.
    pub(crate) fn new(members: MembersSlot) -> Self {
        Self { members }
    }

    fn nicks(&self) -> Vec<String> {
        // A poisoned slot still holds a whole `Members` handle.
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot()
    }
}

impl Completer for ChatHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before_cursor = line.get(..pos).unwrap_or(line);
        let (start, candidates) = command::complete(before_cursor, &self.nicks());
        let pairs = candidates
            .into_iter()
            .map(|replacement| Pair {
                display: replacement.trim_end().to_string(),
                replacement,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ChatHelper {
    type Hint = String;
}

impl Highlighter for ChatHelper {}

impl Validator for ChatHelper {}

impl Helper for ChatHelper {}
