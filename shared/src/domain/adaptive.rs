//! The tuning of the `adaptive` algorithm: how many candidates a pick samples, the
//! utilisation above which a node counts as hot, how long a node's ORCA report counts,
//! and whether reports count at all. Fields at 0 mean "the documented default" (see
//! `AdaptivePolicy` in topology.proto); the `effective_*` helpers resolve them.

use std::time::Duration;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Candidates sampled per pick when the policy says 0.
pub const DEFAULT_CHOICES: u32 = 3;
/// Most candidates a pick may sample.
pub const MAX_CHOICES: u32 = 8;
/// Projected utilisation above which a node is hot, when the policy says 0.
pub const DEFAULT_HOT_UTILIZATION: f64 = 1.5;
/// How long a node's ORCA report counts when the policy says 0.
pub const DEFAULT_REPORT_TTL_MS: u32 = 2_000;

/// The tuning of the adaptive balancer of one service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdaptivePolicy {
    /// Candidates sampled per pick, 2 to 8; 0: [`DEFAULT_CHOICES`].
    pub choices: u32,
    /// 0: [`DEFAULT_HOT_UTILIZATION`].
    pub hot_utilization: f64,
    /// 0: [`DEFAULT_REPORT_TTL_MS`].
    pub report_ttl_ms: u32,
    /// Cost nodes by latency and in-flight only, whatever they report.
    pub ignore_node_reports: bool,
}

impl AdaptivePolicy {
    pub fn effective_choices(&self) -> usize {
        match self.choices {
            0 => DEFAULT_CHOICES as usize,
            set => set.min(MAX_CHOICES) as usize,
        }
    }

    pub fn effective_hot_utilization(&self) -> f64 {
        if self.hot_utilization > 0.0 {
            self.hot_utilization
        } else {
            DEFAULT_HOT_UTILIZATION
        }
    }

    pub fn report_ttl(&self) -> Duration {
        let ms = match self.report_ttl_ms {
            0 => DEFAULT_REPORT_TTL_MS,
            set => set,
        };
        Duration::from_millis(u64::from(ms))
    }
}

impl From<AdaptivePolicy> for pb::AdaptivePolicy {
    fn from(a: AdaptivePolicy) -> Self {
        pb::AdaptivePolicy {
            choices: a.choices,
            hot_utilization: a.hot_utilization,
            report_ttl_ms: a.report_ttl_ms,
            ignore_node_reports: a.ignore_node_reports,
        }
    }
}

impl From<pb::AdaptivePolicy> for AdaptivePolicy {
    fn from(a: pb::AdaptivePolicy) -> Self {
        AdaptivePolicy {
            choices: a.choices,
            hot_utilization: a.hot_utilization,
            report_ttl_ms: a.report_ttl_ms,
            ignore_node_reports: a.ignore_node_reports,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_mean_the_defaults() {
        let policy = AdaptivePolicy::default();
        assert_eq!(policy.effective_choices(), 3);
        assert_eq!(policy.effective_hot_utilization(), 1.5);
        assert_eq!(policy.report_ttl(), Duration::from_secs(2));
        let set = AdaptivePolicy {
            choices: 3,
            hot_utilization: 0.9,
            report_ttl_ms: 500,
            ignore_node_reports: true,
        };
        assert_eq!(set.effective_choices(), 3);
        assert_eq!(set.effective_hot_utilization(), 0.9);
        assert_eq!(set.report_ttl(), Duration::from_millis(500));
        assert_eq!(
            AdaptivePolicy::from(pb::AdaptivePolicy::from(set.clone())),
            set
        );
    }
}
