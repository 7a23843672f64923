//! The latency histogram proxies report and the control plane merges: fixed log-scale
//! buckets shared by both sides, so histograms from many proxies add up bucket by bucket
//! and percentiles are merged exactly (to the bucket's precision) instead of averaged.
//!
//! Buckets are HDR-style: values below 8 µs have a bucket each; above, every power of two
//! is split into 8 equal buckets, so a bucket spans at most 1/8 of its lower bound and the
//! midpoint reported for a percentile is within about 6 % of any value in it. Values from
//! 2^37 µs (≈ 38 h) up share the last bucket.

use std::collections::BTreeMap;

/// Sub-buckets per power of two.
const SUB_BUCKETS: u64 = 8;
/// The power of two at which values stop getting their own buckets.
const MAX_EXPONENT: u32 = 37;
/// Number of buckets.
pub const BUCKETS: usize = (SUB_BUCKETS as usize) * (MAX_EXPONENT as usize - 1);

/// The bucket of a latency in microseconds.
pub fn bucket_index(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros();
    if exponent >= MAX_EXPONENT {
        return BUCKETS - 1;
    }
    let sub = (micros >> (exponent - 3)) - SUB_BUCKETS;
    (SUB_BUCKETS as usize) * (exponent as usize - 2) + sub as usize
}

/// The lowest value in a bucket, microseconds.
pub fn bucket_lower(index: usize) -> u64 {
    let index = index.min(BUCKETS - 1) as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let exponent = index / SUB_BUCKETS + 2;
    let sub = index % SUB_BUCKETS;
    (SUB_BUCKETS + sub) << (exponent - 3)
}

/// The value a percentile falling in this bucket reports: the bucket's midpoint.
pub fn bucket_value(index: usize) -> f64 {
    let lower = bucket_lower(index);
    let next = if index + 1 >= BUCKETS {
        lower + lower / SUB_BUCKETS
    } else {
        bucket_lower(index + 1)
    };
    (lower as f64 + next as f64) / 2.0
}

/// A sparse histogram: bucket index → count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: BTreeMap<usize, u64>,
    total: u64,
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// From the report's parallel index and count lists; indexes past the last bucket
    /// and lists of unequal length are refused.
    pub fn from_sparse(indexes: &[u32], counts: &[u64]) -> Result<Self, InvalidHistogram> {
        if indexes.len() != counts.len() {
            return Err(InvalidHistogram::LengthMismatch {
                indexes: indexes.len(),
                counts: counts.len(),
            });
        }
        let mut histogram = Self::new();
        for (&index, &count) in indexes.iter().zip(counts) {
            let index = index as usize;
            if index >= BUCKETS {
                return Err(InvalidHistogram::BucketOutOfRange(index));
            }
            histogram.add(index, count);
        }
        Ok(histogram)
    }

    /// The parallel index and count lists of a report, lowest bucket first.
    pub fn to_sparse(&self) -> (Vec<u32>, Vec<u64>) {
        self.counts
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(&index, &count)| (index as u32, count))
            .unzip()
    }

    pub fn record(&mut self, micros: u64) {
        self.add(bucket_index(micros), 1);
    }

    /// Adds `count` samples to bucket `index` (must be below [`BUCKETS`]).
    pub fn add(&mut self, index: usize, count: u64) {
        if count == 0 {
            return;
        }
        *self.counts.entry(index.min(BUCKETS - 1)).or_default() += count;
        self.total = self.total.saturating_add(count);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (&index, &count) in &other.counts {
            self.add(index, count);
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in microseconds; `None` when empty.
    pub fn quantile_micros(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (&index, &count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(bucket_value(index));
            }
        }
        self.counts.keys().next_back().map(|&i| bucket_value(i))
    }
}

/// A report's histogram that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHistogram {
    #[error("latency_bucket_index has {indexes} entries but latency_bucket_count has {counts}")]
    LengthMismatch { indexes: usize, counts: usize },
    #[error("latency bucket {0} does not exist (there are {BUCKETS})")]
    BucketOutOfRange(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_the_bucket_whose_bounds_hold_it() {
        let mut value = 0u64;
        while value < 1 << 36 {
            let index = bucket_index(value);
            assert!(bucket_lower(index) <= value, "value {value} bucket {index}");
            assert!(
                index + 1 == BUCKETS || value < bucket_lower(index + 1),
                "value {value} bucket {index}"
            );
            value = value * 9 / 8 + 1;
        }
        assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_bucket_value_is_within_seven_percent_of_what_it_holds() {
        for micros in [9u64, 100, 1_234, 50_000, 999_999, 12_345_678] {
            let reported = bucket_value(bucket_index(micros));
            let error = (reported - micros as f64).abs() / micros as f64;
            assert!(error < 0.07, "{micros} µs reported as {reported}");
        }
    }

    #[test]
    fn merged_histograms_give_the_percentiles_of_all_samples() {
        let mut fast = LatencyHistogram::new();
        let mut slow = LatencyHistogram::new();
        for _ in 0..98 {
            fast.record(1_000);
        }
        for _ in 0..2 {
            slow.record(100_000);
        }
        let (indexes, counts) = slow.to_sparse();
        fast.merge(&LatencyHistogram::from_sparse(&indexes, &counts).unwrap());
        assert_eq!(fast.count(), 100);
        let p50 = fast.quantile_micros(0.5).unwrap();
        let p99 = fast.quantile_micros(0.99).unwrap();
        assert!((p50 - 1_000.0).abs() / 1_000.0 < 0.07, "p50 {p50}");
        assert!((p99 - 100_000.0).abs() / 100_000.0 < 0.07, "p99 {p99}");
    }

    #[test]
    fn malformed_sparse_lists_are_refused() {
        assert_eq!(
            LatencyHistogram::from_sparse(&[1, 2], &[3]),
            Err(InvalidHistogram::LengthMismatch {
                indexes: 2,
                counts: 1
            })
        );
        assert_eq!(
            LatencyHistogram::from_sparse(&[BUCKETS as u32], &[1]),
            Err(InvalidHistogram::BucketOutOfRange(BUCKETS))
        );
        assert_eq!(LatencyHistogram::new().quantile_micros(0.99), None);
    }
}
