//! Least connections by power of two choices: sample two distinct endpoints at random and
//! send to the one with fewer requests in flight.
//!
//! Trade-off: it follows actual load (a slow endpoint accumulates in-flight requests and so
//! receives fewer new ones) at O(1) per pick, without the herd effect of "globally least
//! loaded", where every proxy reading the same counters piles onto the same endpoint. It
//! counts requests, not their cost, and does not see latency until requests queue. Choose
//! it when request costs vary; prefer `adaptive` when endpoints differ in speed too.

use std::sync::Arc;

use super::{Balancer, Pick, PickContext, power_of_two_choices};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct LeastConnections {
    endpoints: Vec<Arc<Endpoint>>,
}

// === impl LeastConnections ===

impl LeastConnections {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        LeastConnections { endpoints }
    }
}

impl Balancer for LeastConnections {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        let (index, compared_with) = power_of_two_choices(
            self.endpoints.len(),
            |i| self.endpoints[i].is_ready(),
            |i| self.endpoints[i].warmth(),
            |i| self.endpoints[i].in_flight(),
        )?;
        Some(Pick {
            index,
            reason: if compared_with.is_some() {
                "fewer in-flight requests of 2 sampled"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{counts, endpoints};

    #[test]
    fn a_busy_endpoint_gets_no_picks_while_two_are_idle() {
        let balancer = LeastConnections::new(endpoints(3));
        let busy = &balancer.endpoints()[1];
        let _load: Vec<_> = (0..20).map(|_| busy.start_request()).collect();

        let ctx = PickContext::default();
        let picks: Vec<Pick> = (0..1_000).filter_map(|_| balancer.pick(&ctx)).collect();
        // Two distinct samples always include an idle endpoint, which wins.
        let counts = counts(3, picks.iter().map(|p| p.index));
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!(counts[0] > 300 && counts[2] > 300, "{counts:?}");
        for pick in &picks {
            assert!(
                pick.compared_with.is_some_and(|other| other != pick.index),
                "{pick:?}"
            );
            assert_eq!(pick.reason, "fewer in-flight requests of 2 sampled");
        }
    }

    #[test]
    fn one_endpoint_is_picked_without_comparison() {
        let balancer = LeastConnections::new(endpoints(1));
        let pick = balancer.pick(&PickContext::default());
        assert_eq!(
            pick,
            Some(Pick {
                index: 0,
                reason: "only endpoint",
                compared_with: None
            })
        );
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(
            LeastConnections::new(Vec::new()).pick(&PickContext::default()),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_warming_endpoint_gets_a_growing_share() {
        let mut warming = Endpoint::new(meridian_shared::domain::Node {
            id: "warming".into(),
            address: "warming:1".into(),
            ..Default::default()
        });
        warming.set_slow_start(std::time::Duration::from_secs(10));
        warming.start_warming();
        let eps = vec![Arc::new(warming), endpoints(1).remove(0)];
        let balancer = LeastConnections::new(eps);
        let share = |b: &LeastConnections| {
            let picks = (0..20_000).map(|_| b.pick(&PickContext::default()).unwrap().index);
            counts(2, picks)[0] as f64 / 20_000.0
        };
        // Idle pair: normally half each; at warmth 0.1, a tenth of that.
        let start = share(&balancer);
        assert!(
            (0.03..0.07).contains(&start),
            "a just-returned endpoint got {start}"
        );
        tokio::time::advance(std::time::Duration::from_secs(10)).await;
        let warm = share(&balancer);
        assert!((0.45..0.55).contains(&warm), "a warm endpoint got {warm}");
    }
}
