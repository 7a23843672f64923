//! Adaptive: each call samples a few ready endpoints and takes, Prequal-style, the best
//! by what the proxy sees (its latency estimate, its calls in flight) and what the node
//! reports (ORCA utilisation), in lexicographic order: **cold before hot, then the lowest
//! expected latency**.
//!
//! The signals, all per-endpoint atomics:
//!
//! - **Latency** `L` (see `endpoint::ewma`): each endpoint's recent round-trip time, an
//!   average over time (time constant 1 s). Not Finagle's and Linkerd's Peak-EWMA, which
//!   holds the worst latency of the last seconds: under load that is a scheduling
//!   hiccup's, the same on every node, and it hid a node five times slower.
//! - **Reported load** (see `endpoint::reported_load`): the utilisation in the node's
//!   latest ORCA report, projected to this proxy's calls in flight now. Reports come in
//!   the `endpoint-load-metrics-bin` trailers of responses (every response a free probe),
//!   and, when the policy sets `oob_report_interval_ms`, over one out-of-band ORCA stream
//!   per node (`endpoint::orca_stream`), which keeps a node this proxy sends nothing to,
//!   or one that sends no trailers, measured. A report older than the policy's
//!   `report_ttl_ms` counts for nothing.
//! - **Probes** (Prequal, off unless the policy sets `probes_per_call`; see
//!   `balance::prober`): short calls to random nodes at a rate tied to the call rate, plus
//!   a floor per node, each bringing the node's ORCA report (its utilisation feeds the
//!   reported load, like a stream's), its requests in flight from *every* client and its
//!   recent latency. For a node that reports no utilisation, a fresh probe whose
//!   in-flight, projected by this proxy's calls since, is above the `probe_hot_quantile`
//!   of the fresh probes makes it hot (a utilisation the node measures knows its
//!   capacity, an in-flight count does not, so the utilisation decides when there is
//!   one); a probe's latency raises the latency estimate of a node this proxy has not
//!   measured lately; and a node probed but not reporting is costed by its in-flight from
//!   every client, not only this proxy's.
//!
//! The choice among the `choices` sampled candidates (3 by default; 2 is the classic
//! power of two choices, where a pick more often has only a poor pair to choose from):
//!
//! 1. **Hot-cold.** A candidate is hot when its projected utilisation is above
//!    `hot_utilization` (1.5 by default: calls queue there), or, with probes and no
//!    reported utilisation, its probed in-flight is above the pool's hot quantile. While any candidate is cold,
//!    hot ones are out, whatever their latency: a saturated node is not worth its fast
//!    past. When all are hot, the least utilised wins (by how far each is over its
//!    threshold).
//! 2. **Expected latency** among the cold: `L × (1 + u)` for a node with a fresh report
//!    `u` (latency grows with the node's own saturation, which includes other proxies'
//!    calls), `L × (in-flight + 1)` for one without (Finagle's and Linkerd's cost, which
//!    assumes calls queue one behind another). Multiplying by `in-flight + 1`
//!    overcharges a node that serves calls in parallel: a node that answers in 2 ms with
//!    four calls in flight on four workers looks as costly as an idle 10 ms one, so the
//!    in-flight cost keeps sending it a share. The node's own utilisation tells whether
//!    its calls queue; that is what takes the slow node's share to nothing. A node's
//!    queue adds about `L` per capacity's worth of calls ahead, so a full node (`u = 1`)
//!    costs twice an idle one of the same latency: a busy node loses to equally fast calm
//!    ones (at 95 % it costs 1.8× one at 10 %), while a full but fast node still beats an
//!    idle one five times slower, as it should (its next call waits a fraction of its
//!    service time for a worker). An earlier `(1 + u)²` charged that fast node four times
//!    its latency and sent the 10 ms node one call in ten in the benchmark.
//!
//! Why sampling rather than the best of all: comparing a few random candidates is O(1),
//! and it keeps proxies from stampeding the single best endpoint between updates of its
//! signals; the worst endpoint is only picked when sampled with nothing better, which
//! distinct sampling rules out. With as many choices as endpoints, every pick compares
//! them all.
//!
//! Lock-free and allocation-free: a pick loads a few atomics per candidate and keeps the
//! candidates in a fixed array; with probes on it also adds one to the prober's call
//! counter.
//!
//! Trade-off: reacts to slowness and saturation that static algorithms cannot see, but its
//! shares are less predictable, and it needs traffic to measure (an idle endpoint's
//! estimate relaxes to the default RTT). Choose it for endpoints whose speed varies:
//! mixed hardware, noisy neighbours, garbage-collection pauses, cross-zone hops.

