//! Adaptive: power of two choices over a latency-aware cost, Peak-EWMA RTT × (in-flight
//! requests + 1), as Finagle's and Linkerd's default balancers do.
//!
//! Peak-EWMA (see `endpoint::ewma`) is each endpoint's recent round-trip time: it jumps up
//! to a slow response at once and decays back toward faster ones with a time constant
//! (10 s by default), so one slow response is enough to steer traffic away while recovery
//! is gradual. Multiplying by in-flight + 1 estimates how long a new request would wait
//! there: a fast endpoint with a queue can cost more than a slower idle one, so load still
//! spreads instead of everything going to the fastest node.
//!
//! Why power of two choices rather than the cheapest of all: comparing two random samples
//! is O(1), and it keeps proxies from stampeding the single cheapest endpoint between
//! updates of its estimate; it still avoids the expensive ones (the costliest endpoint is
//! only picked when compared with nothing cheaper, which distinct sampling rules out).
//!
//! Trade-off: reacts to slowness and queueing that static algorithms cannot see, but its
//! shares are less predictable, and it needs traffic to measure (an idle endpoint's estimate
//! relaxes to the default RTT). Choose it for endpoints whose speed varies: mixed hardware,
//! noisy neighbours, garbage-collection pauses, cross-zone hops.

use std::sync::Arc;

use super::{Balancer, Pick, PickContext, power_of_two_choices};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct Adaptive {
    endpoints: Vec<Arc<Endpoint>>,
}

// === impl Adaptive ===

impl Adaptive {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        Adaptive { endpoints }
    }
}

impl Balancer for Adaptive {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        let (index, compared_with) = power_of_two_choices(
            self.endpoints.len(),
            |i| self.endpoints[i].is_ready(),
            |i| self.endpoints[i].warmth(),
            |i| cost(&self.endpoints[i]),
        )?;
        Some(Pick {
            index,
            reason: if compared_with.is_some() {
                "lower latency × in-flight of 2 sampled"
            } else {
                "only endpoint"
            },
            compared_with,
        })
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

/// Expected wait for a new request: estimated RTT (seconds) × (in-flight + 1).
fn cost(endpoint: &Endpoint) -> f64 {
    endpoint.ewma.estimate().as_secs_f64() * (f64::from(endpoint.in_flight()) + 1.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::balance::test_support::{counts, endpoints};
    use crate::endpoint::InFlight;

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

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_gets_few_picks_until_its_latency_decays() {
        let balancer = Adaptive::new(endpoints(3));
        let slow = &balancer.endpoints()[2];
        for _ in 0..10 {
            for (i, endpoint) in balancer.endpoints().iter().enumerate() {
                let rtt = if i == 2 { 10 } else { 1 };
                endpoint.ewma.observe(Duration::from_millis(rtt));
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert!(
            slow.ewma.estimate() > Duration::from_millis(9),
            "{:?}",
            slow.ewma.estimate()
        );

        // Sequential requests: 10 ms idle never beats 1 ms idle.
        let ctx = PickContext::default();
        let sequential = counts(
            3,
            (0..1_000).filter_map(|_| balancer.pick(&ctx).map(|p| p.index)),
        );
        assert_eq!(sequential[2], 0, "{sequential:?}");

        // Concurrent requests: the fast endpoints queue until they cost as much as the slow
        // one, which then gets about 1 in 21 (in-flight ratio 10:10:1).
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
    async fn compares_two_distinct_endpoints() {
        let balancer = Adaptive::new(endpoints(2));
        let pick = balancer.pick(&PickContext::default());
        assert!(
            pick.is_some_and(|p| p.compared_with == Some(1 - p.index)),
            "{pick:?}"
        );
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(
            Adaptive::new(Vec::new()).pick(&PickContext::default()),
            None
        );
    }
}
