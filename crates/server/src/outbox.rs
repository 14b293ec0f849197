//! A connection's own queue: what is for this connection alone (replies, pings, the
//! backlog, the closing notice) and the points where it starts or stops reading the room's
//! history, each stamped with the history's head when it was queued.
//!
//! Room events do not go through here: the writer reads them from the history
//! ([`crate::history`]). The stamp keeps the two in one order: an item queued when the
//! history's newest event was `after` is written after that event and before the next.
//!
//! It is a `VecDeque` behind a mutex rather than a channel because an idle connection
//! must cost almost nothing: an empty `VecDeque` owns no memory, while a channel
//! allocates a block of slots up front. Pushing never waits: a full queue is reported to
//! the caller (the registry then drops the slow consumer).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::history::SessionId;

/// Why something could not be queued for a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The peer's send queue is full: it does not read fast enough.
    #[error("send queue exceeded")]
    QueueFull,
    /// The peer is gone.
    #[error("peer closed")]
    Closed,
}

/// What an item asks the writer to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this frame (or run of frames).
    Frame(Bytes),
    /// From now on, also write the history's events for `session`, starting at `from`.
    Subscribe {
        /// The session whose events to write.
        session: SessionId,
        /// The first sequence number to write.
        from: u64,
    },
    /// Stop writing history events (after those up to the item's stamp).
    Unsubscribe,
}

/// One queued item: an action, after the history's events up to `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The history's head when this was queued.
    pub after: u64,
    /// What to do.
    pub action: Action,
}

/// The own queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    max_items: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// Bytes of the frames in `items`.
    bytes: usize,
    /// No more items: write what is queued, then close.
    finishing: bool,
    /// The writer is gone: refuse everything.
    closed: bool,
}

/// What the writer takes in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// Items, in order.
    pub items: VecDeque<Item>,
    /// After these, close the connection.
    pub last: bool,
}

impl Outbox {
    /// An empty queue holding at most `max_items` items and `max_bytes` bytes of frames.
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates; a poisoned state is still whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues an item; never waits.
    pub fn push(&self, item: Item) -> Result<(), DeliveryError> {
        let len = match &item.action {
            Action::Frame(frame) => frame.len(),
            Action::Subscribe { .. } | Action::Unsubscribe => 0,
        };
        let mut state = self.lock();
        if state.closed || state.finishing {
            return Err(DeliveryError::Closed);
        }
        if state.items.len() >= self.max_items || state.bytes + len > self.max_bytes {
            return Err(DeliveryError::QueueFull);
        }
        let wake = state.items.is_empty();
        state.bytes += len;
        state.items.push_back(item);
        drop(state);
        // A writer busy with an earlier batch looks again before it sleeps.
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Asks the writer to write what is queued and then close the connection.
    pub fn finish(&self) {
        self.lock().finishing = true;
        self.ready.notify_one();
    }

    /// Marks the writer gone: later pushes fail and queued items are dropped.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.items = VecDeque::new();
        state.bytes = 0;
    }

    /// Takes every queued item (possibly none), leaving the queue empty and owning no
    /// memory.
    pub fn take(&self) -> Batch {
        let mut state = self.lock();
        state.bytes = 0;
        Batch {
            items: std::mem::take(&mut state.items),
            last: state.finishing || state.closed,
        }
    }

    /// A future that completes when something is queued (or the end asked for) after
    /// it is enabled; it may also complete spuriously. Enable it before taking, so that
    /// nothing queued in between is missed.
    pub fn ready(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// Whether items are waiting or the end was asked for.
    pub fn pending(&self) -> bool {
        let state = self.lock();
        !state.items.is_empty() || state.finishing || state.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(after: u64, bytes: &'static [u8]) -> Item {
        Item {
            after,
            action: Action::Frame(Bytes::from_static(bytes)),
        }
    }

    #[test]
    fn items_come_out_in_order_and_the_limits_hold() {
        let outbox = Outbox::new(2, 1024);
        outbox.push(frame(0, b"a")).unwrap();
        outbox.push(frame(1, b"b")).unwrap();
        assert_eq!(outbox.push(frame(1, b"c")), Err(DeliveryError::QueueFull));
        let batch = outbox.take();
        assert_eq!(batch.items, [frame(0, b"a"), frame(1, b"b")]);
        assert!(!batch.last);
        outbox.push(frame(2, b"c")).unwrap();
        outbox.finish();
        let batch = outbox.take();
        assert_eq!(batch.items, [frame(2, b"c")]);
        assert!(batch.last);
        assert_eq!(outbox.push(frame(3, b"d")), Err(DeliveryError::Closed));
    }

    #[test]
    fn the_byte_budget_holds_too() {
        let outbox = Outbox::new(100, 10);
        outbox.push(frame(0, b"123456")).unwrap();
        assert_eq!(
            outbox.push(frame(0, b"12345")),
            Err(DeliveryError::QueueFull)
        );
        let subscribe = Item {
            after: 0,
            action: Action::Subscribe {
                session: 1,
                from: 1,
            },
        };
        outbox.push(subscribe).unwrap();
        assert_eq!(outbox.take().items.len(), 2);
        outbox.push(frame(0, b"1234567890")).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken() {
        let outbox = std::sync::Arc::new(Outbox::new(8, 1024));
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                loop {
                    let ready = outbox.ready();
                    tokio::pin!(ready);
                    ready.as_mut().enable();
                    if outbox.pending() {
                        return outbox.take();
                    }
                    ready.await;
                }
            })
        };
        tokio::task::yield_now().await;
        outbox.push(frame(0, b"x")).unwrap();
        assert_eq!(writer.await.unwrap().items, [frame(0, b"x")]);
    }
}
