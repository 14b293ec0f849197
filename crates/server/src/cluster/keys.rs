//! The names of the keys one room keeps in Redis.
//!
//! Every key of a room starts with `exm:{ROOM}:`; the braces are a Redis Cluster hash
//! tag, so all of a room's keys live in one slot and each Lua script can touch them
//! together. The layout (see ARCHITECTURE.md, "Cluster (Redis)"):
//!
//! | key                 | type   | holds                                                  |
//! |---------------------|--------|--------------------------------------------------------|
//! | `epoch`             | string | the room's epoch, set once (`SET NX`)                  |
//! | `seq`               | string | the last sequence number handed out                    |
//! | `log`               | stream | the room's events, entry ID `SEQ-0`, `MAXLEN ~` trimmed |
//! | `sid`               | string | the last session number handed out                     |
//! | `members`           | hash   | session -> nick, for everyone in the room              |
//! | `s:SESSION`         | hash   | a session's record (nick, secret digest, node, ...)    |
//! | `nick:KEY`          | string | the session holding a nick's uniqueness key            |
//! | `nodes`             | set    | the ids of the nodes that registered                   |
//! | `lease:NODE`        | string | a node's lease, with a TTL the node keeps renewing     |
//! | `held:NODE`         | set    | the sessions a node holds in the room                  |
//! | `reap:NODE`         | string | the lock of the node releasing a dead node's members   |

use crate::history::SessionId;

/// Key names for one room.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    /// The keys of room `room`.
    pub(crate) fn new(room: &str) -> Self {
        Self {
            prefix: format!("exm:{{{room}}}:"),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub(crate) fn epoch(&self) -> String {
        self.key("epoch")
    }

    pub(crate) fn seq(&self) -> String {
        self.key("seq")
    }

    pub(crate) fn log(&self) -> String {
        self.key("log")
    }

    pub(crate) fn sid(&self) -> String {
        self.key("sid")
    }

    pub(crate) fn members(&self) -> String {
        self.key("members")
    }

    pub(crate) fn nodes(&self) -> String {
        self.key("nodes")
    }

    pub(crate) fn session(&self, session: SessionId) -> String {
        self.key(&format!("s:{session}"))
    }

    /// A nick's uniqueness key: opaque bytes computed by the caller.
    pub(crate) fn nick(&self, key: &[u8]) -> Vec<u8> {
        let mut name = self.key("nick:").into_bytes();
        name.extend_from_slice(key);
        name
    }

    pub(crate) fn lease(&self, node: &str) -> String {
        self.key(&format!("lease:{node}"))
    }

    pub(crate) fn held(&self, node: &str) -> String {
        self.key(&format!("held:{node}"))
    }

    pub(crate) fn reap(&self, node: &str) -> String {
        self.key(&format!("reap:{node}"))
    }
}
