//! What the latest Prequal probe of a node said: its requests in flight from every client
//! (RIF, the ORCA named metric `in_flight`), its recent latency (`latency_ms`), when the
//! probe answered, and this proxy's calls in flight to the node then. The probes
//! themselves are sent by the adaptive balancer's prober (`balance::prober`).
//!
//! **The pool.** Prequal keeps a small pool of recent probes and picks among them. Here
//! the pool is the balancer's endpoints' latest probes that are younger than the policy's
//! `report_ttl_ms`: one slot per endpoint (so it is bounded by the endpoints, and a newer
//! probe of a node replaces its older one), aged out by time, each three atomics the
//! request path only loads. [`hot_threshold`] computes, off the request path, the
//! quantile of the pool's in-flight above which a probed node counts as hot.
//!
//! A probe's in-flight is projected like a reported utilisation: plus the calls this proxy
//! sent to the node since, minus those that ended, so a burst of picks between two probes
//! sees the node fill up.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::breaker::now_ns;

/// A node's latest probe.
#[derive(Debug)]
pub struct ProbedLoad {
    /// The node's requests in flight, from every client, when probed.
    in_flight: AtomicU32,
    /// `f64` bits of the node's recent latency, seconds.
    latency: AtomicU64,
    /// When the probe answered ([`now_ns`] clock); `i64::MIN` before the first.
    at_ns: AtomicI64,
    /// This proxy's calls in flight to the node then.
    ours_then: AtomicU32,
}

impl Default for ProbedLoad {
    fn default() -> Self {
        ProbedLoad {
            in_flight: AtomicU32::new(0),
            latency: AtomicU64::new(0f64.to_bits()),
            at_ns: AtomicI64::new(i64::MIN),
            ours_then: AtomicU32::new(0),
        }
    }
}

/// A fresh probe, projected to now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// The node's requests in flight, projected by this proxy's calls since the probe.
    pub in_flight: f64,
    /// The node's recent latency, seconds.
    pub latency: f64,
}

// === impl ProbedLoad ===

impl ProbedLoad {
    /// Keeps a probe that found `in_flight` requests at the node and a recent latency of
    /// `latency_secs`, while `ours_then` calls of this proxy were in flight to it.
    /// Non-finite or negative latencies are ignored.
    pub fn record(&self, in_flight: u32, latency_secs: f64, ours_then: u32) {
        if !latency_secs.is_finite() || latency_secs < 0.0 {
            return;
        }
        self.in_flight.store(in_flight, Ordering::Relaxed);
        self.latency
            .store(latency_secs.to_bits(), Ordering::Relaxed);
        self.ours_then.store(ours_then, Ordering::Relaxed);
        self.at_ns.store(now_ns(), Ordering::Relaxed);
    }

    /// The latest probe projected to `ours_now` calls of this proxy, if younger than
    /// `ttl_ns`.
    pub fn fresh(&self, ours_now: u32, ttl_ns: i64) -> Option<Probe> {
        let at = self.at_ns.load(Ordering::Relaxed);
        if at == i64::MIN || now_ns().saturating_sub(at) > ttl_ns {
            return None;
        }
        let then = self.ours_then.load(Ordering::Relaxed);
        let found = f64::from(self.in_flight.load(Ordering::Relaxed));
        Some(Probe {
            in_flight: (found + f64::from(ours_now) - f64::from(then)).max(0.0),
            latency: f64::from_bits(self.latency.load(Ordering::Relaxed)),
        })
    }

    /// How old the latest probe is, ns; `None` before the first.
    pub fn age_ns(&self) -> Option<i64> {
        let at = self.at_ns.load(Ordering::Relaxed);
        (at != i64::MIN).then(|| now_ns().saturating_sub(at))
    }
}

/// The in-flight above which a probed node is hot: the `quantile` of the pool's projected
/// in-flight, interpolated between ranks (so with 0.8 the busiest of three nodes is hot as
/// soon as it carries more than the second busiest). `None` with fewer than two probes:
/// one node compared with itself is never hot.
pub fn hot_threshold(pool: &mut [f64], quantile: f64) -> Option<f64> {
    if pool.len() < 2 {
        return None;
    }
    pool.sort_by(f64::total_cmp);
    let position = quantile.clamp(0.0, 1.0) * (pool.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(pool.len() - 1);
    let fraction = position - below as f64;
    Some(pool[below] + fraction * (pool[above] - pool[below]))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TTL: i64 = 2_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn a_probe_is_projected_by_our_calls_since_and_ages_out() {
        let probed = ProbedLoad::default();
        assert_eq!(probed.fresh(0, TTL), None, "never probed");
        assert_eq!(probed.age_ns(), None);
        probed.record(10, 0.005, 2);
        assert_eq!(
            probed.fresh(2, TTL),
            Some(Probe {
                in_flight: 10.0,
                latency: 0.005
            })
        );
        assert_eq!(
            probed.fresh(5, TTL).unwrap().in_flight,
            13.0,
            "3 more of ours"
        );
        assert_eq!(
            probed.fresh(0, TTL).unwrap().in_flight,
            8.0,
            "2 of ours ended"
        );
        tokio::time::advance(Duration::from_millis(2_001)).await;
        assert_eq!(probed.fresh(2, TTL), None, "aged out of the pool");
        assert!(probed.age_ns().is_some_and(|a| a > TTL));

        // A newer probe replaces the older one.
        probed.record(1, 0.002, 0);
        assert_eq!(probed.fresh(0, TTL).unwrap().in_flight, 1.0);
        probed.record(3, f64::NAN, 0);
        assert_eq!(
            probed.fresh(0, TTL).unwrap().in_flight,
            1.0,
            "nonsense ignored"
        );
    }

    #[test]
    fn the_hot_threshold_is_the_pools_quantile() {
        assert_eq!(hot_threshold(&mut [], 0.8), None);
        assert_eq!(hot_threshold(&mut [7.0], 0.8), None, "nothing to compare");
        let mut pool = [9.0, 1.0, 4.0, 2.0, 30.0];
        // Sorted 1, 2, 4, 9, 30: the 0.75 quantile is the fourth, 0.8 a little above.
        assert_eq!(hot_threshold(&mut pool, 0.75), Some(9.0));
        assert!((hot_threshold(&mut pool, 0.8).unwrap() - 13.2).abs() < 1e-9);
        assert_eq!(hot_threshold(&mut pool, 1.0), Some(30.0), "nothing hot");
        assert_eq!(hot_threshold(&mut pool, 0.5), Some(4.0));
        let mut three = [10.0, 2.0, 3.0];
        let threshold = hot_threshold(&mut three, 0.8).unwrap();
        assert!(
            threshold > 3.0 && threshold < 10.0,
            "only the busiest of three is hot: {threshold}"
        );
        let mut even = [4.0, 4.0, 4.0];
        assert_eq!(
            hot_threshold(&mut even, 0.8),
            Some(4.0),
            "none above: none hot"
        );
    }
}
