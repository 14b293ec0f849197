//! A crowd: thousands of raw members in one tokio runtime, for the scale tests.
//!
//! Each [`Member`] is a task that owns one [`AsyncRaw`] connection, drains its socket all
//! the time (so no member is ever a slow consumer by accident), answers pings, and keeps a
//! compact [`Log`] of what it received: room sequence numbers in order, the number of
//! messages per sender with their order, which members it saw leave (a bitset over the
//! crowd's numbering), and how the connection ended. The test steers members through a
//! command channel: say something, list users, reset the connection (RST), or stop.
//!
//! Members are numbered; a member's nick is `<prefix><index>`, so the crowd can record
//! departures of thousands of members without storing thousands of strings per member.

use std::collections::HashMap;
use std::time::Duration;

use protocol::{ClientMessage, EventKind, LeaveReason, Reply, ServerMessage};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::chaos::AsyncRaw;

/// How long a member waits for anything before it counts the silence as a failure.
const IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Orders for a member.
enum Order {
    /// Say `text` to the room.
    Say(String),
    /// Ask for the user list; answer with the room's size when the reply has arrived (a
    /// barrier: everything the server sent this member before it has been recorded).
    Barrier(oneshot::Sender<usize>),
    /// Close the connection with a TCP reset (SO_LINGER 0), as a crash or a cut cable.
    Reset,
    /// Send a copy of the log so far.
    Snapshot(oneshot::Sender<Log>),
}

/// What one member received, kept small so that ten thousand of them fit in memory.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// The member's index in the crowd.
    pub index: usize,
    /// Room events received.
    pub events: u64,
    /// The last room sequence number received.
    pub last_seq: u64,
    /// Events whose sequence number was not above the previous one.
    pub out_of_order: u64,
    /// Messages received, by sender: (count, last counter seen), where the counter is
    /// the number after the sender's nick in texts of the form `<nick> <counter>`.
    pub messages: HashMap<String, (u64, u64)>,
    /// Messages whose counter was not above the previous one from the same sender.
    pub messages_out_of_order: u64,
    /// Which crowd members (by index) this member saw leave.
    pub left: Bitset,
    /// Departures seen, in all.
    pub departures: u64,
    /// Joins seen.
    pub joins: u64,
    /// Replies received (user lists and the like), oldest first.
    pub replies: Vec<Reply>,
    /// The reason the server gave when it closed the connection, if it did.
    pub closing: Option<LeaveReason>,
    /// The connection ended without a `Closing` (reset, EOF) or was reset by the test.
    pub ended: bool,
    /// Something unexpected: an undecodable frame, a silence past the limit.
    pub error: Option<String>,
}

/// A fixed-size set of member indexes.
#[derive(Debug, Default, Clone)]
pub struct Bitset(Vec<u64>);

impl Bitset {
    /// Adds `i`; returns false when it was there already.
    pub fn insert(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }

    /// Whether `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// How many indexes are in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One member of a crowd: its nick, its orders channel and its task.
pub struct Member {
    /// Index in the crowd.
    pub index: usize,
    /// Its nick.
    pub nick: String,
    orders: mpsc::UnboundedSender<Order>,
    task: JoinHandle<Log>,
}

impl Member {
    /// Starts the member task on an already joined connection. `prefix` is the crowd's
    /// nick prefix, used to map departures to indexes.
    pub fn spawn(raw: AsyncRaw, index: usize, nick: String, prefix: &str) -> Member {
        let (orders, rx) = mpsc::unbounded_channel();
        let prefix = prefix.to_string();
        let log = Log {
            index,
            ..Log::default()
        };
        let task = tokio::spawn(run(raw, rx, prefix, log));
        Member {
            index,
            nick,
            orders,
            task,
        }
    }

    /// Says `text` to the room (queued; returns at once).
    pub fn say(&self, text: String) {
        let _ = self.orders.send(Order::Say(text));
    }

    /// Resets the connection (RST) and ends the task.
    pub fn reset(&self) {
        let _ = self.orders.send(Order::Reset);
    }

    /// Waits until everything the server sent before answering a user-list request has
    /// been recorded; false if the connection is gone.
    pub async fn barrier(&self, timeout: Duration) -> bool {
        self.room_size(timeout).await.is_some()
    }

