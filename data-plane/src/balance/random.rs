//! Random: each pick is an endpoint drawn uniformly at random.
//!
//! Trade-off: no shared state at all (not even a counter that cores contend on), and many
//! proxies picking independently never synchronise on the same endpoint; but shares are only
//! even on average, and like round robin it ignores load and weights. Choose it when many
//! proxies share few endpoints and coordination effects matter more than per-pick evenness.

use std::sync::Arc;

use super::{Balancer, Pick, PickContext, first_ready};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct Random {
    endpoints: Vec<Arc<Endpoint>>,
}

// === impl Random ===

impl Random {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        Random { endpoints }
    }
}

impl Balancer for Random {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        if self.endpoints.is_empty() {
            return None;
        }
        let len = self.endpoints.len();
        let index = first_ready(len, rand::random_range(0..len), |i| {
            self.endpoints[i].is_ready()
        })?;
        Some(Pick {
            index,
            reason: "uniformly at random",
            compared_with: None,
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
    fn picks_every_endpoint_about_equally() {
        let balancer = Random::new(endpoints(4));
        let ctx = PickContext::default();
        let counts = counts(
            4,
            (0..10_000).filter_map(|_| balancer.pick(&ctx).map(|p| p.index)),
        );
        // 2,500 expected each; the standard deviation is about 43.
        for (index, &count) in counts.iter().enumerate() {
            assert!(
                (2_200..=2_800).contains(&count),
                "endpoint {index}: {count} of 10,000 picks: {counts:?}"
            );
        }
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(Random::new(Vec::new()).pick(&PickContext::default()), None);
    }
}
