//! Closed-loop flow control: each sender keeps at most W messages in flight, a message
//! being in flight until every receiver has it.
//!
//! Sender `s` arms slot `s * W + seq % W` with the number of receivers before it sends
//! `seq`; receipts count the slot down and the receipt that reaches zero completes the
//! message. Receipts are not counted one by one: each generator thread gathers them in
//! [`Receipts`] while it handles a round of reads and applies them with one atomic
//! operation per message touched ([`Receipts::flush`]), so at N=1000 a message costs its
//! sender's slot about one atomic operation per thread, not a thousand contended ones.
//!
//! A sender may send its next message when that message's slot is free (counted down to
//! zero by the message that used it W messages earlier), so the window holds whatever
//! order the receipts are applied in: messages of one sender can complete out of order
//! when a round's receipts are applied slot by slot. A slot found busy when armed (or
//! counted below zero) is a *conflict*, which only loss, duplication or reordering can
//! cause.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::stats::{self, PaddedCounter};

/// A countdown alone on its cache line.
#[derive(Default)]
#[repr(align(64))]
struct Slot(AtomicU32);

/// The window shared by every sender and receiver of a run.
pub struct Window {
    width: u64,
    receivers: u32,
    slots: Vec<Slot>,
    completed: Vec<PaddedCounter>,
    conflicts: AtomicU64,
}

impl Window {
    /// A window of `width` messages for each of `senders`, each message going to
    /// `receivers` clients.
    pub fn new(senders: usize, width: usize, receivers: usize) -> Self {
        let width = width.max(1);
        Self {
            width: width as u64,
            receivers: u32::try_from(receivers).unwrap_or(u32::MAX),
            slots: (0..senders * width).map(|_| Slot::default()).collect(),
            completed: stats::counters(senders),
            conflicts: AtomicU64::new(0),
        }
    }

    /// Number of slots (senders times width).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot of message `seq` of `sender`.
    pub fn slot_of(&self, sender: u32, seq: u64) -> usize {
        (u64::from(sender) * self.width + seq % self.width) as usize
    }

    /// Messages `sender` may send now, its next being `next_seq`: how many slots from
    /// that message's on are free.
    pub fn free(&self, sender: u32, next_seq: u64) -> u64 {
        let mut free = 0;
        while free < self.width
            && self.slots[self.slot_of(sender, next_seq + free)]
                .0
                .load(Ordering::Acquire)
                == 0
        {
            free += 1;
        }
        free
    }

    /// Marks message `seq` of `sender` as in flight; called before it is sent.
    pub fn arm(&self, sender: u32, seq: u64) {
        let slot = &self.slots[self.slot_of(sender, seq)].0;
        if slot.swap(self.receivers, Ordering::AcqRel) != 0 {
            // The message that used this slot before never completed.
            self.conflicts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies `n` receipts to `slot`; returns the sender whose message it completed.
    fn count(&self, slot: usize, n: u32) -> Option<u32> {
        let counted =
            self.slots[slot]
                .0
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                    left.checked_sub(n)
                });
        match counted {
            Ok(left) if left == n => {
                let sender = (slot as u64 / self.width) as u32;
                // SeqCst pairs with the parked flag of the sender's thread (see engine).
                self.completed[sender as usize].add_seq_cst(1);
                Some(sender)
            }
            Ok(_) => None,
            Err(_) => {
                self.conflicts.fetch_add(u64::from(n), Ordering::Relaxed);
                None
            }
        }
    }

    /// Messages completed, all senders together.
    pub fn completed(&self) -> u64 {
        stats::sum(&self.completed)
    }

    /// Receipts that did not fit the window; non-zero only after loss, duplication or
    /// reordering.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }
}

/// One thread's receipts not yet applied to the [`Window`].
#[derive(Debug, Default)]
pub struct Receipts {
    counts: Vec<u32>,
    touched: Vec<u32>,
}

impl Receipts {
    /// Receipts for a window of `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            counts: vec![0; slots],
            touched: Vec::new(),
        }
    }

    /// Counts one receipt for `slot`.
    pub fn add(&mut self, slot: usize) {
        let count = &mut self.counts[slot];
        if *count == 0 {
            self.touched.push(slot as u32);
        }
        *count += 1;
    }

    /// Applies every counted receipt, in the order the slots were first touched; calls
    /// `completed` with the sender of every message that completes.
    pub fn flush(&mut self, window: &Window, mut completed: impl FnMut(u32)) {
        for &slot in &self.touched {
            let n = std::mem::take(&mut self.counts[slot as usize]);
            if let Some(sender) = window.count(slot as usize, n) {
                completed(sender);
            }
        }
        self.touched.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_completes_after_every_receipt() {
        let window = Window::new(2, 4, 3);
        window.arm(1, 0);
        assert_eq!(window.free(1, 1), 3);
        let mut receipts = Receipts::new(window.slots());
        let mut done = Vec::new();
        receipts.add(window.slot_of(1, 0));
        receipts.add(window.slot_of(1, 0));
        receipts.flush(&window, |s| done.push(s));
        assert!(done.is_empty());
        receipts.add(window.slot_of(1, 0));
        receipts.flush(&window, |s| done.push(s));
        assert_eq!(done, [1]);
        assert_eq!(window.completed(), 1);
        assert_eq!(window.free(1, 1), 4);
        assert_eq!(window.conflicts(), 0);
    }

    #[test]
    fn a_sender_waits_for_the_slot_of_its_next_message_only() {
        let window = Window::new(1, 2, 1);
        window.arm(0, 0);
        window.arm(0, 1);
        assert_eq!(window.free(0, 2), 0);
        // Message 1 completes before message 0: message 2 (slot of 0) must still wait.
        let mut receipts = Receipts::new(window.slots());
        receipts.add(window.slot_of(0, 1));
        receipts.flush(&window, |_| {});
        assert_eq!(window.free(0, 2), 0);
        receipts.add(window.slot_of(0, 0));
        receipts.flush(&window, |_| {});
        assert_eq!(window.free(0, 2), 2);
        assert_eq!(window.completed(), 2);
        assert_eq!(window.conflicts(), 0);
    }

    #[test]
    fn duplicates_and_reused_slots_are_conflicts() {
        let window = Window::new(1, 2, 1);
        window.arm(0, 0);
        let mut receipts = Receipts::new(window.slots());
        receipts.add(window.slot_of(0, 0));
        receipts.add(window.slot_of(0, 0));
        receipts.flush(&window, |_| {});
        assert_eq!(window.conflicts(), 2);
        window.arm(0, 1);
        window.arm(0, 3);
        assert_eq!(window.conflicts(), 3);
    }
}
