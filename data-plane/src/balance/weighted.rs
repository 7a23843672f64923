//! Weighted: endpoints get shares of requests proportional to their nodes' weights, walked
//! from a schedule computed when the balancer is built.
//!
//! The schedule is one period of a smooth weighted rotation: weights are divided by their
//! greatest common divisor (1:2:7 and 100:200:700 give the same 10-slot period), and the
//! slots are handed out by Webster's method (each endpoint's k-th slot is due at
//! `(2k + 1) / 2w`, earliest first), which interleaves endpoints instead of sending `w`
//! requests in a row to each. Picking then walks the schedule with an atomic counter: no
//! lock, no arithmetic on weights per request.
//!
//! Trade-off: shares follow the configured weights exactly, but weights are static: the
//! balancer does not notice a node that is slow or overloaded. Choose it for nodes of known,
//! different capacities (a canary at 5 %, a bigger machine at 2×); prefer `adaptive` when
//! capacity is better measured than declared. Periods are capped at [`MAX_SCHEDULE_LEN`]
//! slots (weights are scaled down to fit, keeping every endpoint at least one slot), which
//! bounds memory per service at the cost of rounding extreme weight ratios.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Balancer, Pick, PickContext, first_ready};
use crate::endpoint::Endpoint;

/// Most slots in a schedule period (unless there are more endpoints than that: every
/// endpoint keeps one slot).
pub const MAX_SCHEDULE_LEN: u64 = 10_000;

#[derive(Debug)]
pub struct Weighted {
    endpoints: Vec<Arc<Endpoint>>,
    /// One period of endpoint indices.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

// === impl Weighted ===

impl Weighted {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|e| u64::from(e.node.effective_weight()))
            .collect();
        let schedule = schedule(&normalize(weights));
        // A random starting slot, so that proxies don't walk the schedule in lockstep.
        let start = if schedule.is_empty() {
            0
        } else {
            rand::random_range(0..schedule.len())
        };
        Weighted {
            endpoints,
            schedule,
            next: AtomicUsize::new(start),
        }
    }
}

impl Balancer for Weighted {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        if self.schedule.is_empty() {
            return None;
        }
        // Walk the schedule past unready endpoints (a few slots), then fall back to any
        // ready endpoint.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let index = (0..self.schedule.len().min(16))
            .map(|k| self.schedule[(start + k) % self.schedule.len()])
            .find(|&i| self.endpoints[i].is_ready())
            .or_else(|| first_ready(self.endpoints.len(), 0, |i| self.endpoints[i].is_ready()))?;
        Some(Pick {
            index,
            reason: "next in weighted rotation",
            compared_with: None,
        })
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

/// The smallest integer weights with the same ratios, scaled down to fit
/// [`MAX_SCHEDULE_LEN`] when needed (every weight stays at least 1).
fn normalize(mut weights: Vec<u64>) -> Vec<u64> {
    divide_by_gcd(&mut weights);
    let total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE_LEN {
        for w in &mut weights {
            // Rounded to nearest; u128 because w × MAX_SCHEDULE_LEN can exceed u64 for
            // u32 weights summed over many endpoints.
            let scaled = (u128::from(*w) * u128::from(MAX_SCHEDULE_LEN) + u128::from(total) / 2)
                / u128::from(total);
            *w = u64::try_from(scaled).unwrap_or(u64::MAX).max(1);
        }
        divide_by_gcd(&mut weights);
    }
    weights
}

fn divide_by_gcd(weights: &mut [u64]) {
    let divisor = weights.iter().fold(0, |acc, &w| gcd(acc, w));
    if divisor > 1 {
        weights.iter_mut().for_each(|w| *w /= divisor);
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One period: endpoint `i` appears `weights[i]` times, spread out (Webster's method).
fn schedule(weights: &[u64]) -> Vec<usize> {
    let len: u64 = weights.iter().sum();
    let mut schedule = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    let mut due: BinaryHeap<Reverse<Slot>> = weights
        .iter()
        .enumerate()
        .filter(|&(_, &weight)| weight > 0)
        .map(|(index, &weight)| {
            Reverse(Slot {
                taken: 0,
                weight,
                index,
            })
        })
        .collect();
    while let Some(Reverse(slot)) = due.pop() {
        schedule.push(slot.index);
        if slot.taken + 1 < slot.weight {
            due.push(Reverse(Slot {
                taken: slot.taken + 1,
                ..slot
            }));
        }
    }
    schedule
}

/// An endpoint's next slot, due at `(2 × taken + 1) / (2 × weight)` of the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    taken: u64,
    weight: u64,
    index: usize,
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Compares the fractions by cross-multiplying, exactly (u128: no overflow).
        let due = |s: &Slot, by: &Slot| (2 * u128::from(s.taken) + 1) * u128::from(by.weight);
        due(self, other)
            .cmp(&due(other, self))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_support::{counts, endpoint};

    fn weighted(weights: &[u32]) -> Weighted {
        Weighted::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| endpoint(&format!("node-{i}"), "eu-west", "eu-west-a", w))
                .collect(),
        )
    }

    #[test]
    fn shares_follow_weights() {
        let balancer = weighted(&[1, 2, 7]);
        let ctx = PickContext::default();
        let counts = counts(
            3,
            (0..10_000).filter_map(|_| balancer.pick(&ctx).map(|p| p.index)),
        );
        for (index, expected) in [1_000, 2_000, 7_000].into_iter().enumerate() {
            let count = counts[index] as i64;
            assert!(
                (count - expected).abs() <= 200,
                "endpoint {index}: {count} of 10,000 picks: {counts:?}"
            );
        }
    }

    #[test]
    fn the_schedule_is_the_smallest_period_and_interleaves() {
        let balancer = weighted(&[100, 200, 700]);
        assert_eq!(balancer.schedule.len(), 10);
        // Smooth, not 1, 2, 2, 7 × 3 in a row: any 5 consecutive picks (across periods
        // too) give each endpoint its share of 5 to within one pick.
        let schedule = &balancer.schedule;
        for start in 0..schedule.len() {
            let window = counts(
                3,
                (start..start + 5).map(|slot| schedule[slot % schedule.len()]),
            );
            for (index, weight) in [1.0, 2.0, 7.0].into_iter().enumerate() {
                let expected = weight / 10.0 * 5.0;
                assert!(
                    (window[index] as f64 - expected).abs() <= 1.0,
                    "window at {start} of {schedule:?}"
                );
            }
        }
    }

    #[test]
    fn extreme_ratios_are_capped_and_keep_every_endpoint() {
        let balancer = weighted(&[1, 1_000_000, 3]);
        assert!(
            balancer.schedule.len() as u64 <= MAX_SCHEDULE_LEN + 3,
            "{}",
            balancer.schedule.len()
        );
        let counts = counts(3, balancer.schedule.iter().copied());
        assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
    }

    #[test]
    fn no_endpoints_no_pick() {
        assert_eq!(
            Weighted::new(Vec::new()).pick(&PickContext::default()),
            None
        );
    }
}