use std::sync::Arc;

use meridian_shared::domain::AdaptivePolicy;
use meridian_shared::domain::adaptive::MAX_CHOICES;

use super::prober::Prober;
use super::{Balancer, Pick, PickContext, first_ready};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct Adaptive {
    endpoints: Vec<Arc<Endpoint>>,
    choices: usize,
    hot_utilization: f64,
    /// Report (and probe) lifetime, ns; `None` when reports are ignored.
    report_ttl_ns: Option<i64>,
    /// The probes, when the policy sends them.
    prober: Option<Prober>,
}

/// How a candidate ranks: cold before hot, then by `key` (expected latency when cold,
/// utilisation when hot), lower first.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Rank {
    hot: bool,
    key: f64,
}

// === impl Adaptive ===

impl Adaptive {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, policy: &AdaptivePolicy) -> Self {
        let ttl = policy.report_ttl();
        Adaptive {
            prober: Prober::start(&endpoints, policy),
            endpoints,
            choices: policy.effective_choices().clamp(2, MAX_CHOICES as usize),
            hot_utilization: policy.effective_hot_utilization(),
            report_ttl_ns: (!policy.ignore_node_reports)
                .then(|| i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    fn rank(&self, endpoint: &Endpoint) -> Rank {
        let mut latency = endpoint.ewma.estimate().as_secs_f64();
        let in_flight = endpoint.in_flight();
        let Some(ttl) = self.report_ttl_ns else {
            return Rank {
                hot: false,
                key: latency * (f64::from(in_flight) + 1.0),
            };
        };
        let reported = endpoint.reported.projected(in_flight, ttl);
        let mut over = reported.map_or(0.0, |u| u / self.hot_utilization);
        let mut queue = f64::from(in_flight);
        if let Some(prober) = &self.prober
            && let Some(probe) = endpoint.probed.fresh(in_flight, ttl)
        {
            latency = latency.max(probe.latency);
            queue = probe.in_flight;
            // A utilisation the node measures knows its capacity; in-flight counts do
            // not, so they decide hot and cold only for nodes that report none.
            let measures_utilization = reported.is_some_and(|u| u > 0.0);
            if let Some(threshold) = prober.hot_threshold()
                && !measures_utilization
            {
                over = over.max(probe.in_flight / threshold.max(1.0));
            }
        }
        if over > 1.0 {
            return Rank {
                hot: true,
                key: over,
            };
        }
        let key = match reported {
            Some(u) => latency * (1.0 + u),
            None => latency * (queue + 1.0),
        };
        Rank { hot: false, key }
    }

    /// Up to `choices` distinct endpoint indices, drawn at random (all of them, from a
    /// random start, when there are no more than `choices`); how many were drawn.
    fn sample(&self, drawn: &mut [usize; MAX_CHOICES as usize]) -> usize {
        let len = self.endpoints.len();
        if len <= self.choices {
            let start = rand::random_range(0..len);
            for (k, slot) in drawn.iter_mut().take(len).enumerate() {
                *slot = (start + k) % len;
            }
            return len;
        }
        let mut count = 0;
        while count < self.choices {
            let i = rand::random_range(0..len);
            if !drawn[..count].contains(&i) {
                drawn[count] = i;
                count += 1;
            }
        }
        count
    }

    /// Whether a sampled endpoint takes part: ready, and a warming one (slow start) with
    /// probability `warmth`, so its share ramps up.
    fn admitted(&self, i: usize) -> bool {
        let endpoint = &self.endpoints[i];
        endpoint.is_ready() && {
            let w = endpoint.warmth();
            w >= 1.0 || rand::random::<f64>() < w
        }
    }
}

impl Balancer for Adaptive {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        let len = self.endpoints.len();
        if len == 0 {
            return None;
        }
        if let Some(prober) = &self.prober {
            prober.count_call();
        }
        let mut drawn = [0; MAX_CHOICES as usize];
        let count = self.sample(&mut drawn);
        let mut best: Option<(usize, Rank)> = None;
        let mut runner_up = None;
        let mut admitted = 0;
        for &i in &drawn[..count] {
            if !self.admitted(i) {
                continue;
            }
            admitted += 1;
            let rank = self.rank(&self.endpoints[i]);
            if best.is_none_or(|(_, best_rank)| rank < best_rank) {
                runner_up = best.map(|(b, _)| b);
                best = Some((i, rank));
            } else if runner_up.is_none() {
                runner_up = Some(i);
            }
        }
        let Some((index, rank)) = best else {
            let start = rand::random_range(0..len);
            let index = first_ready(len, start, |i| self.endpoints[i].is_ready())?;
            return Some(Pick {
                index,
                reason: "first ready endpoint (no sampled one ready)",
                compared_with: None,
            });
        };
        let reason = match (admitted, rank.hot) {
            (1, _) => "only endpoint taking calls of those sampled",
            (_, false) => "coolest, then lowest expected latency of those sampled",
            (_, true) => "least utilised of those sampled, all hot",
        };
        Some(Pick {
            index,
            reason,
            compared_with: runner_up,
        })
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::test_support::{counts, endpoints};
    use crate::endpoint::InFlight;

    fn adaptive(endpoints: Vec<Arc<Endpoint>>) -> Adaptive {
        Adaptive::new(endpoints, &AdaptivePolicy::default())
    }

    /// 1,000 picks, each holding its request in flight until all are done (1,000
    /// concurrent requests); how many went to each endpoint.
    fn concurrent_picks(balancer: &Adaptive) -> Vec<usize> {
        let ctx = PickContext::default();
        let mut held: Vec<InFlight<'_>> = Vec::new();
        let mut picks = Vec::new();
        for _ in 0..1_000 {
            if let Some(pick) = balancer.pick(&ctx) {
                held.push(balancer.endpoints()[pick.index].start_request());
                picks.push(pick.index);
            }
        }
        counts(balancer.endpoints().len(), picks)
    }

    fn sequential_picks(balancer: &Adaptive, n: usize) -> Vec<usize> {
        let ctx = PickContext::default();
        counts(
            balancer.endpoints().len(),
            (0..n).filter_map(|_| balancer.pick(&ctx).map(|p| p.index)),
        )
    }

    /// Each endpoint observes the latency in `ms`, 30 times over three seconds (three time
    /// constants of the estimate: 95 % of the way there).
    async fn measure(balancer: &Adaptive, ms: &[u64]) {
        for _ in 0..30 {
            tokio::time::advance(Duration::from_millis(100)).await;
            for (endpoint, &ms) in balancer.endpoints().iter().zip(ms) {
                endpoint.ewma.observe(Duration::from_millis(ms));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_gets_few_picks_until_its_latency_decays() {
        let balancer = adaptive(endpoints(3));
        let slow = &balancer.endpoints()[2];
        measure(&balancer, &[1, 1, 10]).await;
        assert!(
            slow.ewma.estimate() > Duration::from_millis(9),
            "{:?}",
            slow.ewma.estimate()
        );

        // Sequential requests: 10 ms idle never beats 1 ms idle.
        let sequential = sequential_picks(&balancer, 1_000);
        assert_eq!(sequential[2], 0, "{sequential:?}");

        // Concurrent requests without reports from the nodes: the fast endpoints queue
        // until they cost as much as the slow one, which then gets about 1 in 21
        // (in-flight ratio 10:10:1).
        let concurrent = concurrent_picks(&balancer);
        assert!(
            concurrent[2] < 100,
            "slow endpoint got {} of 1,000: {concurrent:?}",
            concurrent[2]
        );
        assert!(
            concurrent[2] > 0,
            "load should spill to the slow endpoint: {concurrent:?}"
        );

        // Without samples for six time constants, the slow peak relaxes to the default RTT
        // and the endpoint gets its share again.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            slow.ewma.estimate() < Duration::from_micros(1_100),
            "{:?}",
            slow.ewma.estimate()
        );
        let recovered = concurrent_picks(&balancer);
        assert!(
            recovered[2] > 250,
            "recovered endpoint got {} of 1,000: {recovered:?}",
            recovered[2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_reporting_high_utilisation_loses_to_equally_fast_cool_ones() {
        let balancer = adaptive(endpoints(3));
        measure(&balancer, &[5, 5, 5]).await;
        let eps = balancer.endpoints();
        eps[0].reported.record(0.95, 0);
        eps[1].reported.record(0.1, 0);
        eps[2].reported.record(0.1, 0);
        let picks = sequential_picks(&balancer, 1_000);
        assert_eq!(picks[0], 0, "P2C always samples a cooler node: {picks:?}");

        // Once its report is older than the lifetime (2 s), it is costed like a node
        // that reports nothing, and gets calls again (which bring a fresh report).
        tokio::time::advance(Duration::from_millis(2_100)).await;
        eps[1].reported.record(0.1, 0);
        eps[2].reported.record(0.1, 0);
        let picks = sequential_picks(&balancer, 1_000);
        assert!(picks[0] > 100, "{picks:?}");

        // Unless the policy ignores reports: then all three are alike.
        let ignoring = Adaptive::new(
            eps.to_vec(),
            &AdaptivePolicy {
                ignore_node_reports: true,
                ..Default::default()
            },
        );
        eps[0].reported.record(0.95, 0);
        let picks = sequential_picks(&ignoring, 3_000);
        assert!(picks.iter().all(|&n| n > 700), "{picks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn parallel_fast_nodes_keep_the_slow_ones_share_at_nothing() {
        // Two nodes answer in 2 ms with four workers each and say so (each call in flight
        // adds 0.25 to their utilisation); one answers in 10 ms. Eight calls in flight at
        // once fit on the fast nodes' workers, so the slow node should get none, where the
        // latency × in-flight cost sends it a share.
        let balancer = adaptive(endpoints(3));
        measure(&balancer, &[2, 2, 10]).await;
        let ctx = PickContext::default();
        let mut slow_picks = 0;
        for _ in 0..200 {
            let mut held = Vec::new();
            for _ in 0..8 {
                let pick = balancer.pick(&ctx).unwrap();
                let endpoint = &balancer.endpoints()[pick.index];
                held.push(endpoint.start_request());
                let others = endpoint.in_flight() - 1;
                endpoint.reported.record(f64::from(others) * 0.25, others);
                slow_picks += usize::from(pick.index == 2);
            }
        }
        assert_eq!(
            slow_picks, 0,
            "slow node picked {slow_picks} of 1,600 times"
        );

        // The algorithm before node reports: power of two choices over latency × in-flight.
        let blind = Adaptive::new(
            balancer.endpoints().to_vec(),
            &AdaptivePolicy {
                choices: 2,
                ignore_node_reports: true,
                ..Default::default()
            },
        );
        let mut blind_slow = 0;
        for _ in 0..200 {
            let held: Vec<_> = (0..8)
                .map(|_| {
                    let pick = blind.pick(&ctx).unwrap();
                    blind_slow += usize::from(pick.index == 2);
                    blind.endpoints()[pick.index].start_request()
                })
                .collect();
            drop(held);
        }
        assert!(blind_slow > 16, "latency × in-flight alone: {blind_slow}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_node_loses_even_when_faster_and_the_least_hot_wins_among_hot_ones() {
        let balancer = adaptive(endpoints(2));
        measure(&balancer, &[1, 10]).await;
        let eps = balancer.endpoints();
        eps[0].reported.record(2.0, 0);
        eps[1].reported.record(0.5, 0);
        let picks = sequential_picks(&balancer, 200);
        assert_eq!(picks, [0, 200], "a hot node loses to a 10× slower cold one");
        let pick = balancer.pick(&PickContext::default()).unwrap();
        assert_eq!(
            pick.reason,
            "coolest, then lowest expected latency of those sampled"
        );

        eps[1].reported.record(3.0, 0);
        let picks = sequential_picks(&balancer, 200);
        assert_eq!(picks, [200, 0], "all hot: the least utilised");
        let pick = balancer.pick(&PickContext::default()).unwrap();
        assert_eq!(pick.reason, "least utilised of those sampled, all hot");
    }

    /// An adaptive balancer whose probes say the node's hot threshold is `threshold`.
    fn probing(endpoints: Vec<Arc<Endpoint>>, threshold: f64) -> Adaptive {
        let mut balancer = adaptive(endpoints);
        balancer.prober = Some(Prober::fixed(threshold));
        balancer
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_busy_with_other_proxies_calls_is_hot_by_its_probe() {
        // Three equally fast nodes, none reporting a utilisation; this proxy sends them
        // nothing, so by what it sees they are alike. Probes say node 0 carries 30 calls
        // from other proxies, the others 2 and 3: above the pool's quantile, node 0 is hot.
        let balancer = probing(endpoints(3), 10.0);
        measure(&balancer, &[5, 5, 5]).await;
        let eps = balancer.endpoints();
        eps[0].probed.record(30, 0.005, 0);
        eps[1].probed.record(2, 0.005, 0);
        eps[2].probed.record(3, 0.005, 0);
        let picks = sequential_picks(&balancer, 1_000);
        assert_eq!(picks[0], 0, "the hot node is never picked: {picks:?}");
        assert!(
            picks[1] > picks[2],
            "fewer in flight wins among cold: {picks:?}"
        );
        assert_eq!(
            balancer.prober.as_ref().map(Prober::counted),
            Some(1_000),
            "every pick counted for the prober"
        );

        // Without probes the three are alike.
        let blind = adaptive(eps.to_vec());
        let picks = sequential_picks(&blind, 3_000);
        assert!(picks.iter().all(|&n| n > 700), "{picks:?}");

        // Probes age out with the report lifetime: then node 0 is no longer avoided.
        tokio::time::advance(Duration::from_millis(2_100)).await;
        let picks = sequential_picks(&balancer, 3_000);
        assert!(picks[0] > 700, "{picks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reported_utilisation_decides_over_probed_in_flight() {
        // Node 0 reports 95 % with little in flight (its capacity is small); nodes 1 and
        // 2 report 10 % with more in flight (they are large). The utilisation, which knows
        // capacity, decides: node 0 loses, though its in-flight is the lowest.
        let balancer = probing(endpoints(3), 3.0);
        measure(&balancer, &[5, 5, 5]).await;
        let eps = balancer.endpoints();
        for (endpoint, (u, rif)) in eps.iter().zip([(0.95, 1), (0.1, 4), (0.1, 4)]) {
            endpoint.reported.record_out_of_band(u, 0);
            endpoint.probed.record(rif, 0.005, 0);
        }
        let picks = sequential_picks(&balancer, 1_000);
        assert_eq!(picks[0], 0, "{picks:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn among_cold_nodes_a_probed_latency_beats_a_stale_estimate() {
        // Node 1 looks fast to this proxy only because it has not called it for a while
        // (its estimate relaxed to the default); its probe says it answers in 20 ms.
        let balancer = probing(endpoints(2), 100.0);
        measure(&balancer, &[4, 4]).await;
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..10 {
            balancer.endpoints()[0]
                .ewma
                .observe(Duration::from_millis(4));
        }
        let eps = balancer.endpoints();
        eps[0].probed.record(1, 0.004, 0);
        eps[1].probed.record(1, 0.020, 0);
        let picks = sequential_picks(&balancer, 200);
        assert_eq!(picks, [200, 0], "the probed latency counts: {picks:?}");
        let blind = adaptive(eps.to_vec());
        let picks = sequential_picks(&blind, 200);
        assert_eq!(picks, [0, 200], "without probes the stale estimate wins");
    }

    #[tokio::test(start_paused = true)]
    async fn all_hot_the_least_over_its_threshold_wins() {
        let balancer = probing(endpoints(2), 4.0);
        let eps = balancer.endpoints();
        eps[0].probed.record(40, 0.001, 0);
        eps[1].probed.record(8, 0.001, 0);
        let picks = sequential_picks(&balancer, 100);
        assert_eq!(picks, [0, 100]);
        let pick = balancer.pick(&PickContext::default()).unwrap();
        assert_eq!(pick.reason, "least utilised of those sampled, all hot");
    }

    #[tokio::test(start_paused = true)]
    async fn more_choices_compare_more_candidates() {
        let balancer = Adaptive::new(
            endpoints(8),
            &AdaptivePolicy {
                choices: 8,
                ..Default::default()
            },
        );
        let mut latencies = [10; 8];
        latencies[5] = 1;
        measure(&balancer, &latencies).await;
        assert_eq!(sequential_picks(&balancer, 100)[5], 100, "all 8 compared");
        let two = Adaptive::new(
            balancer.endpoints().to_vec(),
            &AdaptivePolicy {
                choices: 2,
                ..Default::default()
            },
        );
        let share = sequential_picks(&two, 2_000)[5];
        // With 2 of 8 sampled, node 5 is in the pair a quarter of the time.
        assert!((400..600).contains(&share), "{share}");
    }

    #[tokio::test(start_paused = true)]
    async fn compares_two_distinct_endpoints() {
        let balancer = adaptive(endpoints(2));
        let pick = balancer.pick(&PickContext::default());
        assert!(
            pick.is_some_and(|p| p.compared_with == Some(1 - p.index)),
            "{pick:?}"
        );
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(adaptive(Vec::new()).pick(&PickContext::default()), None);
    }
}
