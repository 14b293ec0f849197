//! Counting without contention: cache-line padded counters, and latency histograms with
//! their percentiles.
//!
//! Each generator thread counts latencies in [`LatencyCounts`] of its own (no lock, and a
//! few instructions per delivery); they become one histogram at the end of a run.

use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

/// Highest latency tracked, in nanoseconds (larger values are clamped to it).
const MAX_TRACKED_NS: u64 = 120 * 1_000_000_000;

/// An `AtomicU64` alone on its cache line, so counters of different clients never share
/// one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PaddedCounter(AtomicU64);

impl PaddedCounter {
    /// Adds `n`, ordered with every other sequentially consistent operation.
    pub fn add_seq_cst(&self, n: u64) {
        self.0.fetch_add(n, Ordering::SeqCst);
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

/// An empty latency histogram: nanoseconds, 3 significant digits, up to 120 s.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 3).expect("constant histogram bounds are valid")
}

/// Mantissa bits of a [`LatencyCounts`] bucket: buckets are under 1% (1/128) apart.
const MANTISSA_BITS: u32 = 7;
const MANTISSA: u64 = 1 << MANTISSA_BITS;

/// Latency samples in log-linear buckets (exact below 128 ns, then 128 buckets per power
/// of two): recording one is a leading-zero count, a shift and an increment, cheap
/// enough for every delivery. [`LatencyCounts::into_histogram`] turns them into a
/// histogram at the end.
#[derive(Debug, Clone)]
pub struct LatencyCounts {
    counts: Vec<u64>,
}

impl Default for LatencyCounts {
    fn default() -> Self {
        Self {
            counts: vec![0; Self::index(u64::MAX) + 1],
        }
    }
}

impl LatencyCounts {
    fn index(ns: u64) -> usize {
        if ns < MANTISSA {
            return ns as usize;
        }
        let shift = 63 - ns.leading_zeros() - MANTISSA_BITS;
        (u64::from(shift) * MANTISSA + (ns >> shift)) as usize
    }

    /// The middle of bucket `index`'s range.
    fn value(index: usize) -> u64 {
        let index = index as u64;
        if index < MANTISSA {
            return index;
        }
        let shift = index / MANTISSA - 1;
        let low = (index % MANTISSA + MANTISSA) << shift;
        low + (1 << shift) / 2
    }

    /// Counts one sample, in nanoseconds.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        let index = Self::index(ns);
        self.counts[index] += 1;
    }

    /// The samples as a histogram (each at the middle of its bucket).
    pub fn into_histogram(self) -> Histogram<u64> {
        let mut histogram = new_histogram();
        for (index, &count) in self.counts.iter().enumerate() {
            if count > 0 {
                histogram.saturating_record_n(Self::value(index).max(1), count);
            }
        }
        histogram
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
    fn percentiles_of_a_histogram() {
        let mut histogram = new_histogram();
        for i in 1..=1000u64 {
            histogram.saturating_record(i * 1000);
        }
        let p = Percentiles::of(&histogram).unwrap();
        assert!((p.p50_us - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 1.5, "{p:?}");
        assert!(Percentiles::of(&new_histogram()).is_none());
    }

    #[test]
    fn latency_buckets_are_within_one_percent() {
        for ns in [
            0,
            1,
            127,
            128,
            129,
            1000,
            65_432,
            1 << 40,
            u64::MAX / 3,
            u64::MAX,
        ] {
            let index = LatencyCounts::index(ns);
            let value = LatencyCounts::value(index);
            let error = (value as f64 - ns as f64).abs() / (ns.max(1) as f64);
            assert!(error < 0.01, "{ns} -> bucket {index} -> {value}");
        }
        let mut counts = LatencyCounts::default();
        for i in 1..=1000u64 {
            counts.record(i * 1000);
        }
        let p = Percentiles::of(&counts.into_histogram()).unwrap();
        assert_eq!(p.count, 1000);
        assert!((p.p50_us - 500.0).abs() < 5.0, "{p:?}");
        assert!((p.p99_us - 990.0).abs() < 10.0, "{p:?}");
    }

    #[test]
    fn counters_sum() {
        let c = counters(3);
        c[0].add_seq_cst(2);
        c[2].set(5);
        assert_eq!(sum(&c), 7);
    }
}
