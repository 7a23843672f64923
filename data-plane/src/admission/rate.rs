//! Rate limits per client tier: a token bucket per (service, tier), holding this proxy's
//! share of the tier's federation-wide rate.
//!
//! **The bucket** is a GCRA (generic cell rate algorithm), the token bucket written as
//! one number: the *theoretical arrival time* `tat` at which the bucket would be full
//! again. Admitting a call moves `tat` one emission interval `1/rate` further (from now,
//! if it lies in the past); a call is refused when that would put `tat` more than
//! `burst` intervals ahead of now, and the excess is exactly how long the caller must
//! wait for a token (the `grpc-retry-pushback-ms` it is told). One `AtomicU64` and a
//! compare-and-swap per call: no lock, no allocation, and a change of rate (a new share)
//! takes effect at the next call without resetting anything.
//!
//! **The tier** of a call is the value of the policy's tier header, compared byte for
//! byte with the tier names (no allocation); no header, or a name the policy does not
//! list, means the policy's default tier.
//!
//! **The share.** A tier's `calls_per_second` and `burst` hold for the whole federation.
//! The control plane answers each load report with this proxy's share of every tier
//! (apportioned by the proxies' demand, which this module counts: calls admitted and
//! refused per tier). Until a tier has a share, the proxy enforces an equal share over
//! the federation's proxies if the control plane has said how many there are, else
//! `1 /` [`UNKNOWN_PROXY_COUNT`] of the rate. That default errs towards refusing: a
//! limit exists to protect what is behind it, and a proxy that has never reached a
//! control plane cannot know how many peers admit the same tier; the first answer
//! (sent as soon as the report stream opens) replaces it. A share, once given, is kept
//! while the control plane is away. The burst is shared like the rate (at least one
//! call).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use meridian_shared::domain::{RateLimitPolicy, RateLimitTier};
use metrics::Counter;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::error::RequestError;

/// How many proxies a proxy assumes share a tier before the control plane has said.
pub const UNKNOWN_PROXY_COUNT: u32 = 4;
/// The longest pushback a refused caller is told (a tiny share of a slow tier could
/// otherwise ask for minutes).
pub const MAX_PUSHBACK: Duration = Duration::from_secs(60);
/// The lowest per-proxy rate a bucket runs at, calls per second.
const MIN_RATE: f64 = 0.001;

/// How many proxies share the federation's limits, as the control plane last said;
/// one per table lineage, carried from one table version to the next.
#[derive(Debug, Default)]
pub struct FederationProxies(AtomicU32);

impl FederationProxies {
    pub fn set(&self, count: u32) {
        if count > 0 {
            self.0.store(count, Ordering::Relaxed);
        }
    }

    /// `None` until the control plane has said.
    pub fn get(&self) -> Option<u32> {
        Some(self.0.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }
}

/// The rate limits of one service; without tiers, every call is admitted.
#[derive(Debug)]
pub struct RateLimiter {
    service: String,
    policy: RateLimitPolicy,
    header: Option<HeaderName>,
    default_tier: usize,
    tiers: Box<[TierLimit]>,
    proxies: Arc<FederationProxies>,
}

/// One tier's bucket, share and counts.
#[derive(Debug)]
pub struct TierLimit {
    pub name: String,
    /// Federation-wide.
    calls_per_second: f64,
    burst: f64,
    /// The control plane's share, as `f64` bits; [`NO_SHARE`] until it gives one.
    share: AtomicU64,
    bucket: Gcra,
    admitted: AtomicU64,
    refused: AtomicU64,
    refused_total: Counter,
}

const NO_SHARE: u64 = u64::MAX;

/// Where a tier's share comes from, for `/debug/table`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShareSource {
    ControlPlane,
    EqualOf(u32),
    Unknown,
}

// === impl RateLimiter ===

