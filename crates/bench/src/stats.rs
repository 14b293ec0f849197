//! Counting without contention: cache-line padded counters and a latency histogram split
//! into shards that clients fill in batches.
//!
//! Thousands of client tasks record latencies at millions per second on two cores, so a
//! single locked histogram would measure the lock. Each client buffers samples locally
//! ([`LatencyBuffer`]) and adds them to one of a few shards at a time; the shards are
//! merged once at the end.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Highest latency tracked, in nanoseconds (larger values are clamped to it).
const MAX_TRACKED_NS: u64 = 120 * 1_000_000_000;

/// Shards of a [`ShardedHistogram`].
const SHARDS: usize = 8;

/// Samples a [`LatencyBuffer`] holds before it flushes them to its shard.
const BUFFERED: usize = 256;

/// An `AtomicU64` alone on its cache line, so counters of different clients never share
/// one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PaddedCounter(AtomicU64);

impl PaddedCounter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the value.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Release);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A vector of `n` zeroed padded counters.
pub fn counters(n: usize) -> Vec<PaddedCounter> {
    (0..n).map(|_| PaddedCounter::default()).collect()
}

/// The sum of a slice of counters.
pub fn sum(counters: &[PaddedCounter]) -> u64 {
    counters.iter().map(PaddedCounter::get).sum()
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("constant histogram bounds are valid")
}

/// A latency histogram (nanoseconds, 3 significant digits) in a few locked shards.
pub struct ShardedHistogram {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for ShardedHistogram {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

impl ShardedHistogram {
    /// A buffer for client `index` that flushes into this histogram.
    pub fn buffer(&self, index: usize) -> LatencyBuffer<'_> {
        LatencyBuffer {
            shard: &self.shards[index % SHARDS],
            samples: Vec::new(),
        }
    }

    /// All shards merged.
    pub fn merged(&self) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Same bounds everywhere, so adding cannot fail.
            let _ = all.add(&*shard);
        }
        all
    }
}

/// A client's local batch of latency samples; flushed to its shard when full and when
/// dropped.
pub struct LatencyBuffer<'a> {
    shard: &'a Mutex<Histogram<u64>>,
    samples: Vec<u64>,
}

impl LatencyBuffer<'_> {
    /// Records one latency in nanoseconds.
    pub fn record(&mut self, ns: u64) {
        if self.samples.capacity() == 0 {
            self.samples.reserve_exact(BUFFERED);
        }
        self.samples.push(ns.max(1));
        if self.samples.len() >= BUFFERED {
            self.flush();
        }
    }

    /// Moves the buffered samples into the shard.
    pub fn flush(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut shard = self
            .shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for &ns in &self.samples {
            shard.saturating_record(ns);
        }
        self.samples.clear();
    }
}

impl Drop for LatencyBuffer<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Number of samples.
    pub count: u64,
}

impl Percentiles {
    /// Percentiles of `histogram` (nanoseconds); `None` when it is empty.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        if histogram.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Some(Self {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            count: histogram.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_reach_the_merged_histogram() {
        let histogram = ShardedHistogram::default();
        for client in 0..20 {
            let mut buffer = histogram.buffer(client);
            for i in 1..=1000u64 {
                buffer.record(i * 1000);
            }
        }
        let merged = histogram.merged();
        assert_eq!(merged.len(), 20_000);
        let p = Percentiles::of(&merged).unwrap();
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.5, "{p:?}");
    }

    #[test]
    fn empty_histogram_has_no_percentiles() {
        assert!(Percentiles::of(&ShardedHistogram::default().merged()).is_none());
    }

    #[test]
    fn counters_sum() {
        let c = counters(3);
        c[0].add(2);
        c[2].add(5);
        assert_eq!(sum(&c), 7);
    }
}
