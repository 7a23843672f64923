//! Peak-EWMA: a per-endpoint round-trip-time estimate that reacts to slowness at once and
//! forgets it gradually, as in Finagle's and Linkerd's `PeakEwma` balancers. The adaptive
//! balancer multiplies it by the endpoint's in-flight requests to get a cost.
//!
//! How it moves:
//!
//! - **Peak**: a sample above the estimate replaces it immediately. One slow response is
//!   enough to steer traffic away; a plain average would need many.
//! - **Decay**: a sample below the estimate is blended in with weight `1 - w`, where
//!   `w = exp(-elapsed / decay)` and `elapsed` is the time since the last sample. The
//!   weight depends on time, not on the number of samples, so an endpoint recovers at the
//!   same pace whether it serves ten requests a second or ten thousand: after one `decay`
//!   time constant about 63 % of the gap to the new latency is closed, after three 95 %.
//! - **Idle relaxation**: without samples, [`PeakEwma::estimate`] relaxes toward the
//!   default RTT with the same time constant. Finagle and tower decay toward zero instead;
//!   we don't, because the cost is `estimate × (in-flight + 1)`: an endpoint that stopped
//!   answering gets no samples while its requests pile up, and an estimate tending to zero
//!   would erase that pile-up from its cost and make the black hole the cheapest choice.
//!   Relaxing to the prior still lets a once-slow endpoint that got no traffic be tried
//!   again: its first new sample sets the estimate for real.
//!
//! Parameters: `default_rtt` is the estimate before any sample (and the value it relaxes
//! to); `decay` is the time constant. [`PeakEwma::default`] uses [`DEFAULT_RTT`] (1 ms) and
//! [`DEFAULT_DECAY`] (10 s, Linkerd's default). A low seed makes a new endpoint attractive
//! until its first response, which then sets the estimate (a sample above the seed is a
//! peak), so a newcomer is measured quickly instead of starved.
//!
//! Lock-free: the estimate (`f64` bits) and the time of the last sample live in two
//! atomics. Time is `tokio::time`, so paused-time tests can drive the decay.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Estimate of an endpoint before its first response: optimistic, see the module doc.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Time constant of the decay: how fast an old peak is forgotten.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct PeakEwma {
    default_rtt_ns: f64,
    decay_ns: f64,
    /// `f64` bits: the estimate in nanoseconds as of `stamp_ns`.
    estimate_ns: AtomicU64,
    /// When the estimate was last updated, nanoseconds since [`epoch`].
    stamp_ns: AtomicI64,
}

// === impl PeakEwma ===

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma::new(DEFAULT_RTT, DEFAULT_DECAY)
    }
}

impl PeakEwma {
    /// An estimate that starts at (and relaxes to) `default_rtt` and forgets with time
    /// constant `decay`.
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        let default_rtt_ns = nanos(default_rtt);
        PeakEwma {
            default_rtt_ns,
            // A zero time constant would divide by zero; one nanosecond means "forget at
            // once", which is what zero asks for.
            decay_ns: nanos(decay).max(1.0),
            estimate_ns: AtomicU64::new(default_rtt_ns.to_bits()),
            stamp_ns: AtomicI64::new(now_ns()),
        }
    }

    /// Records the round-trip time of a finished request.
    pub fn observe(&self, rtt: Duration) {
        let rtt_ns = nanos(rtt);
        let now = now_ns();
        let weight = self.weight_since(self.stamp_ns.load(Ordering::Relaxed), now);
        // Benign races: the update is a compare-and-swap on the estimate, so concurrent
        // samples are never lost, but the time stamp is a separate atomic: two samples
        // racing may each decay from the other's stamp. That skews one blend by the
        // interval between them, which is noise next to what the estimate is for.
        let _ = self
            .estimate_ns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let estimate = f64::from_bits(bits);
                let next = if rtt_ns > estimate {
                    rtt_ns
                } else {
                    estimate * weight + rtt_ns * (1.0 - weight)
                };
                Some(next.to_bits())
            });
        // `fetch_max` so a late writer with an older clock reading never moves time back.
        self.stamp_ns.fetch_max(now, Ordering::Relaxed);
    }

    /// The current estimate: the last one, relaxed toward the default RTT for the time
    /// since the last sample. Reading changes nothing.
    pub fn estimate(&self) -> Duration {
        let estimate = f64::from_bits(self.estimate_ns.load(Ordering::Relaxed));
        let weight = self.weight_since(self.stamp_ns.load(Ordering::Relaxed), now_ns());
        let relaxed = self.default_rtt_ns + (estimate - self.default_rtt_ns) * weight;
        // `as` saturates (and maps NaN to 0), so this cannot panic.
        Duration::from_nanos(relaxed as u64)
    }

    /// The weight `exp(-elapsed / decay)` of the old estimate after `stamp`.
    fn weight_since(&self, stamp: i64, now: i64) -> f64 {
        let elapsed = now.saturating_sub(stamp).max(0) as f64;
        (-elapsed / self.decay_ns).exp()
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_nanos() as f64
}

