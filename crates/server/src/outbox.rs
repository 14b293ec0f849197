//! A connection's bounded send queue: what the registry and the reader push frames into
//! and the writer drains.
//!
//! It is a `VecDeque` behind a mutex rather than a channel because an idle connection
//! must cost almost nothing: an empty `VecDeque` owns no memory, while a channel
//! allocates a block of slots up front. Pushing never waits: a full queue is reported to
//! the caller (the registry then drops the slow consumer). The writer takes everything
//! queued at once and writes it with one vectored write.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::peer::DeliveryError;

/// The send queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    ready: Notify,
    max_frames: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    /// Total length of `frames`.
    bytes: usize,
    /// No more frames: write what is queued, then close.
    finishing: bool,
    /// The writer is gone: refuse everything.
    closed: bool,
}

/// What the writer takes in one go.
#[derive(Debug, Default)]
pub struct Batch {
    /// Frames to write, in order.
    pub frames: VecDeque<Bytes>,
    /// After these, close the connection.
    pub last: bool,
}

impl Outbox {
    /// An empty queue holding at most `max_frames` frames and `max_bytes` bytes (the
    /// writer may hold as much again in the batch it is writing).
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::default(),
            ready: Notify::new(),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a few field updates; a poisoned state is still whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame; never waits.
    pub fn push(&self, frame: Bytes) -> Result<(), DeliveryError> {
        let mut state = self.lock();
        if state.closed || state.finishing {
            return Err(DeliveryError::Closed);
        }
        if state.frames.len() >= self.max_frames || state.bytes + frame.len() > self.max_bytes {
            return Err(DeliveryError::QueueFull);
        }
        let wake = state.frames.is_empty();
        state.bytes += frame.len();
        state.frames.push_back(frame);
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

    /// Marks the writer gone: later pushes fail and queued frames are dropped.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.frames = VecDeque::new();
        state.bytes = 0;
    }

    /// Waits for frames (or the end) and takes all of them, leaving the queue empty and
    /// owning no memory.
    pub async fn next_batch(&self) -> Batch {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() || state.finishing || state.closed {
                    state.bytes = 0;
                    return Batch {
                        frames: std::mem::take(&mut state.frames),
                        last: state.finishing || state.closed,
                    };
                }
            }
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_come_out_in_order_and_the_limit_holds() {
        let outbox = Outbox::new(2, 1024);
        outbox.push(Bytes::from_static(b"a")).unwrap();
        outbox.push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"c")),
            Err(DeliveryError::QueueFull)
        );
        let batch = outbox.next_batch().await;
        assert_eq!(batch.frames, [&b"a"[..], &b"b"[..]]);
        assert!(!batch.last);
        outbox.push(Bytes::from_static(b"c")).unwrap();
        outbox.finish();
        let batch = outbox.next_batch().await;
        assert_eq!(batch.frames, [&b"c"[..]]);
        assert!(batch.last);
        assert_eq!(
            outbox.push(Bytes::from_static(b"d")),
            Err(DeliveryError::Closed)
        );
    }

    #[tokio::test]
    async fn the_byte_budget_holds_too() {
        let outbox = Outbox::new(100, 10);
        outbox.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(
            outbox.push(Bytes::from_static(b"12345")),
            Err(DeliveryError::QueueFull)
        );
        outbox.push(Bytes::from_static(b"1234")).unwrap();
        // Taking a batch frees the budget.
        assert_eq!(outbox.next_batch().await.frames.len(), 2);
        outbox.push(Bytes::from_static(b"1234567890")).unwrap();
    }

    #[tokio::test]
    async fn a_waiting_writer_is_woken() {
        let outbox = std::sync::Arc::new(Outbox::new(8, 1024));
        let writer = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.next_batch().await })
        };
        tokio::task::yield_now().await;
        outbox.push(Bytes::from_static(b"x")).unwrap();
        let batch = writer.await.unwrap();
        assert_eq!(batch.frames, [&b"x"[..]]);
    }
}
