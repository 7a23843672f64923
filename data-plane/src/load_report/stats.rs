//! The load of one service on one node, as the request path records it: calls started
//! and finished, errors, a latency histogram and the node's latest ORCA report. The
//! reporter takes (reads and resets) the figures once per report interval
//! ([`CallLoad::take`]).
//!
//! The request path only does atomic operations here: no lock, and no allocation but the
//! histogram's buckets, allocated on the first call that finishes.
//!
//! **In flight, time-weighted.** One `AtomicU64` packs the count in flight (low
//! [`COUNT_BITS`] bits) with an accumulator (the high bits) to which a call adds its end
//! time and from which it subtracts its start time (µs). The area under the in-flight
//! curve from the start of time to `T` is then `accumulator + count × T` (each call
//! still in flight contributes `T − start`, each finished one `end − start`), read from
//! one atomic load, so the reading is always consistent. The accumulator wraps modulo
//! 2^44; the difference of two readings is exact as long as one interval's area stays
//! below 2^44 µs·calls (about 1,000 calls in flight for 200 days).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use meridian_shared::latency_histogram::{BUCKETS, LatencyHistogram, bucket_index};
use tokio::time::Instant;

use super::orca::{OrcaCell, OrcaFigures};
use crate::clock;

/// Bits of the packed word that count calls in flight (up to about a million).
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// The accumulator's modulus: the packed word's high bits.
const AREA_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// The load of one service on one node.
#[derive(Debug)]
pub struct CallLoad {
    pub node_id: String,
    pub service: String,
    /// Calls in flight (low bits) and the area accumulator (high bits); see the module doc.
    flight: AtomicU64,
    in_flight_max: AtomicU32,
    errors: AtomicU64,
    /// Finished calls by latency bucket; allocated on the first.
    histogram: OnceLock<Box<[AtomicU64]>>,
    orca: OrcaCell,
    /// The area reading at the last [`CallLoad::take`]; only the reporter touches it.
    area_taken: AtomicU64,
}

/// What a [`CallLoad`] gathered since it was last taken; figures of several intervals
/// merge into one (when a report could not be sent, its figures go into the next).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntervalFigures {
    /// Finished calls by latency; its count is the calls finished.
    pub latency: LatencyHistogram,
    pub errors: u64,
    /// In flight when taken.
    pub in_flight: u32,
    pub in_flight_max: u32,
    /// The area under the in-flight curve over the interval, µs × calls.
    pub in_flight_area_us: u64,
    pub orca: Option<OrcaFigures>,
}

/// One call in flight on a [`CallLoad`]; it ends when the guard drops.
#[derive(Debug)]
pub struct LoadInFlight(Arc<CallLoad>);

// === impl CallLoad ===

impl CallLoad {
    pub fn new(service: &str, node_id: &str) -> Self {
        CallLoad {
            node_id: node_id.to_owned(),
            service: service.to_owned(),
            flight: AtomicU64::new(0),
            in_flight_max: AtomicU32::new(0),
            errors: AtomicU64::new(0),
            histogram: OnceLock::new(),
            orca: OrcaCell::default(),
            area_taken: AtomicU64::new(0),
        }
    }

