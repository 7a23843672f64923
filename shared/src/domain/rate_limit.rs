//! A service's rate limits per client tier: the tiers with their federation-wide calls
//! per second and burst, the header that names a call's tier, and the tier of calls that
//! name none. The control plane apportions each tier's rate over the proxies; each proxy
//! enforces its share (see `RateLimitPolicy` in topology.proto). Fields at their zero
//! value mean "the documented default"; the `effective_*` helpers resolve them.

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// The header naming a call's tier when the policy names none.
pub const DEFAULT_TIER_HEADER: &str = "x-meridian-tier";
/// Most tiers one policy may list.
pub const MAX_RATE_LIMIT_TIERS: usize = 16;
/// Highest calls per second of one tier.
pub const MAX_CALLS_PER_SECOND: f64 = 1_000_000.0;
/// Largest burst of one tier.
pub const MAX_BURST: u32 = 10_000_000;

/// Rate limits per client tier; no tiers means no limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitPolicy {
    pub tiers: Vec<RateLimitTier>,
    /// Empty: [`DEFAULT_TIER_HEADER`].
    pub tier_header: String,
    /// Empty: the first tier.
    pub default_tier: String,
}

/// One client tier's federation-wide limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitTier {
    pub name: String,
    pub calls_per_second: f64,
    /// 0: one second of the rate.
    pub burst: u32,
}

impl RateLimitPolicy {
    /// Whether calls are limited at all.
    pub fn is_enabled(&self) -> bool {
        !self.tiers.is_empty()
    }

    /// The header naming a call's tier.
    pub fn effective_tier_header(&self) -> &str {
        if self.tier_header.is_empty() {
            DEFAULT_TIER_HEADER
        } else {
            &self.tier_header
        }
    }

    /// The index of the tier of calls that name none (or an unknown one): the named
    /// default tier, else the first. `None` without tiers.
    pub fn default_tier_index(&self) -> Option<usize> {
        if self.tiers.is_empty() {
            return None;
        }
        Some(
            self.tiers
                .iter()
                .position(|t| t.name == self.default_tier)
                .unwrap_or(0),
        )
    }
}

impl RateLimitTier {
    /// Calls admitted at once across the federation: the burst set, else one second of
    /// the rate, at least 1.
    pub fn effective_burst(&self) -> f64 {
        match self.burst {
            0 => self.calls_per_second.ceil().max(1.0),
            set => f64::from(set),
        }
    }
}

impl From<RateLimitTier> for pb::RateLimitTier {
    fn from(t: RateLimitTier) -> Self {
        pb::RateLimitTier {
            name: t.name,
            calls_per_second: t.calls_per_second,
            burst: t.burst,
        }
    }
}

impl From<pb::RateLimitTier> for RateLimitTier {
    fn from(t: pb::RateLimitTier) -> Self {
        RateLimitTier {
            name: t.name,
            calls_per_second: t.calls_per_second,
            burst: t.burst,
        }
    }
}

impl From<RateLimitPolicy> for pb::RateLimitPolicy {
    fn from(p: RateLimitPolicy) -> Self {
        pb::RateLimitPolicy {
            tiers: p.tiers.into_iter().map(Into::into).collect(),
            tier_header: p.tier_header,
            default_tier: p.default_tier,
        }
    }
}

impl From<pb::RateLimitPolicy> for RateLimitPolicy {
    fn from(p: pb::RateLimitPolicy) -> Self {
        RateLimitPolicy {
            tiers: p.tiers.into_iter().map(Into::into).collect(),
            tier_header: p.tier_header,
            default_tier: p.default_tier,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tier(name: &str, calls_per_second: f64, burst: u32) -> RateLimitTier {
        RateLimitTier {
            name: name.into(),
            calls_per_second,
            burst,
        }
    }

    #[test]
    fn defaults_resolve_to_the_documented_values() {
        let mut policy = RateLimitPolicy::default();
        assert!(!policy.is_enabled());
        assert_eq!(policy.default_tier_index(), None);
        assert_eq!(policy.effective_tier_header(), "x-meridian-tier");
        policy.tiers = vec![tier("free", 2.5, 0), tier("pro", 100.0, 7)];
        assert_eq!(policy.default_tier_index(), Some(0));
        policy.default_tier = "pro".into();
        assert_eq!(policy.default_tier_index(), Some(1));
        assert_eq!(policy.tiers[0].effective_burst(), 3.0);
        assert_eq!(policy.tiers[1].effective_burst(), 7.0);
        assert_eq!(tier("slow", 0.2, 0).effective_burst(), 1.0);
    }
}
