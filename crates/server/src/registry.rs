//! The registry actor: the one task that owns the room.
//!
//! It holds `nick -> peer` and every attached connection, and is the only place that
//! changes them; connections talk to it through [`RegistryHandle`]. It never awaits a
//! peer: events are encoded once and pushed to each member's bounded queue without
//! waiting, and a member whose queue is full is dropped as a slow consumer. Every room
//! event gets the next room sequence number.
//!
//! [`RegistryHandle`] is the narrow interface to membership and broadcast; a clustered
//! backend can implement the same calls later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::limits::{self, NickError};
use protocol::unicode;
use protocol::{Event, EventKind, LeaveReason, Reply};
use tokio::sync::{mpsc, oneshot};

use crate::peer::{DeliveryError, Peer, RoomEvent};
use crate::rate_limit::{TokenBucket, Verdict};

/// Identifies one connection for its whole life.
pub type ConnId = u64;

/// Requests to the registry.
pub enum Command {
    /// A connection finished its handshake; it may now make calls.
    Attach {
        /// The connection.
        id: ConnId,
        /// How to reach it.
        peer: Arc<dyn Peer>,
    },
    /// A connection ended; if it was a member, the room is told it left for `reason`.
    Detach {
        /// The connection.
        id: ConnId,
        /// Why it ended.
        reason: LeaveReason,
    },
    /// Join the room as `nick`.
    Join {
        /// The connection.
        id: ConnId,
        /// The nick wanted.
        nick: String,
    },
    /// Leave the room.
    Leave {
        /// The connection.
        id: ConnId,
    },
    /// Say `text` to every other member.
    Say {
        /// The speaker.
        id: ConnId,
        /// The message (already validated).
        text: String,
    },
    /// Say `text` to `to` alone.
    Private {
        /// The speaker.
        id: ConnId,
        /// The recipient's nick.
        to: String,
        /// The message (already validated).
        text: String,
    },
    /// Ask for the members' nicks.
    ListUsers {
        /// The asker.
        id: ConnId,
    },
    /// A liveness tick: probe every connection, drop those silent for too long.
    Tick,
    /// Tell every connection the server is shutting down and close them.
    Shutdown {
        /// Answered once every connection has been told.
        done: oneshot::Sender<()>,
    },
}

/// The sending side of the registry's mailbox; cheap to clone.
#[derive(Clone)]
pub struct RegistryHandle {
    tx: mpsc::Sender<Command>,
}

impl RegistryHandle {
    /// Sends a command; waits only if the mailbox is full (back-pressure on readers).
    /// Returns false once the registry has stopped.
    pub async fn send(&self, command: Command) -> bool {
        match self.tx.try_send(command) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // Boxed: waiting is rare, and inline the wait's state would enlarge every
            // connection's task for its whole life.
            Err(mpsc::error::TrySendError::Full(command)) => {
                Box::pin(self.tx.send(command)).await.is_ok()
            }
        }
    }

    /// Tells every connection that the server is shutting down; returns once they all
    /// have the notice queued.
    pub async fn shutdown(&self) {
        let (done, told) = oneshot::channel();
        if self.send(Command::Shutdown { done }).await {
            let _ = told.await;
        }
    }
}

/// How many private messages one member may receive: `rate` per second on average,
/// bursts of `burst`.
#[derive(Debug, Clone, Copy)]
pub struct PrivateLimit {
    /// Per second, on average.
    pub rate: f64,
    /// In a burst.
    pub burst: u32,
}

impl Default for PrivateLimit {
    fn default() -> Self {
        Self {
            rate: 20.0,
            burst: 40,
        }
    }
}