/// A fixed instant all estimates measure time from, so a time fits in an integer atomic.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`]; signed because tokio's paused test clocks each start from
/// their own base, which can be earlier than the epoch another runtime captured first.
fn now_ns() -> i64 {
    let (now, epoch) = (Instant::now(), epoch());
    let signed = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    if now >= epoch {
        signed(now - epoch)
    } else {
        -signed(epoch - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1e-3;

    fn ms(estimate: Duration) -> f64 {
        estimate.as_secs_f64() / MS
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 0.01,
            "{actual} ms, expected {expected} ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn starts_at_the_default_rtt() {
        assert_eq!(PeakEwma::default().estimate(), DEFAULT_RTT);
        let ewma = PeakEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        assert_eq!(ewma.estimate(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_higher_rtt_is_taken_at_once() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(1));
        tokio::time::advance(Duration::from_millis(5)).await;
        ewma.observe(Duration::from_millis(50));
        assert_eq!(ewma.estimate(), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_rtt_is_blended_in_by_time_elapsed() {
        let ewma = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(10));

        // No time elapsed: the old estimate has full weight, the lower sample none.
        ewma.observe(Duration::from_millis(2));
        assert_close(ms(ewma.estimate()), 10.0);

        // One time constant later: weight e^-1 on the old 10 ms, 1 - e^-1 on the 2 ms.
        tokio::time::advance(Duration::from_secs(10)).await;
        ewma.observe(Duration::from_millis(2));
        let w = (-1.0f64).exp();
        assert_close(ms(ewma.estimate()), 10.0 * w + 2.0 * (1.0 - w)); // ≈ 4.94 ms

        // Many time constants of steady 2 ms samples: the peak is forgotten.
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            ewma.observe(Duration::from_millis(2));
        }
        assert_close(ms(ewma.estimate()), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_samples_it_relaxes_toward_the_default() {
        let ewma = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10));
        ewma.observe(Duration::from_millis(10));

        tokio::time::advance(Duration::from_secs(10)).await;
        let w = (-1.0f64).exp();
        assert_close(ms(ewma.estimate()), 1.0 + 9.0 * w); // ≈ 4.31 ms

        tokio::time::advance(Duration::from_secs(100)).await;
        assert_close(ms(ewma.estimate()), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_does_not_change_the_estimate() {
        let ewma = PeakEwma::default();
        ewma.observe(Duration::from_millis(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let first = ewma.estimate();
        assert_eq!(ewma.estimate(), first);
        // The blend of a new sample still weighs the full 10 s since the last sample.
        ewma.observe(Duration::from_millis(2));
        let w = (-1.0f64).exp();
        assert_close(ms(ewma.estimate()), 10.0 * w + 2.0 * (1.0 - w));
    }
}