    /// Counts a call in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> LoadInFlight {
        let start = now_micros() << COUNT_BITS;
        let before = self
            .flight
            .fetch_add(start.wrapping_neg().wrapping_add(1), Ordering::Relaxed);
        let count = ((before & COUNT_MASK) + 1) as u32;
        self.in_flight_max.fetch_max(count, Ordering::Relaxed);
        LoadInFlight(Arc::clone(self))
    }

    fn end(&self) {
        let end = now_micros() << COUNT_BITS;
        // The count is at least one (this call's), so subtracting one never borrows from
        // the accumulator.
        self.flight
            .fetch_add(end.wrapping_sub(1), Ordering::Relaxed);
    }

    /// Records a finished call: its gRPC status code (0 is OK) and latency.
    pub fn record(&self, code: i32, latency: Duration) {
        if code != 0 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets()[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    fn buckets(&self) -> &[AtomicU64] {
        self.histogram
            .get_or_init(|| (0..BUCKETS).map(|_| AtomicU64::new(0)).collect())
    }

    /// Keeps the node's ORCA report if `headers` (trailers, or the headers of a
    /// trailers-only response) carry one; returns its utilisation.
    pub fn observe_orca_headers(&self, headers: &http::HeaderMap) -> Option<f64> {
        self.orca.observe_headers(headers, &self.node_id)
    }

    /// Keeps the node's ORCA report if tonic `metadata` carries one; returns its
    /// utilisation.
    pub fn observe_orca_metadata(&self, metadata: &tonic::metadata::MetadataMap) -> Option<f64> {
        self.orca.observe_metadata(metadata, &self.node_id)
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> u32 {
        (self.flight.load(Ordering::Relaxed) & COUNT_MASK) as u32
    }

    /// The figures since the last take, resetting them.
    pub fn take(&self) -> IntervalFigures {
        let mut latency = LatencyHistogram::new();
        if let Some(buckets) = self.histogram.get() {
            for (index, bucket) in buckets.iter().enumerate() {
                if bucket.load(Ordering::Relaxed) > 0 {
                    latency.add(index, bucket.swap(0, Ordering::Relaxed));
                }
            }
        }
        let errors = self.errors.swap(0, Ordering::Relaxed);
        let packed = self.flight.load(Ordering::Relaxed);
        let in_flight = (packed & COUNT_MASK) as u32;
        let area = (packed >> COUNT_BITS)
            .wrapping_add(u64::from(in_flight).wrapping_mul(now_micros()))
            & AREA_MASK;
        let taken = self.area_taken.swap(area, Ordering::Relaxed);
        let in_flight_area_us = area.wrapping_sub(taken) & AREA_MASK;
        // The next interval's maximum starts from what is in flight now.
        let in_flight_max = self
            .in_flight_max
            .swap(in_flight, Ordering::Relaxed)
            .max(in_flight);
        IntervalFigures {
            latency,
            errors,
            in_flight,
            in_flight_max,
            in_flight_area_us,
            orca: self.orca.take(),
        }
    }
}

impl Drop for LoadInFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

// === impl IntervalFigures ===

impl IntervalFigures {
    /// Whether there is anything to report: calls finished, in flight, or ORCA reports.
    pub fn is_active(&self) -> bool {
        self.latency.count() > 0
            || self.in_flight > 0
            || self.in_flight_max > 0
            || self.orca.is_some()
    }

    /// Adds the figures of the interval that followed this one.
    pub fn merge(&mut self, later: IntervalFigures) {
        self.latency.merge(&later.latency);
        self.errors += later.errors;
        self.in_flight = later.in_flight;
        self.in_flight_max = self.in_flight_max.max(later.in_flight_max);
        self.in_flight_area_us = self
            .in_flight_area_us
            .saturating_add(later.in_flight_area_us);
        self.orca = match (self.orca.take(), later.orca) {
            (Some(earlier), Some(later)) => Some(earlier.followed_by(later)),
            (earlier, later) => later.or(earlier),
        };
    }

    /// The time-weighted mean in flight over `interval`, in thousandths.
    pub fn in_flight_mean_milli(&self, interval: Duration) -> u64 {
        let micros = interval.as_micros().max(1);
        u64::try_from(u128::from(self.in_flight_area_us) * 1_000 / micros).unwrap_or(u64::MAX)
    }
}

/// Microseconds on the tokio clock (so paused-time tests drive it) since a fixed instant,
/// wrapping: only differences are used.
fn now_micros() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let (now, epoch) = (clock::now(), *EPOCH.get_or_init(Instant::now));
    // A paused test clock may start before the epoch another runtime captured. Rounding
    // toward minus infinity on both sides of the epoch keeps a difference of whole
    // microseconds exact when the clock crosses it.
    let nanos = if now >= epoch {
        (now - epoch).as_nanos() as i128
    } else {
        -((epoch - now).as_nanos() as i128)
    };
    nanos.div_euclid(1_000) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Arc<CallLoad> {
        Arc::new(CallLoad::new("demo.v1.Echo", "eu-1"))
    }

    #[tokio::test(start_paused = true)]
    async fn calls_and_errors_are_counted_and_reset_when_taken() {
        let load = load();
        for code in [0, 0, 14, 0, 5] {
            load.record(code, Duration::from_millis(3));
        }
        let taken = load.take();
        assert_eq!(taken.latency.count(), 5);
        assert_eq!(taken.errors, 2, "UNAVAILABLE and NOT_FOUND are errors");
        assert!(taken.is_active());

        let next = load.take();
        assert_eq!(next.latency.count(), 0);
        assert_eq!(next.errors, 0);
        assert!(!next.is_active(), "nothing happened since the last take");
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_mean_is_weighted_by_time_and_max_restarts_from_the_current_count() {
        let load = load();
        load.take();
        let first = load.start();
        let second = load.start();
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(first);
        tokio::time::advance(Duration::from_secs(1)).await;

        // Two calls for 1 s, then one for 1 s: 3 call-seconds over 2 s.
        let taken = load.take();
        assert_eq!(taken.in_flight, 1);
        assert_eq!(taken.in_flight_max, 2);
        assert_eq!(taken.in_flight_area_us, 3_000_000);
        assert_eq!(taken.in_flight_mean_milli(Duration::from_secs(2)), 1_500);

        // The next interval starts with the call still in flight.
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(second);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let taken = load.take();
        assert_eq!(taken.in_flight, 0);
        assert_eq!(
            taken.in_flight_max, 1,
            "the max is this interval's, not the last one's"
        );
        assert_eq!(taken.in_flight_mean_milli(Duration::from_secs(2)), 250);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_come_from_the_shared_buckets() {
        let load = load();
        for _ in 0..98 {
            load.record(0, Duration::from_millis(1));
        }
        for _ in 0..2 {
            load.record(0, Duration::from_millis(100));
        }
        let taken = load.take();
        let p50 = taken.latency.quantile_micros(0.5).unwrap();
        let p99 = taken.latency.quantile_micros(0.99).unwrap();
        assert!((p50 - 1_000.0).abs() < 70.0, "p50 {p50} µs");
        assert!((p99 - 100_000.0).abs() < 7_000.0, "p99 {p99} µs");
        let (indexes, counts) = taken.latency.to_sparse();
        assert_eq!(indexes.len(), 2, "sparse: only the two buckets used");
        assert_eq!(counts.iter().sum::<u64>(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn merged_intervals_add_up() {
        let load = load();
        load.record(0, Duration::from_millis(1));
        let _held = load.start();
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut earlier = load.take();
        load.record(2, Duration::from_millis(1));
        load.record(0, Duration::from_millis(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        earlier.merge(load.take());
        assert_eq!(earlier.latency.count(), 3);
        assert_eq!(earlier.errors, 1);
        assert_eq!(earlier.in_flight, 1);
        assert_eq!(earlier.in_flight_mean_milli(Duration::from_secs(2)), 1_000);
    }
}
