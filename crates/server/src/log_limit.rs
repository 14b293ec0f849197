//! A bound on how fast one kind of log line may be written, so that a peer who causes it
//! over and over (refused handshakes, a full server) cannot fill the disk.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket for log lines; lines over the limit are counted, not written.
#[derive(Debug)]
pub struct LogLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl LogLimiter {
    /// Allows `rate` lines per second on average and bursts of `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            state: Mutex::new(State {
                tokens: f64::from(burst.max(1)),
                last: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were suppressed since
    /// the last one written; `None` when this one must be suppressed.
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.last = now;
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_counts_what_it_suppressed() {
        let limiter = LogLimiter::new(0.000_001, 3);
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), Some(0));
        for _ in 0..100 {
            assert_eq!(limiter.allow(), None);
        }
        assert_eq!(limiter.state.lock().unwrap().suppressed, 100);
    }
}
