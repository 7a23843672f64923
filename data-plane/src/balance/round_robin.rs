//! Round robin: each pick takes the next endpoint in turn, from a shared atomic counter.
//!
//! Trade-off: the most even spread of request *counts* for the least work per pick, but it
//! is blind to load and to weights, so a slow or small endpoint gets the same share as the
//! rest. Choose it for homogeneous nodes and uniform requests; prefer `least_connections`
//! or `adaptive` when request costs or node speeds vary, `weighted` when capacities differ.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Pick, PickContext, first_ready};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct RoundRobin {
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

// === impl RoundRobin ===

impl RoundRobin {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        // A random starting point, so that proxies (and table versions, which rebuild the
        // balancer) don't all start on the same endpoint at once.
        let start = if endpoints.is_empty() {
            0
        } else {
            rand::random_range(0..endpoints.len())
        };
        RoundRobin {
            endpoints,
            next: AtomicUsize::new(start),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        if self.endpoints.is_empty() {
            return None;
        }
        // Wrapping at `usize::MAX` skews one turn of the rotation once in 2^64 picks.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let len = self.endpoints.len();
        let index = first_ready(len, turn % len, |i| self.endpoints[i].is_ready())?;
        Some(Pick {
            index,
            reason: "next in rotation",
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
    use crate::balance::test_support::endpoints;

    #[test]
    fn rotates_through_every_endpoint_in_order() {
        let balancer = RoundRobin::new(endpoints(4));
        let ctx = PickContext::default();
        let first = balancer.pick(&ctx).map(|p| p.index);
        let picks: Vec<usize> = (0..12)
            .filter_map(|_| balancer.pick(&ctx).map(|p| p.index))
            .collect();
        let start = first.map_or(0, |i| (i + 1) % 4);
        let expected: Vec<usize> = (0..12).map(|k| (start + k) % 4).collect();
        assert_eq!(picks, expected);
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(
            RoundRobin::new(Vec::new()).pick(&PickContext::default()),
            None
        );
    }
}
