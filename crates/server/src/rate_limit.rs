//! The per-connection flood limit: a token bucket.
//!
//! Tokens refill at `rate` per second up to `burst`. A message with no token is refused;
//! `burst` refusals in a row (no token refilled in between) mean the client keeps flooding
//! and is disconnected, as IRC servers do with "Excess Flood".

use std::time::Instant;

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Allow,
    /// Over the limit: drop it. `first` is true for the first refusal of a streak, so the
    /// client is told once rather than for every dropped message.
    Refuse {
        /// First refusal since the last allowed message.
        first: bool,
    },
    /// Persistently over the limit: disconnect.
    Disconnect,
}

/// A token bucket with a refusal streak counter.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    refused_in_a_row: u32,
    max_refused: u32,
}

impl TokenBucket {
    /// A full bucket allowing `rate` messages/s on average and bursts of `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst_f = f64::from(burst.max(1));
        Self {
            rate,
            burst: burst_f,
            tokens: burst_f,
            last: Instant::now(),
            refused_in_a_row: 0,
            max_refused: burst.max(1),
        }
    }

    /// Judges one message arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        self.check_cost(now, 1.0)
    }

    /// Judges one message arriving at `now` that costs `cost` tokens (capped at the
    /// burst, so every message can pass a full bucket).
    pub fn check_cost(&mut self, now: Instant, cost: f64) -> Verdict {
        let cost = cost.clamp(1.0, self.burst);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            self.refused_in_a_row = 0;
            return Verdict::Allow;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row > self.max_refused {
            Verdict::Disconnect
        } else {
            Verdict::Refuse {
                first: self.refused_in_a_row == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refuse_then_disconnect() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.check(t0), Verdict::Allow);
        }
        assert_eq!(bucket.check(t0), Verdict::Refuse { first: true });
        assert_eq!(bucket.check(t0), Verdict::Refuse { first: false });
        assert_eq!(bucket.check(t0), Verdict::Refuse { first: false });
        assert_eq!(bucket.check(t0), Verdict::Disconnect);
    }

    #[test]
    fn steady_sender_under_the_rate_is_never_refused() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2);
        for i in 0..100 {
            let now = t0 + Duration::from_millis(100 * i);
            assert_eq!(bucket.check(now), Verdict::Allow);
        }
    }

    #[test]
    fn costly_messages_take_more_tokens() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 10);
        assert_eq!(bucket.check_cost(t0, 5.0), Verdict::Allow);
        assert_eq!(bucket.check_cost(t0, 5.0), Verdict::Allow);
        assert_eq!(bucket.check_cost(t0, 5.0), Verdict::Refuse { first: true });
        // Capped at the burst: a tiny bucket still lets one through.
        let mut tiny = TokenBucket::new(10.0, 1);
        assert_eq!(tiny.check_cost(t0, 5.0), Verdict::Allow);
    }

    #[test]
    fn refill_resets_the_streak() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 1);
        assert_eq!(bucket.check(t0), Verdict::Allow);
        assert_eq!(bucket.check(t0), Verdict::Refuse { first: true });
        let later = t0 + Duration::from_millis(150);
        assert_eq!(bucket.check(later), Verdict::Allow);
        assert_eq!(bucket.check(later), Verdict::Refuse { first: true });
    }
}