/// Starts the registry actor with a mailbox of `mailbox` commands; on each
/// [`Command::Tick`] it drops connections silent for `silence_limit`. Each member may
/// receive private messages within `private_limit`.
pub fn spawn(
    mailbox: usize,
    silence_limit: Duration,
    private_limit: PrivateLimit,
) -> RegistryHandle {
    let (tx, rx) = mpsc::channel(mailbox);
    let registry = Registry {
        silence_limit,
        private_limit,
        ..Registry::default()
    };
    tokio::spawn(registry.run(rx));
    RegistryHandle { tx }
}

struct Connection {
    peer: Arc<dyn Peer>,
    nick: Option<String>,
    /// Private messages this member may still receive (made on joining).
    private_bucket: Option<TokenBucket>,
    /// Set once the registry has closed this connection; its own `Detach` follows.
    closed: bool,
}

#[derive(Default)]
struct Registry {
    connections: HashMap<ConnId, Connection>,
    /// Members by nick, sorted so user lists come out in order.
    members: BTreeMap<String, (ConnId, Arc<dyn Peer>)>,
    /// The uniqueness keys of the members' nicks ([`protocol::unicode::nick_key`]): no
    /// two members' nicks differ only in case, accents or look-alike letters.
    nick_keys: HashSet<String>,
    /// What each member may receive of private messages.
    private_limit: PrivateLimit,
    /// The last room sequence number handed out.
    seq: u64,
    /// Set by [`Command::Shutdown`]: everyone has been told, so departures are no
    /// longer broadcast.
    shutting_down: bool,
    /// A connection not heard from for this long is dropped at the next tick.
    silence_limit: Duration,
}

