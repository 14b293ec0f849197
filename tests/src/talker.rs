//! [`Talker`]: one raw member that keeps everything it receives, for tests that compare
//! what several members saw (the cluster tests: one order for everyone, nothing lost
//! across a failover).
//!
//! A talker is a task in the test's tokio runtime that owns one [`AsyncRaw`]
//! connection: it answers pings, sends what the test orders, and appends every room
//! event and reply to a shared [`Seen`]. The test waits on conditions over `Seen`
//! ([`Talker::wait`]) rather than sleeping.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::{ClientMessage, Event, LeaveReason, Reply, ServerMessage, SessionTicket};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use crate::chaos::AsyncRaw;

/// How long a talker waits for anything before it counts the silence as a failure.
const IDLE_LIMIT: Duration = Duration::from_secs(600);

/// Everything a talker received, in order.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Room events.
    pub events: Vec<Event>,
    /// Replies to its calls.
    pub replies: Vec<Reply>,
    /// The connection ended: with the server's reason, if it gave one.
    pub ended: Option<Option<LeaveReason>>,
    /// Something unexpected (an undecodable frame, a long silence).
    pub error: Option<String>,
}

impl Seen {
    /// The acknowledgement of message `id`, if it came.
    pub fn sent(&self, id: u64) -> Option<u64> {
        self.replies.iter().find_map(|r| match r {
            Reply::Sent { id: got, seq } if *got == id => Some(*seq),
            _ => None,
        })
    }
}

enum Order {
    Send(ClientMessage),
    Reset,
}

struct Shared {
    seen: Mutex<Seen>,
    changed: Notify,
}

impl Shared {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen());
        self.changed.notify_waiters();
    }
}

/// A raw member driven by the test.
pub struct Talker {
    /// Its label (usually the nick).
    pub label: String,
    orders: mpsc::UnboundedSender<Order>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Talker {
    /// Connects to the server named `server` on `port` as `own` (handshake done,
    /// nothing sent).
    pub async fn connect(
        label: &str,
        port: u16,
        own: &str,
        server: &str,
        cookie: &str,
    ) -> Result<Talker, String> {
        let raw = AsyncRaw::open(port, own, server, cookie).await?;
        let shared = Arc::new(Shared {
            seen: Mutex::new(Seen::default()),
            changed: Notify::new(),
        });
        let (orders, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(raw, rx, Arc::clone(&shared)));
        Ok(Talker {
            label: label.to_string(),
            orders,
            shared,
            task,
        })
    }

    /// Connects (see [`Talker::connect`]), sends `first` (a join or a resume), and
    /// returns once its reply came, with the reply.
    pub async fn open(
        label: &str,
        port: u16,
        own: &str,
        server: &str,
        cookie: &str,
        first: ClientMessage,
    ) -> Result<(Talker, Reply), String> {
        let talker = Talker::connect(label, port, own, server, cookie).await?;
        talker.send(first);
        talker
            .wait("the first reply", |seen| !seen.replies.is_empty())
            .await?;
        let reply = talker.seen().replies[0].clone();
        Ok((talker, reply))
    }

    /// Connects and joins as `nick`; an error unless the reply is `Joined`.
    pub async fn join(
        port: u16,
        server: &str,
        cookie: &str,
        nick: &str,
    ) -> Result<(Talker, Reply), String> {
        let own = format!("t-{}@localhost", crate::raw::sanitize(nick));
        let join = ClientMessage::Join {
            nick: nick.to_string(),
            backlog: 0,
        };
        let (talker, reply) = Talker::open(nick, port, &own, server, cookie, join).await?;
        match reply {
            Reply::Joined { .. } => Ok((talker, reply)),
            other => Err(format!("{nick}: join refused: {other:?}")),
        }
    }

    /// Connects and resumes `ticket` (from `epoch`, having seen up to `last_seq`);
    /// returns the talker and the reply, whatever it is.
    pub async fn resume(
        label: &str,
        port: u16,
        server: &str,
        cookie: &str,
        ticket: SessionTicket,
        epoch: u64,
        last_seq: u64,
    ) -> Result<(Talker, Reply), String> {
        let own = format!("t-{}-r@localhost", crate::raw::sanitize(label));
        let resume = ClientMessage::Resume {
            ticket,
            epoch,
            last_seq,
        };
        Talker::open(label, port, &own, server, cookie, resume).await
    }

    /// Sends `msg`.
    pub fn send(&self, msg: ClientMessage) {
        let _ = self.orders.send(Order::Send(msg));
    }

    /// Says `text` with message id `id`.
    pub fn say(&self, id: u64, text: &str) {
        self.send(ClientMessage::Say {
            id,
            text: text.to_string(),
        });
    }

    /// Closes the connection with a TCP reset, as a crashed client would.
    pub fn reset(&self) {
        let _ = self.orders.send(Order::Reset);
    }

    /// A copy of everything received so far.
    pub fn seen(&self) -> Seen {
        self.shared.seen().clone()
    }

    /// Waits until `done` holds for what was received, at most [`crate::LONG`].
    pub async fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) -> Result<(), String> {
        self.wait_within(what, crate::LONG, done).await
    }

