//! What a node last said about its own load: the utilisation of its latest ORCA report
//! (`endpoint-load-metrics-bin` trailer), when it came, and how many of this proxy's calls
//! were in flight to it then. Responses are free probes, as in Prequal: every response
//! that carries a report refreshes it, so a node under traffic is re-measured many times a
//! second without a single extra call.
//!
//! The adaptive balancer reads a *projected* utilisation: the reported one plus what this
//! proxy's calls sent (or finished) since add, `u + (in-flight now − in-flight then) × δ`,
//! where `δ`, the utilisation one call adds, is learned from reports that came while
//! calls of this proxy were in flight (`u / in-flight then`: the reciprocal of the node's
//! capacity when this proxy is its only client, more when others load it too, which errs
//! on the side of caution). Between two responses a burst of picks then sees the node fill
//! up instead of all piling onto the one that looked idle last. A report older than
//! the policy's lifetime counts for nothing, so a node that was avoided for being hot gets
//! a call again once its report ages out, and that call's answer is its next probe.
//!
//! Reports that come out of band (the ORCA stream, a probe: [`ReportedLoad::record_out_of_band`])
//! say nothing about what one call of this proxy adds — the node's load need not be ours —
//! so δ is not learned from them, and this proxy's calls that ended since do not lower
//! them (only calls sent since raise them): a node kept busy by other clients does not
//! look idle the moment this proxy's own calls to it end. The next report, an interval
//! later, corrects any overestimate.
//!
//! A few atomics, written with relaxed stores by the call (or stream) that received the
//! report (the decoding happens only for responses that carry one); the request path only
//! loads them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};

use super::breaker::now_ns;

/// A node's latest self-reported load.
#[derive(Debug)]
pub struct ReportedLoad {
    /// `f64` bits of the utilisation, a fraction (may exceed 1).
    utilization: AtomicU64,
    /// When it came ([`now_ns`] clock); `i64::MIN` before the first report.
    at_ns: AtomicI64,
    /// This proxy's calls in flight to the node when it came, the reporting call excluded.
    in_flight_then: AtomicU32,
    /// `f64` bits of δ, the utilisation one call adds; 0 until learned.
    per_call: AtomicU64,
    /// The latest report came out of band: calls ended since do not lower it.
    out_of_band: AtomicBool,
}

impl Default for ReportedLoad {
    fn default() -> Self {
        ReportedLoad {
            utilization: AtomicU64::new(0f64.to_bits()),
            at_ns: AtomicI64::new(i64::MIN),
            in_flight_then: AtomicU32::new(0),
            per_call: AtomicU64::new(0f64.to_bits()),
            out_of_band: AtomicBool::new(false),
        }
    }
}

// === impl ReportedLoad ===

impl ReportedLoad {
    /// Keeps a report of `utilization` that arrived while `in_flight_then` other calls of
    /// this proxy were in flight to the node. Negative or non-finite values are ignored.
    pub fn record(&self, utilization: f64, in_flight_then: u32) {
        if !utilization.is_finite() || utilization < 0.0 {
            return;
        }
        if in_flight_then > 0 && utilization > 0.0 {
            let per_call = utilization / f64::from(in_flight_then);
            self.per_call.store(per_call.to_bits(), Ordering::Relaxed);
        }
        self.keep(utilization, in_flight_then, false);
    }

    /// Keeps a report of `utilization` that came out of band (ORCA stream or probe) while
    /// `in_flight_then` calls of this proxy were in flight to the node; see the module doc.
    pub fn record_out_of_band(&self, utilization: f64, in_flight_then: u32) {
        if !utilization.is_finite() || utilization < 0.0 {
            return;
        }
        self.keep(utilization, in_flight_then, true);
    }

    fn keep(&self, utilization: f64, in_flight_then: u32, out_of_band: bool) {
        self.utilization
            .store(utilization.to_bits(), Ordering::Relaxed);
        self.in_flight_then.store(in_flight_then, Ordering::Relaxed);
        self.out_of_band.store(out_of_band, Ordering::Relaxed);
        self.at_ns.store(now_ns(), Ordering::Relaxed);
    }

    /// The utilisation projected to `in_flight` calls of this proxy now, if the latest
    /// report is younger than `ttl_ns`; `None` otherwise (no report, or a stale one).
    pub fn projected(&self, in_flight: u32, ttl_ns: i64) -> Option<f64> {
        let at = self.at_ns.load(Ordering::Relaxed);
        if at == i64::MIN || now_ns().saturating_sub(at) > ttl_ns {
            return None;
        }
        let reported = f64::from_bits(self.utilization.load(Ordering::Relaxed));
        let then = self.in_flight_then.load(Ordering::Relaxed);
        let learned = f64::from_bits(self.per_call.load(Ordering::Relaxed));
        // Before δ is learned, a report of u with `then` calls of ours suggests at most
        // u / (then + 1) per call.
        let per_call = if learned > 0.0 {
            learned
        } else {
            reported / (f64::from(then) + 1.0)
        };
        let mut since = f64::from(in_flight) - f64::from(then);
        if self.out_of_band.load(Ordering::Relaxed) {
            since = since.max(0.0);
        }
        Some((reported + since * per_call).max(0.0))
    }

    /// The latest utilisation reported, fresh or not (for the admin view); `None` before
    /// the first report.
    pub fn latest(&self) -> Option<f64> {
        (self.at_ns.load(Ordering::Relaxed) != i64::MIN)
            .then(|| f64::from_bits(self.utilization.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TTL: i64 = 2_000_000_000;

    #[tokio::test(start_paused = true)]
    async fn a_report_scales_with_the_calls_sent_since_and_ages_out() {
        let load = ReportedLoad::default();
        assert_eq!(load.projected(0, TTL), None, "no report yet");
        load.record(0.0, 0);
        assert_eq!(load.projected(3, TTL), Some(0.0), "nothing learned yet");
        load.record(0.5, 2);
        assert_eq!(load.projected(2, TTL), Some(0.5));
        assert_eq!(
            load.projected(4, TTL),
            Some(1.0),
            "two more calls sent since"
        );
        assert_eq!(load.projected(0, TTL), Some(0.0));
        load.record(0.0, 0);
        assert_eq!(
            load.projected(4, TTL),
            Some(1.0),
            "δ is kept: 0.25 per call"
        );
        tokio::time::advance(Duration::from_millis(2_001)).await;
        assert_eq!(load.projected(1, TTL), None, "stale");
        assert_eq!(load.latest(), Some(0.0));
    }

    #[test]
    fn an_out_of_band_report_teaches_nothing_and_is_not_lowered_by_our_ended_calls() {
        let load = ReportedLoad::default();
        load.record_out_of_band(0.9, 3);
        assert_eq!(
            load.projected(0, TTL),
            Some(0.9),
            "our calls ended: still 0.9"
        );
        assert_eq!(load.projected(3, TTL), Some(0.9));
        // Calls sent since add u / (then + 1) each, δ not being learned.
        assert_eq!(load.projected(5, TTL), Some(0.9 + 2.0 * (0.9 / 4.0)));
        // A trailer afterwards projects both ways again.
        load.record(0.5, 2);
        assert_eq!(load.projected(0, TTL), Some(0.0));
    }

    #[tokio::test(start_paused = true)]
    async fn nonsense_is_ignored() {
        let load = ReportedLoad::default();
        load.record(f64::NAN, 0);
        load.record(-1.0, 0);
        assert_eq!(load.latest(), None);
    }
}