impl RateLimiter {
    /// The limiter of `service` under `policy`. The previous table's limiter is reused
    /// when the policy did not change (buckets, shares and counts go on); a changed
    /// policy starts fresh buckets but keeps the shares of tiers it still lists.
    pub fn build(
        service: &str,
        policy: &RateLimitPolicy,
        previous: Option<&Arc<RateLimiter>>,
        proxies: &Arc<FederationProxies>,
    ) -> Arc<RateLimiter> {
        if let Some(previous) = previous.filter(|p| p.policy == *policy) {
            return Arc::clone(previous);
        }
        let tiers: Box<[TierLimit]> = policy
            .tiers
            .iter()
            .map(|tier| {
                let limit = TierLimit::new(service, tier);
                let kept = previous.and_then(|p| p.tier(&tier.name));
                if let Some(share) = kept.and_then(TierLimit::control_plane_share) {
                    limit.set_share(share);
                }
                limit
            })
            .collect();
        let header = policy
            .is_enabled()
            .then(|| HeaderName::from_bytes(policy.effective_tier_header().as_bytes()).ok())
            .flatten();
        Arc::new(RateLimiter {
            service: service.to_owned(),
            header,
            default_tier: policy.default_tier_index().unwrap_or(0),
            tiers,
            policy: policy.clone(),
            proxies: Arc::clone(proxies),
        })
    }

