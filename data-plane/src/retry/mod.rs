//! Retries, only when safe: a call the node never received (connection refused, stream
//! refused, connection closed before sending) may go to another node; RouteMessage, which
//! is idempotent by contract, may also be retried when a node answers UNAVAILABLE. Every
//! retry is paid from a [`RetryBudget`], so a failing federation sees a bounded share of
//! extra traffic instead of a retry storm.

pub mod budget;

use std::time::Duration;

use meridian_shared::domain::RetryPolicy;
use rand::Rng;

pub use self::budget::RetryBudget;

/// The pause before retry number `retry` (1-based): jittered, doubling from the policy's
/// base to its max (defaults 25 ms and 250 ms).
pub fn backoff(policy: &RetryPolicy, retry: u32) -> Duration {
    let base = u64::from(if policy.backoff_base_ms == 0 {
        25
    } else {
        policy.backoff_base_ms
    });
    let max = u64::from(if policy.backoff_max_ms == 0 {
        250
    } else {
        policy.backoff_max_ms
    })
    .max(base);
    let ceiling = base
        .saturating_mul(1 << retry.saturating_sub(1).min(16))
        .min(max);
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}