    /// Waits until `done` holds for what was received, at most `timeout`.
    pub async fn wait_within(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Seen) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let seen = self.shared.seen();
                if done(&seen) {
                    return Ok(());
                }
                if let Some(error) = &seen.error {
                    return Err(format!("{}: {error} while waiting for {what}", self.label));
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let seen = self.seen();
                return Err(format!(
                    "{}: no {what} within {timeout:?}; last events {:?}, last replies {:?}, ended {:?}",
                    self.label,
                    seen.events.iter().rev().take(5).collect::<Vec<_>>(),
                    seen.replies.iter().rev().take(5).collect::<Vec<_>>(),
                    seen.ended
                ));
            }
        }
    }
}

impl Drop for Talker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut raw: AsyncRaw, mut orders: mpsc::UnboundedReceiver<Order>, shared: Arc<Shared>) {
    enum Step {
        Order(Option<Order>),
        Read(Result<Option<ServerMessage>, String>),
    }
    loop {
        // Reading is cancel-safe (bytes go to the connection's buffer); writing is
        // done outside the select, so no write is ever cut short.
        let step = tokio::select! {
            order = orders.recv() => Step::Order(order),
            read = raw.read::<ServerMessage>(IDLE_LIMIT) => Step::Read(read),
        };
        match step {
            Step::Order(Some(Order::Send(msg))) => {
                if raw.send(&msg).await.is_err() {
                    shared.update(|seen| seen.ended = Some(None));
                    return;
                }
            }
            Step::Order(Some(Order::Reset)) => {
                raw.reset();
                shared.update(|seen| seen.ended = Some(None));
                return;
            }
            Step::Order(None) => return,
            Step::Read(Ok(Some(ServerMessage::Ping))) => {
                let _ = raw.send(&ClientMessage::Pong).await;
            }
            Step::Read(Ok(Some(ServerMessage::Pong))) => {}
            Step::Read(Ok(Some(ServerMessage::Event(event)))) => {
                shared.update(|seen| seen.events.push(event));
            }
            Step::Read(Ok(Some(ServerMessage::Reply(reply)))) => {
                shared.update(|seen| seen.replies.push(reply));
            }
            Step::Read(Ok(Some(ServerMessage::Closing { reason }))) => {
                shared.update(|seen| seen.ended = Some(Some(reason)));
                return;
            }
            Step::Read(Ok(None)) => {
                shared.update(|seen| {
                    seen.ended.get_or_insert(None);
                });
                return;
            }
            Step::Read(Err(e)) => {
                shared.update(|seen| seen.error = Some(e));
                return;
            }
        }
    }
}
