//! The client's own pace: a send schedule that stays inside the flood limit the server
//! announced at join, so that the server never has to drop a line.
//!
//! The server runs a token bucket per connection (`burst` messages at once, then one
//! every `interval`). The [`Pacer`] is the same bucket on the client's side, kept with a
//! margin: half the burst and a 5% longer interval. Half the burst leaves the server's
//! bucket room for messages that the network delivers bunched together. It is written
//! as a virtual schedule (the "generic cell rate algorithm"): one instant, the
//! theoretical arrival time of the next message, moves forward by an interval per
//! message sent.

use std::time::Duration;

use protocol::FloodLimits;
use tokio::time::Instant;

/// Longest interval between messages a server may impose on us; a larger one is taken
/// as this, so a hostile number cannot stop the client or overflow a clock.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// Largest burst taken from the server.
const MAX_BURST: u32 = 10_000;

/// The schedule before the server has told its limits: one message at once (the join
/// or the resume), then one every 100 ms.
const UNKNOWN: FloodLimits = FloodLimits {
    interval_us: 100_000,
    burst: 2,
};

/// A send schedule within a flood limit.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    /// The time between two messages on average.
    interval: Duration,
    /// How far ahead of the schedule a message may go: `(burst - 1) * interval`.
    tolerance: Duration,
    /// When the schedule was started; `next` counts from here.
    start: Instant,
    /// The theoretical time of the next message, after `start`.
    next: Duration,
}

impl Pacer {
    /// A pacer for a new connection, before the server has told its limits.
    pub(crate) fn new(now: Instant) -> Self {
        let mut pacer = Self {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            start: now,
            next: Duration::ZERO,
        };
        pacer.set_limits(UNKNOWN);
        pacer
    }

    /// Follows the limits the server told, keeping the margin described above. What was
    /// sent so far still counts.
    pub(crate) fn set_limits(&mut self, limits: FloodLimits) {
        let interval = Duration::from_micros(limits.interval_us).min(MAX_INTERVAL);
        // 5% slower than the server's average, and at least a microsecond.
        self.interval = (interval + interval / 20).max(Duration::from_micros(1));
        let burst = (limits.burst.min(MAX_BURST) / 2).max(1);
        self.tolerance = self.interval * (burst - 1);
    }

    /// The earliest instant the next message may be sent.
    pub(crate) fn ready_at(&self) -> Instant {
        self.start + self.next.saturating_sub(self.tolerance)
    }

    /// Whether a message may be sent at `now`.
    pub(crate) fn is_ready(&self, now: Instant) -> bool {
        self.ready_at() <= now
    }

    /// Counts one message sent at `now`, whether or not it was its time (a join or a
    /// resume goes at once, and then delays what follows).
    pub(crate) fn sent(&mut self, now: Instant) {
        let now = now.saturating_duration_since(self.start);
        self.next = self.next.max(now) + self.interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limits(interval_ms: u64, burst: u32) -> FloodLimits {
        FloodLimits {
            interval_us: interval_ms * 1000,
            burst,
        }
    }

    /// Sends as fast as the pacer allows, `count` messages from `t0`; returns the send
    /// times relative to `t0`.
    fn schedule(pacer: &mut Pacer, t0: Instant, count: usize) -> Vec<Duration> {
        let mut now = t0;
        (0..count)
            .map(|_| {
                now = now.max(pacer.ready_at());
                pacer.sent(now);
                now - t0
            })
            .collect()
    }

    #[test]
    fn half_the_burst_at_once_then_slightly_slower_than_the_server() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        pacer.set_limits(limits(100, 20));
        let times = schedule(&mut pacer, t0, 30);
        // Ten at once, then one every 105 ms.
        assert!(
            times[..10].iter().all(|t| *t == Duration::ZERO),
            "{times:?}"
        );
        for pair in times[10..].windows(2) {
            assert_eq!(pair[1] - pair[0], 105 * MS);
        }
    }

    #[test]
    fn the_server_bucket_never_runs_dry() {
        // The server's bucket, replayed on our schedule: it must always have a token.
        let t0 = Instant::now();
        for (interval_ms, burst) in [(100, 20), (1000, 1), (10, 3), (250, 7)] {
            let mut pacer = Pacer::new(t0);
            pacer.set_limits(limits(interval_ms, burst));
            let start = t0;
            let rate = 1000.0 / interval_ms as f64;
            let mut tokens = f64::from(burst);
            let mut last = Duration::ZERO;
            for t in schedule(&mut pacer, start, 200) {
                tokens = (tokens + (t - last).as_secs_f64() * rate).min(f64::from(burst));
                last = t;
                assert!(tokens >= 1.0 - 1e-9, "{interval_ms} ms, burst {burst}: dry");
                tokens -= 1.0;
            }
        }
    }

    #[test]
    fn a_forced_message_delays_the_next() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        pacer.set_limits(limits(100, 2));
        assert!(pacer.is_ready(t0));
        pacer.sent(t0);
        assert!(!pacer.is_ready(t0));
        assert_eq!(pacer.ready_at() - t0, 105 * MS);
    }

    #[test]
    fn hostile_limits_stay_usable() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0);
        pacer.set_limits(FloodLimits {
            interval_us: u64::MAX,
            burst: u32::MAX,
        });
        pacer.sent(t0);
        assert!(pacer.ready_at() <= t0 + MAX_INTERVAL * 2);
        pacer.set_limits(FloodLimits {
            interval_us: 0,
            burst: 0,
        });
        let times = schedule(&mut pacer, t0 + MAX_INTERVAL * 2, 3);
        assert_eq!(times.len(), 3);
    }
}
