//! The tuning of the `adaptive` algorithm: how many candidates a pick samples, the
//! utilisation above which a node counts as hot, how long a node's ORCA report counts,
//! whether reports count at all, whether the proxy asks nodes for reports out of band
//! (ORCA `StreamCoreMetrics`), and Prequal's asynchronous probes (rate, idle floor, hot
//! quantile). Fields at 0 mean "the documented default" or "off" (see `AdaptivePolicy` in
//! topology.proto); the `effective_*` helpers resolve them.

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
/// With probes on, the longest time between probe rounds when the policy says 0.
pub const DEFAULT_PROBE_IDLE_INTERVAL_MS: u32 = 1_000;
/// The quantile of probed in-flight above which a node is hot, when the policy says 0.
pub const DEFAULT_PROBE_HOT_QUANTILE: f64 = 0.8;

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
    /// Out-of-band ORCA report interval asked of each node, ms; 0: no stream.
    pub oob_report_interval_ms: u32,
    /// Prequal probes sent per call; 0: none.
    pub probes_per_call: f64,
    /// 0: [`DEFAULT_PROBE_IDLE_INTERVAL_MS`].
    pub probe_idle_interval_ms: u32,
    /// 0: [`DEFAULT_PROBE_HOT_QUANTILE`].
    pub probe_hot_quantile: f64,
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

    /// The out-of-band report interval to ask nodes for; `None` when the policy asks for
    /// no stream (or ignores what nodes report).
    pub fn oob_report_interval(&self) -> Option<Duration> {
        (self.oob_report_interval_ms > 0 && !self.ignore_node_reports)
            .then(|| Duration::from_millis(u64::from(self.oob_report_interval_ms)))
    }

    /// Whether Prequal probes are on (a positive rate, and node reports heeded).
    pub fn probes(&self) -> bool {
        self.probes_per_call > 0.0 && !self.ignore_node_reports
    }

    pub fn probe_idle_interval(&self) -> Duration {
        let ms = match self.probe_idle_interval_ms {
            0 => DEFAULT_PROBE_IDLE_INTERVAL_MS,
            set => set,
        };
        Duration::from_millis(u64::from(ms))
    }

    pub fn effective_probe_hot_quantile(&self) -> f64 {
        if self.probe_hot_quantile > 0.0 {
            self.probe_hot_quantile.min(1.0)
        } else {
            DEFAULT_PROBE_HOT_QUANTILE
        }
    }
}

impl From<AdaptivePolicy> for pb::AdaptivePolicy {
    fn from(a: AdaptivePolicy) -> Self {
        pb::AdaptivePolicy {
            choices: a.choices,
            hot_utilization: a.hot_utilization,
            report_ttl_ms: a.report_ttl_ms,
            ignore_node_reports: a.ignore_node_reports,
            oob_report_interval_ms: a.oob_report_interval_ms,
            probes_per_call: a.probes_per_call,
            probe_idle_interval_ms: a.probe_idle_interval_ms,
            probe_hot_quantile: a.probe_hot_quantile,
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
            oob_report_interval_ms: a.oob_report_interval_ms,
            probes_per_call: a.probes_per_call,
            probe_idle_interval_ms: a.probe_idle_interval_ms,
            probe_hot_quantile: a.probe_hot_quantile,
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
        assert_eq!(policy.oob_report_interval(), None, "no stream by default");
        assert!(!policy.probes(), "no probes by default");
        assert_eq!(policy.probe_idle_interval(), Duration::from_secs(1));
        assert_eq!(policy.effective_probe_hot_quantile(), 0.8);
        let set = AdaptivePolicy {
            choices: 3,
            hot_utilization: 0.9,
            report_ttl_ms: 500,
            ignore_node_reports: true,
            oob_report_interval_ms: 250,
            probes_per_call: 0.5,
            probe_idle_interval_ms: 300,
            probe_hot_quantile: 0.9,
        };
        assert_eq!(set.oob_report_interval(), None, "reports ignored");
        assert!(!set.probes(), "reports ignored");
        let heeded = AdaptivePolicy {
            ignore_node_reports: false,
            ..set.clone()
        };
        assert_eq!(
            heeded.oob_report_interval(),
            Some(Duration::from_millis(250))
        );
        assert!(heeded.probes());
        assert_eq!(heeded.probe_idle_interval(), Duration::from_millis(300));
        assert_eq!(heeded.effective_probe_hot_quantile(), 0.9);
        assert_eq!(set.effective_choices(), 3);
        assert_eq!(set.effective_hot_utilization(), 0.9);
        assert_eq!(set.report_ttl(), Duration::from_millis(500));
        assert_eq!(
            AdaptivePolicy::from(pb::AdaptivePolicy::from(set.clone())),
            set
        );
    }
}
