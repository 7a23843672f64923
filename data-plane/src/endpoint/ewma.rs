//! A per-endpoint round-trip-time estimate: an exponentially weighted moving average over
//! time, which the adaptive balancer multiplies by the endpoint's load to get a cost.
//!
//! How it moves:
//!
//! - **Blend by time**: a sample is blended in with weight `1 - w`, where
//!   `w = exp(-elapsed / decay)` and `elapsed` is the time since the last sample. The
//!   weight depends on time, not on the number of samples, so an endpoint's estimate moves
//!   at the same pace whether it serves ten requests a second or ten thousand: one `decay`
//!   time constant (1 s) after its latency changes, about 63 % of the gap is closed, after
//!   three 95 %; and the first sample after a quiet spell counts almost fully.
//! - **No peaks**: Finagle's and Linkerd's Peak-EWMA takes any sample above the estimate
//!   at once and forgets it over 10 s. At hundreds of calls a second the estimate is then
//!   the worst latency of the last few seconds, and one scheduling hiccup (a 1 % tail is
//!   several calls a second) decides it: in the routing benchmark two 2 ms nodes and a
//!   10 ms one all read 30-50 ms, and the balancer could not tell them apart. The average
//!   is what a call can expect; a node that suddenly stalls shows first in its calls in
//!   flight and its reported utilisation, which the balancer weighs at once.
//! - **Idle relaxation**: without samples, [`LatencyEwma::estimate`] relaxes toward the
//!   default RTT with the same time constant, so a node avoided for being slow is tried
//!   again about once per time constant, and that call's answer measures it afresh. The
//!   estimate relaxes toward the prior, not toward zero (as Finagle and tower do), because
//!   the cost multiplies it by the calls in flight: an endpoint that stopped answering
//!   gets no samples while its requests pile up, and an estimate tending to zero would
//!   erase that pile-up from its cost.
//!
//! Parameters: `default_rtt` is the estimate before any sample (and the value it relaxes
//! to); `decay` is the time constant. [`LatencyEwma::default`] uses [`DEFAULT_RTT`] (1 ms)
//! and [`DEFAULT_DECAY`] (1 s). A low seed makes a new endpoint attractive until its first
//! response, which then sets the estimate, so a newcomer is measured quickly instead of
//! starved.
//!
//! Lock-free: the estimate (`f64` bits) and the time of the last sample live in two
//! atomics. Time is `tokio::time`, so paused-time tests can drive the decay.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::clock;

/// Estimate of an endpoint before its first response: optimistic, see the module doc.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);
/// Time constant of the average: how fast the estimate follows a change of latency.
pub const DEFAULT_DECAY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct LatencyEwma {
    default_rtt_ns: f64,
    decay_ns: f64,
    /// `f64` bits: the estimate in nanoseconds as of `stamp_ns`.
    estimate_ns: AtomicU64,
    /// When the estimate was last updated, nanoseconds since [`epoch`].
    stamp_ns: AtomicI64,
}

// === impl LatencyEwma ===

impl Default for LatencyEwma {
    fn default() -> Self {
        LatencyEwma::new(DEFAULT_RTT, DEFAULT_DECAY)
    }
}

impl LatencyEwma {
    /// An estimate that starts at (and relaxes to) `default_rtt` and forgets with time
    /// constant `decay`.
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        let default_rtt_ns = nanos(default_rtt);
        LatencyEwma {
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
                Some((estimate * weight + rtt_ns * (1.0 - weight)).to_bits())
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
    let (now, epoch) = (clock::now(), epoch());
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
        assert_eq!(LatencyEwma::default().estimate(), DEFAULT_RTT);
        let ewma = LatencyEwma::new(Duration::from_millis(30), Duration::from_secs(10));
        assert_eq!(ewma.estimate(), Duration::from_millis(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_sample_after_a_quiet_spell_sets_the_estimate() {
        let ewma = LatencyEwma::default();
        tokio::time::advance(Duration::from_secs(30)).await;
        ewma.observe(Duration::from_millis(12));
        assert_close(ms(ewma.estimate()), 12.0);
    }

    #[tokio::test(start_paused = true)]
    async fn samples_are_blended_in_by_time_elapsed_up_or_down() {
        let ewma = LatencyEwma::new(Duration::from_millis(1), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(60)).await;
        ewma.observe(Duration::from_millis(10));

        // No time elapsed: the old estimate has full weight, the new sample none.
        ewma.observe(Duration::from_millis(2));
        assert_close(ms(ewma.estimate()), 10.0);

        // One time constant later: weight e^-1 on the old 10 ms, 1 - e^-1 on the 2 ms.
        tokio::time::advance(Duration::from_secs(1)).await;
        ewma.observe(Duration::from_millis(2));
        let w = (-1.0f64).exp();
        let blended = 10.0 * w + 2.0 * (1.0 - w); // ≈ 4.94 ms
        assert_close(ms(ewma.estimate()), blended);

        // A slower sample is blended the same way: no peak is taken at once.
        tokio::time::advance(Duration::from_secs(1)).await;
        ewma.observe(Duration::from_millis(50));
        assert_close(ms(ewma.estimate()), blended * w + 50.0 * (1.0 - w));

        // Many time constants of steady 2 ms samples: the old values are forgotten.
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(100)).await;
            ewma.observe(Duration::from_millis(2));
        }
        assert_close(ms(ewma.estimate()), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rare_slow_sample_among_many_fast_ones_barely_moves_it() {
        // 1,000 calls a second at 2 ms with one in a hundred at 40 ms (a scheduling
        // hiccup): the estimate stays near the mean (2.38 ms), not near the outliers.
        let ewma = LatencyEwma::default();
        for i in 0..5_000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            let rtt = if i % 100 == 0 { 40 } else { 2 };
            ewma.observe(Duration::from_millis(rtt));
        }
        let estimate = ms(ewma.estimate());
        assert!((2.0..3.0).contains(&estimate), "{estimate} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn without_samples_it_relaxes_toward_the_default() {
        let ewma = LatencyEwma::new(Duration::from_millis(1), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(60)).await;
        ewma.observe(Duration::from_millis(10));

        tokio::time::advance(Duration::from_secs(1)).await;
        let w = (-1.0f64).exp();
        assert_close(ms(ewma.estimate()), 1.0 + 9.0 * w); // ≈ 4.31 ms

        tokio::time::advance(Duration::from_secs(10)).await;
        assert_close(ms(ewma.estimate()), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn reading_does_not_change_the_estimate() {
        let ewma = LatencyEwma::default();
        tokio::time::advance(Duration::from_secs(60)).await;
        ewma.observe(Duration::from_millis(10));
        tokio::time::advance(Duration::from_secs(1)).await;
        let first = ewma.estimate();
        assert_eq!(ewma.estimate(), first);
        // The blend of a new sample still weighs the full second since the last sample.
        ewma.observe(Duration::from_millis(2));
        let w = (-1.0f64).exp();
        assert_close(ms(ewma.estimate()), 10.0 * w + 2.0 * (1.0 - w));
    }
}