    /// Asks the server for the user list and returns the room's size (listed and
    /// counted members), once everything sent before the answer has been recorded;
    /// `None` if the connection is gone or the answer does not come in time.
    pub async fn room_size(&self, timeout: Duration) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.orders.send(Order::Barrier(tx)).ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// A copy of the member's log so far (everything it received before this call is
    /// in it if a barrier answered since); `None` if the member has stopped.
    pub async fn snapshot(&self, timeout: Duration) -> Option<Log> {
        let (tx, rx) = oneshot::channel();
        self.orders.send(Order::Snapshot(tx)).ok()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }

    /// Stops the member (if still running) and returns its log.
    pub async fn finish(self) -> Log {
        drop(self.orders);
        self.task.await.expect("a member task panicked")
    }

    /// Waits for the member's task to end by itself (the server closed the connection)
    /// and returns its log; `None` on timeout.
    pub async fn ended(&mut self, timeout: Duration) -> Option<Log> {
        tokio::time::timeout(timeout, &mut self.task)
            .await
            .ok()
            .map(|joined| joined.expect("a member task panicked"))
    }
}

async fn run(
    mut raw: AsyncRaw,
    mut orders: mpsc::UnboundedReceiver<Order>,
    prefix: String,
    mut log: Log,
) -> Log {
    let mut barriers: Vec<oneshot::Sender<usize>> = Vec::new();
    loop {
        // Only cancel-safe waits are raced: a frame read lands in the connection's
        // buffer whole or not at all. Writes happen outside the race.
        let next = tokio::select! {
            order = orders.recv() => Err(order),
            read = raw.read::<ServerMessage>(IDLE_LIMIT) => Ok(read),
        };
        match next {
            Err(None) => return log,
            Err(Some(Order::Reset)) => {
                raw.reset();
                log.ended = true;
                return log;
            }
            Err(Some(Order::Snapshot(reply))) => {
                let _ = reply.send(log.clone());
            }
            Err(Some(Order::Say(text))) => {
                if raw.send(&ClientMessage::Say { id: 0, text }).await.is_err() {
                    log.ended = true;
                    return log;
                }
            }
            Err(Some(Order::Barrier(done))) => {
                if raw.send(&ClientMessage::ListUsers).await.is_err() {
                    log.ended = true;
                    return log;
                }
                barriers.push(done);
            }
            Ok(Ok(Some(message))) => match message {
                ServerMessage::Ping => {
                    let _ = raw.send(&ClientMessage::Pong).await;
                }
                ServerMessage::Pong => {}
                ServerMessage::Closing { reason } => {
                    log.closing = Some(reason);
                }
                ServerMessage::Event(event) => {
                    log.events += 1;
                    if event.seq <= log.last_seq {
                        log.out_of_order += 1;
                    }
                    log.last_seq = event.seq;
                    record(&mut log, &prefix, event.kind);
                }
                ServerMessage::Reply(Reply::Users { users, more }) if !barriers.is_empty() => {
                    let _ = barriers.remove(0).send(users.len() + more as usize);
                }
                ServerMessage::Reply(reply) => log.replies.push(reply),
            },
            Ok(Ok(None)) => {
                log.ended = true;
                return log;
            }
            Ok(Err(e)) => {
                log.error = Some(e);
                return log;
            }
        }
    }
}

fn record(log: &mut Log, prefix: &str, kind: EventKind) {
    match kind {
        EventKind::Message { from, text } => {
            let counter = text
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            let entry = log.messages.entry(from).or_insert((0, 0));
            if entry.0 > 0 && counter <= entry.1 {
                log.messages_out_of_order += 1;
            }
            entry.0 += 1;
            entry.1 = counter;
        }
        EventKind::Left { nick, .. } => {
            log.departures += 1;
            if let Some(i) = nick.strip_prefix(prefix).and_then(|n| n.parse().ok())
                && !log.left.insert(i)
            {
                // The same member leaving twice is an error of its own.
                log.error.get_or_insert(format!("{nick} left twice"));
            }
        }
        EventKind::Joined { .. } => log.joins += 1,
        EventKind::Private { .. } | EventKind::Notice { .. } => {}
    }
}