    /// Admits the call whose request headers are `headers`, or refuses it with how long
    /// to wait. Lock- and allocation-free when admitted.
    pub fn admit(&self, headers: &HeaderMap) -> Result<(), RequestError> {
        if self.tiers.is_empty() {
            return Ok(());
        }
        let tier = &self.tiers[self.tier_of(headers)];
        let (rate, burst) = tier.local_limits(self.proxies.get());
        match tier.bucket.take(Instant::now(), rate, burst) {
            Ok(()) => {
                tier.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(wait) => {
                tier.refused.fetch_add(1, Ordering::Relaxed);
                tier.refused_total.increment(1);
                Err(RequestError::RateLimited {
                    service: self.service.clone(),
                    tier: tier.name.clone(),
                    federation_rate: tier.calls_per_second,
                    local_rate: rate,
                    retry_after: wait.min(MAX_PUSHBACK),
                })
            }
        }
    }

    /// The index of the call's tier: the header's, else the default.
    fn tier_of(&self, headers: &HeaderMap) -> usize {
        let Some(value) = self.header.as_ref().and_then(|h| headers.get(h)) else {
            return self.default_tier;
        };
        let value = value.as_bytes();
        self.tiers
            .iter()
            .position(|t| t.name.as_bytes() == value)
            .unwrap_or(self.default_tier)
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn tiers(&self) -> &[TierLimit] {
        &self.tiers
    }

    pub fn tier(&self, name: &str) -> Option<&TierLimit> {
        self.tiers.iter().find(|t| t.name == name)
    }

    /// The limits, shares and what they make at this proxy, for `/debug/table`; `null`
    /// without tiers.
    pub fn debug_json(&self) -> Value {
        if self.tiers.is_empty() {
            return Value::Null;
        }
        let proxies = self.proxies.get();
        let tiers: Vec<Value> = self
            .tiers
            .iter()
            .map(|t| {
                let (share, source) = t.share(proxies);
                let (rate, burst) = t.local_limits(proxies);
                json!({
                    "name": t.name,
                    "calls_per_second": t.calls_per_second,
                    "burst": t.burst,
                    "share": share,
                    "share_source": match source {
                        ShareSource::ControlPlane => "control_plane".to_owned(),
                        ShareSource::EqualOf(n) => format!("equal_share_of_{n}_proxies"),
                        ShareSource::Unknown => format!("default_1_of_{UNKNOWN_PROXY_COUNT}"),
                    },
                    "local_calls_per_second": rate,
                    "local_burst": burst,
                })
            })
            .collect();
        json!({
            "tier_header": self.policy.effective_tier_header(),
            "default_tier": self.tiers[self.default_tier].name,
            "federation_proxies": proxies,
            "tiers": tiers,
        })
    }
}

// === impl TierLimit ===

impl TierLimit {
    fn new(service: &str, tier: &RateLimitTier) -> Self {
        TierLimit {
            name: tier.name.clone(),
            calls_per_second: tier.calls_per_second,
            burst: tier.effective_burst(),
            share: AtomicU64::new(NO_SHARE),
            bucket: Gcra::new(Instant::now()),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refused_total: metrics::counter!(
                "meridian_proxy_refused_total",
                "reason" => "rate_limit",
                "service" => service.to_owned(),
                "tier" => tier.name.clone()
            ),
        }
    }

    /// Sets the control plane's share (clamped to 0..=1).
    pub fn set_share(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            return;
        };
        self.share.store(share.to_bits(), Ordering::Relaxed);
    }

    fn control_plane_share(&self) -> Option<f64> {
        let bits = self.share.load(Ordering::Relaxed);
        (bits != NO_SHARE).then(|| f64::from_bits(bits))
    }

    /// This proxy's share and where it comes from.
    pub fn share(&self, proxies: Option<u32>) -> (f64, ShareSource) {
        match (self.control_plane_share(), proxies) {
            (Some(share), _) => (share, ShareSource::ControlPlane),
            (None, Some(n)) => (1.0 / f64::from(n), ShareSource::EqualOf(n)),
            (None, None) => (1.0 / f64::from(UNKNOWN_PROXY_COUNT), ShareSource::Unknown),
        }
    }

    /// The rate (calls/s) and burst (calls) this proxy enforces.
    fn local_limits(&self, proxies: Option<u32>) -> (f64, f64) {
        let (share, _) = self.share(proxies);
        let rate = (self.calls_per_second * share).max(MIN_RATE);
        let burst = (self.burst * share).max(1.0);
        (rate, burst)
    }

    /// The calls admitted and refused since the last take, reset.
    pub fn take_counts(&self) -> (u64, u64) {
        (
            self.admitted.swap(0, Ordering::Relaxed),
            self.refused.swap(0, Ordering::Relaxed),
        )
    }
}

/// The bucket: the theoretical arrival time, in nanoseconds since `epoch`.
#[derive(Debug)]
struct Gcra {
    epoch: Instant,
    tat: AtomicU64,
}

impl Gcra {
    fn new(epoch: Instant) -> Self {
        Gcra {
            epoch,
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now` from a bucket of `burst` tokens refilled at `rate` per
    /// second, or says how long until one is there.
    fn take(&self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let interval = (1e9 / rate) as u64;
        let depth = (burst * 1e9 / rate) as u64;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(interval);
            let ahead = next - now;
            if ahead > depth {
                return Err(Duration::from_nanos(ahead - depth));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn tier(name: &str, calls_per_second: f64, burst: u32) -> RateLimitTier {
        RateLimitTier {
            name: name.into(),
            calls_per_second,
            burst,
        }
    }

    fn policy() -> RateLimitPolicy {
        RateLimitPolicy {
            tiers: vec![tier("free", 10.0, 5), tier("pro", 100.0, 0)],
            tier_header: String::new(),
            default_tier: "free".into(),
        }
    }

    /// A limiter alone in its federation (the control plane said one proxy).
    fn alone(policy: &RateLimitPolicy) -> Arc<RateLimiter> {
        let proxies = Arc::new(FederationProxies::default());
        proxies.set(1);
        RateLimiter::build("demo.v1.Echo", policy, None, &proxies)
    }

    fn with_tier(tier: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-meridian-tier", HeaderValue::from_static(tier));
        headers
    }

    /// Calls admitted out of `calls` made at once.
    fn admitted(limiter: &RateLimiter, headers: &HeaderMap, calls: usize) -> usize {
        (0..calls)
            .filter(|_| limiter.admit(headers).is_ok())
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_admits_its_burst_then_its_rate() {
        let limiter = alone(&policy());
        let free = with_tier("free");
        assert_eq!(admitted(&limiter, &free, 20), 5, "the burst of 5");
        let refusal = limiter.admit(&free).expect_err("over the rate");
        let RequestError::RateLimited { retry_after, .. } = refusal else {
            panic!("{refusal:?}");
        };
        assert_eq!(
            retry_after,
            Duration::from_millis(100),
            "one token every 100 ms"
        );

        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(admitted(&limiter, &free, 3), 1);
        // Over 10 s at a steady 50 calls/s, 10 calls/s get through.
        let mut through = 0;
        for _ in 0..500 {
            tokio::time::advance(Duration::from_millis(20)).await;
            through += admitted(&limiter, &free, 1);
        }
        assert_eq!(through, 100);
        let counts = limiter.tier("free").unwrap().take_counts();
        assert_eq!(counts, (5 + 1 + 100, 15 + 1 + 2 + 400));
        assert_eq!(limiter.tier("free").unwrap().take_counts(), (0, 0));

        // A quiet spell refills the bucket, but never beyond the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&limiter, &free, 20), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn each_proxy_enforces_its_share() {
        let limiter = alone(&policy());
        let pro = with_tier("pro");
        let tier = limiter.tier("pro").unwrap();
        tier.set_share(0.3);
        // 30 % of 100 calls/s with a burst of 30 % of 100.
        assert_eq!(admitted(&limiter, &pro, 100), 30);
        let mut through = 0;
        for _ in 0..1_000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            through += admitted(&limiter, &pro, 1);
        }
        assert!(
            (299..=301).contains(&through),
            "30 calls/s over 10 s: {through}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_share_a_proxy_takes_an_equal_or_a_cautious_part() {
        let proxies = Arc::new(FederationProxies::default());
        let limiter = RateLimiter::build("demo.v1.Echo", &policy(), None, &proxies);
        let pro = limiter.tier("pro").unwrap();
        assert_eq!(pro.share(proxies.get()), (0.25, ShareSource::Unknown));
        assert_eq!(admitted(&limiter, &with_tier("pro"), 100), 25);
        proxies.set(2);
        assert_eq!(pro.share(proxies.get()), (0.5, ShareSource::EqualOf(2)));
        proxies.set(0);
        assert_eq!(proxies.get(), Some(2), "a count of 0 says nothing");
        pro.set_share(0.7);
        assert_eq!(pro.share(proxies.get()), (0.7, ShareSource::ControlPlane));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tier_comes_from_the_header_else_the_default() {
        let limiter = alone(&policy());
        assert_eq!(
            limiter.tiers[limiter.tier_of(&with_tier("pro"))].name,
            "pro"
        );
        assert_eq!(
            limiter.tiers[limiter.tier_of(&with_tier("free"))].name,
            "free"
        );
        assert_eq!(
            limiter.tiers[limiter.tier_of(&with_tier("gold"))].name,
            "free"
        );
        assert_eq!(
            limiter.tiers[limiter.tier_of(&with_tier("Pro"))].name,
            "free"
        );
        assert_eq!(
            limiter.tiers[limiter.tier_of(&HeaderMap::new())].name,
            "free"
        );

        let custom = RateLimitPolicy {
            tier_header: "x-plan".into(),
            default_tier: "pro".into(),
            ..policy()
        };
        let limiter = alone(&custom);
        assert_eq!(
            limiter.tiers[limiter.tier_of(&with_tier("free"))].name,
            "pro"
        );
        let mut plan = HeaderMap::new();
        plan.insert("x-plan", HeaderValue::from_static("free"));
        assert_eq!(limiter.tiers[limiter.tier_of(&plan)].name, "free");
    }

    #[tokio::test(start_paused = true)]
    async fn one_tier_over_its_rate_leaves_the_others_alone() {
        let limiter = alone(&policy());
        assert_eq!(admitted(&limiter, &with_tier("free"), 50), 5);
        assert_eq!(admitted(&limiter, &with_tier("pro"), 50), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn without_tiers_every_call_is_admitted() {
        let limiter = alone(&RateLimitPolicy::default());
        assert_eq!(admitted(&limiter, &with_tier("free"), 1_000), 1_000);
        assert_eq!(limiter.debug_json(), Value::Null);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_policy_keeps_its_limiter_and_a_changed_one_its_shares() {
        let proxies = Arc::new(FederationProxies::default());
        let first = RateLimiter::build("demo.v1.Echo", &policy(), None, &proxies);
        first.tier("pro").unwrap().set_share(0.6);
        let same = RateLimiter::build("demo.v1.Echo", &policy(), Some(&first), &proxies);
        assert!(Arc::ptr_eq(&first, &same));
        let mut changed = policy();
        changed.tiers[1].calls_per_second = 200.0;
        let next = RateLimiter::build("demo.v1.Echo", &changed, Some(&first), &proxies);
        assert!(!Arc::ptr_eq(&first, &next));
        assert_eq!(next.tier("pro").unwrap().control_plane_share(), Some(0.6));
        assert_eq!(next.tier("free").unwrap().control_plane_share(), None);
    }
}
