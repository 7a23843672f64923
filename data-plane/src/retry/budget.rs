//! A retry budget (as in Finagle and Linkerd): every call deposits a fraction of a token
//! (the policy's percent, default 20 %), every retry withdraws a whole one, and a small
//! floor (default 10 per second) is granted regardless of traffic, so a quiet service can
//! still retry. Tokens are capped, so a long calm period cannot fund a later storm. All
//! counters are atomics: the request path takes no lock. Time is tokio's, so paused-time
//! tests control the floor.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use meridian_shared::domain::RetryPolicy;
use tokio::time::Instant;

/// Milli-tokens per token.
const MILLI: i64 = 1_000;

#[derive(Debug)]
pub struct RetryBudget {
    /// Milli-tokens deposited per call.
    deposit: i64,
    /// Tokens granted per second whatever the traffic.
    floor_per_second: i64,
    /// Most milli-tokens held.
    cap: i64,
    tokens: AtomicI64,
    /// The second (since the budget's creation) the floor was last granted for.
    floor_second: AtomicU64,
    created: Instant,
    retries: AtomicU64,
    refused: AtomicU64,
}

impl RetryBudget {
    pub fn new(policy: &RetryPolicy) -> Self {
        let percent = policy.effective_budget_percent();
        let floor = policy.effective_budget_min_per_second();
        let floor_per_second = i64::from(floor);
        RetryBudget {
            deposit: i64::from(percent) * MILLI / 100,
            floor_per_second,
            cap: (floor_per_second * 10 + 1_000) * MILLI,
            tokens: AtomicI64::new(floor_per_second * MILLI),
            floor_second: AtomicU64::new(0),
            created: Instant::now(),
            retries: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// A call was made (the first attempt).
    pub fn deposit(&self) {
        self.add(self.deposit);
    }

    /// Takes a token for one retry; false when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.grant_floor();
        let mut current = self.tokens.load(Ordering::Relaxed);
        loop {
            if current < MILLI {
                self.refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("meridian_proxy_retries_refused_total").increment(1);
                return false;
            }
            match self.tokens.compare_exchange_weak(
                current,
                current - MILLI,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("meridian_proxy_retries_total").increment(1);
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Retries granted and refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.retries.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    fn grant_floor(&self) {
        let second = self.created.elapsed().as_secs();
        let last = self.floor_second.load(Ordering::Relaxed);
        if second > last
            && self
                .floor_second
                .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let seconds = i64::try_from(second - last).unwrap_or(i64::MAX).min(10);
            self.add(self.floor_per_second * seconds * MILLI);
        }
    }

    fn add(&self, milli: i64) {
        let mut current = self.tokens.load(Ordering::Relaxed);
        loop {
            let next = (current + milli).min(self.cap);
            match self.tokens.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(percent: u32, floor: u32) -> RetryPolicy {
        RetryPolicy {
            budget_percent: percent,
            budget_min_per_second: floor,
            ..Default::default()
        }
    }

    #[test]
    fn retries_are_limited_to_the_share_of_calls_plus_the_floor() {
        let budget = RetryBudget::new(&policy(20, 5));
        let mut granted = 0;
        for _ in 0..1_000 {
            budget.deposit();
            if budget.try_withdraw() {
                granted += 1;
            }
        }
        // 20 % of 1,000 calls plus the initial floor of 5 (no second has passed).
        assert!((200..=206).contains(&granted), "{granted}");
        assert_eq!(budget.counts(), (granted, 1_000 - granted));
    }

    #[test]
    fn a_quiet_service_still_gets_the_floor() {
        let budget = RetryBudget::new(&policy(0, 3));
        let granted = (0..10).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 3);
    }
}