impl Registry {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(command) = rx.recv().await {
            self.handle(command);
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Attach { id, peer } => {
                let connection = Connection {
                    peer,
                    nick: None,
                    private_bucket: None,
                    closed: false,
                };
                self.connections.insert(id, connection);
            }
            Command::Detach { id, reason } => {
                self.remove_member(id, reason);
                self.connections.remove(&id);
            }
            Command::Join { id, nick } => self.join(id, nick),
            Command::Leave { id } => {
                if self.remove_member(id, LeaveReason::Left) {
                    self.reply(id, Reply::Left);
                } else {
                    self.reply(id, Reply::NotJoined);
                }
            }
            Command::Say { id, text } => match self.nick_of(id) {
                Some(from) => {
                    let from = from.to_string();
                    self.broadcast(EventKind::Message { from, text }, Some(id));
                }
                None => self.reply(id, Reply::NotJoined),
            },
            Command::Private { id, to, text } => self.private(id, to, text),
            Command::ListUsers { id } => {
                let (users, more) = self.user_list();
                self.reply(id, Reply::Users { users, more });
            }
            Command::Tick => self.tick(),
            Command::Shutdown { done } => {
                self.shutting_down = true;
                for connection in self.connections.values_mut() {
                    connection.closed = true;
                    connection.peer.close(LeaveReason::ServerShutdown);
                }
                let _ = done.send(());
            }
        }
    }

    /// Probes every connection; drops the silent ones as timed out.
    fn tick(&mut self) {
        let silent: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, connection)| !connection.closed)
            .filter(|(_, connection)| !connection.peer.tick(self.silence_limit))
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            if let Some(connection) = self.connections.get_mut(&id) {
                connection.closed = true;
                tracing::info!(node = %connection.peer.node(), "silent for too long; dropping");
                connection.peer.close(LeaveReason::Timeout);
            }
            self.remove_member(id, LeaveReason::Timeout);
        }
    }

    /// The members' nicks as far as [`limits::MAX_LISTED_NICK_BYTES`] allows, and how
    /// many were left out. Stops early, so a join into a big room costs little.
    fn user_list(&self) -> (Vec<String>, u32) {
        let mut budget = limits::MAX_LISTED_NICK_BYTES;
        let users: Vec<String> = self
            .members
            .keys()
            .take_while(|nick| {
                let cost = limits::listed_nick_cost(nick);
                let fits = cost <= budget;
                budget = budget.saturating_sub(cost);
                fits
            })
            .cloned()
            .collect();
        let more = self.members.len() - users.len();
        (users, u32::try_from(more).unwrap_or(u32::MAX))
    }

    fn nick_of(&self, id: ConnId) -> Option<&str> {
        self.connections.get(&id)?.nick.as_deref()
    }

    fn join(&mut self, id: ConnId, nick: String) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if let Some(current) = &connection.nick {
            let nick = current.clone();
            self.reply(id, Reply::AlreadyJoined { nick });
            return;
        }
        let nick = match limits::normalize_nick(&nick) {
            Err(NickError::NotAllowed(_)) => Err(Reply::NickNotAllowed),
            Err(NickError::Invalid(reason)) => Err(Reply::InvalidNick { reason }),
            Ok(nick) if self.nick_keys.contains(&unicode::nick_key(&nick)) => Err(Reply::NickInUse),
            Ok(nick) => Ok(nick),
        };
        let nick = match nick {
            Ok(nick) => nick,
            Err(reply) => {
                tracing::debug!(?reply, "join refused");
                self.reply(id, reply);
                return;
            }
        };
        let peer = Arc::clone(&connection.peer);
        tracing::info!(%nick, node = %peer.node(), "joined");
        self.nick_keys.insert(unicode::nick_key(&nick));
        self.members.insert(nick.clone(), (id, peer));
        let private_limit = self.private_limit;
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.nick = Some(nick.clone());
            connection.private_bucket =
                Some(TokenBucket::new(private_limit.rate, private_limit.burst));
        }
        let (users, more) = self.user_list();
        self.reply(id, Reply::Joined { users, more });
        self.broadcast(EventKind::Joined { nick }, Some(id));
    }

    fn private(&mut self, id: ConnId, to: String, text: String) {
        let Some(from) = self.nick_of(id).map(str::to_string) else {
            self.reply(id, Reply::NotJoined);
            return;
        };
        let Some((to_id, _)) = self.members.get(&to) else {
            self.reply(id, Reply::NoSuchUser { nick: to });
            return;
        };
        let to_id = *to_id;
        let within = self
            .connections
            .get_mut(&to_id)
            .and_then(|c| c.private_bucket.as_mut())
            .is_none_or(|bucket| bucket.check(std::time::Instant::now()) == Verdict::Allow);
        if !within {
            self.reply(id, Reply::RecipientBusy { nick: to });
            return;
        }
        let Some((_, peer)) = self.members.get(&to) else {
            return;
        };
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            kind: EventKind::Private { from, text },
        };
        match RoomEvent::new(event) {
            Ok(event) => {
                if let Err(e) = peer.deliver(&event) {
                    self.delivery_failed(to_id, e);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot encode a private message"),
        }
    }

    /// Sends `kind` to every member but `except`, encoding it once. Members whose queue is
    /// full are dropped afterwards (which is itself broadcast).
    fn broadcast(&mut self, kind: EventKind, except: Option<ConnId>) {
        self.seq += 1;
        let event = match RoomEvent::new(Event {
            seq: self.seq,
            kind,
        }) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a room event");
                return;
            }
        };
        let mut failed = Vec::new();
        for (id, peer) in self.members.values() {
            if Some(*id) == except {
                continue;
            }
            if let Err(e) = peer.deliver(&event) {
                failed.push((*id, e));
            }
        }
        for (id, error) in failed {
            self.delivery_failed(id, error);
        }
    }

    fn delivery_failed(&mut self, id: ConnId, error: DeliveryError) {
        let reason = match error {
            DeliveryError::QueueFull => LeaveReason::SendQueueExceeded,
            DeliveryError::Closed => LeaveReason::ConnectionLost,
        };
        // A failure can be seen several times (a broadcast about the departure of one
        // slow member may find another still full): close and log only once.
        if let Some(connection) = self.connections.get_mut(&id).filter(|c| !c.closed) {
            connection.closed = true;
            tracing::info!(node = %connection.peer.node(), %error, "dropping connection");
            connection.peer.close(reason);
        }
        self.remove_member(id, reason);
    }

    /// Takes `id` out of the room and tells the others; false if it was not a member.
    fn remove_member(&mut self, id: ConnId, reason: LeaveReason) -> bool {
        let Some(nick) = self
            .connections
            .get_mut(&id)
            .and_then(|connection| connection.nick.take())
        else {
            return false;
        };
        self.members.remove(&nick);
        self.nick_keys.remove(&unicode::nick_key(&nick));
        if let Some(connection) = self.connections.get_mut(&id) {
            connection.private_bucket = None;
        }
        tracing::info!(%nick, reason = reason.describe(), "left");
        if !self.shutting_down {
            self.broadcast(EventKind::Left { nick, reason }, None);
        }
        true
    }

    fn reply(&mut self, id: ConnId, reply: Reply) {
        let Some(connection) = self.connections.get(&id) else {
            return;
        };
        if let Err(e) = connection.peer.reply(reply) {
            self.delivery_failed(id, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use protocol::codec::{MAX_FRAME_LEN, decode, encode_frame};
    use protocol::{NodeName, ServerMessage};

    use super::*;

    /// A peer that records what it is handed.
    struct Recorder {
        node: NodeName,
        replies: Mutex<Vec<Reply>>,
    }

    impl Peer for Recorder {
        fn deliver(&self, _event: &RoomEvent) -> Result<(), DeliveryError> {
            Ok(())
        }
        fn reply(&self, reply: Reply) -> Result<(), DeliveryError> {
            self.replies.lock().unwrap().push(reply);
            Ok(())
        }
        fn close(&self, _reason: LeaveReason) {}
        fn node(&self) -> &NodeName {
            &self.node
        }
        fn tick(&self, _silence_limit: Duration) -> bool {
            true
        }
    }

    /// Joins `members` peers with nicks made by `nick`; returns the last one's replies.
    fn fill_room(members: u64, nick: impl Fn(u64) -> String) -> Vec<Reply> {
        let mut registry = Registry::default();
        let mut last = None;
        for id in 0..members {
            let peer = Arc::new(Recorder {
                node: NodeName::parse_long("client@localhost").unwrap(),
                replies: Mutex::default(),
            });
            registry.handle(Command::Attach {
                id,
                peer: peer.clone(),
            });
            registry.handle(Command::Join { id, nick: nick(id) });
            last = Some(peer);
        }
        last.unwrap().replies.lock().unwrap().clone()
    }

    #[test]
    fn user_lists_of_a_big_room_fit_in_a_frame_and_count_the_rest() {
        // The longest nicks make the biggest frame; the shortest the most list entries,
        // which the decoder's limit counts as memory.
        for (members, nick) in [
            (
                3000,
                Box::new(|id| format!("{id:0>32}")) as Box<dyn Fn(u64) -> String>,
            ),
            (10_000, Box::new(|id| format!("{id}"))),
        ] {
            let replies = fill_room(members, nick);
            let Some(Reply::Joined { users, more }) = replies.first() else {
                panic!("expected a join answer, got {replies:?}");
            };
            assert_eq!(users.len() + *more as usize, members as usize);
            assert!(*more > 0, "{members} nicks cannot all be listed");
            assert!(users.windows(2).all(|w| w[0] < w[1]), "sorted");
            let frame = encode_frame(&ServerMessage::Reply(replies[0].clone())).unwrap();
            assert!(frame.len() <= MAX_FRAME_LEN / 2, "{} bytes", frame.len());
            // Clients must be able to decode it: the decoder's limit counts memory too.
            let decoded: ServerMessage = decode(&frame[4..]).expect("the answer decodes");
            assert_eq!(decoded, ServerMessage::Reply(replies[0].clone()));
        }
    }
}
