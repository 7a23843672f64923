//! A service's concurrency policy: how many of its calls each proxy lets through at once
//! (a static limit, or an adaptive gradient limit computed from measured latency), and the
//! bounded queue the calls over the limit wait in (its size, longest wait, which call goes
//! when it is full, and the wait above which lower priorities are shed). Numeric fields at
//! 0 mean "the documented default" (see `ConcurrencyPolicy` in topology.proto); the
//! `effective_*` helpers resolve them. The proxy's admission control enforces it.

use std::time::Duration;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::ConversionError;

/// Starting limit of an adaptive limit.
pub const DEFAULT_INITIAL_LIMIT: u32 = 20;
/// Lowest an adaptive limit goes (Envoy's default minimum concurrency): also the limit
/// held while the no-load latency is measured.
pub const DEFAULT_MIN_LIMIT: u32 = 3;
/// Highest an adaptive limit goes.
pub const DEFAULT_MAX_LIMIT: u32 = 1_000;
/// Longest a queued call waits.
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u32 = 1_000;
/// How often an adaptive limit is recomputed.
pub const DEFAULT_SAMPLE_WINDOW_MS: u32 = 100;
/// How often an adaptive limit measures the no-load latency again.
pub const DEFAULT_MIN_RTT_INTERVAL_MS: u32 = 30_000;

/// How the limit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyLimitKind {
    /// No limit, no queue.
    #[default]
    None,
    Static,
    /// A gradient limit following measured latency.
    Adaptive,
}

impl ConcurrencyLimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyLimitKind::None => "none",
            ConcurrencyLimitKind::Static => "static",
            ConcurrencyLimitKind::Adaptive => "adaptive",
        }
    }
}

/// Which call goes when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueDropStrategy {
    /// The new call is refused.
    #[default]
    RejectNew,
    /// The oldest queued call makes room for the new one.
    DropOldest,
}

impl QueueDropStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueDropStrategy::RejectNew => "reject_new",
            QueueDropStrategy::DropOldest => "drop_oldest",
        }
    }
}

/// A concurrency limit per proxy with a bounded queue.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConcurrencyPolicy {
    pub kind: ConcurrencyLimitKind,
    /// Static: the limit. Adaptive: the starting limit (0: 20).
    pub limit: u32,
    pub min_limit: u32,
    pub max_limit: u32,
    pub max_queue: u32,
    pub max_queue_wait_ms: u32,
    pub drop_strategy: QueueDropStrategy,
    pub target_queue_wait_ms: u32,
    pub sample_window_ms: u32,
    pub min_rtt_interval_ms: u32,
}

impl ConcurrencyPolicy {
    /// Whether calls of the service are limited at all.
    pub fn is_enabled(&self) -> bool {
        self.kind != ConcurrencyLimitKind::None
    }

    pub fn effective_min_limit(&self) -> u32 {
        match self.kind {
            ConcurrencyLimitKind::Adaptive => or_default(self.min_limit, DEFAULT_MIN_LIMIT),
            _ => self.limit.max(1),
        }
    }

    pub fn effective_max_limit(&self) -> u32 {
        match self.kind {
            ConcurrencyLimitKind::Adaptive => {
                or_default(self.max_limit, DEFAULT_MAX_LIMIT).max(self.effective_min_limit())
            }
            _ => self.limit.max(1),
        }
    }

    /// The limit in force at first: the static limit, or the adaptive starting limit
    /// within its bounds.
    pub fn effective_initial_limit(&self) -> u32 {
        match self.kind {
            ConcurrencyLimitKind::Adaptive => or_default(self.limit, DEFAULT_INITIAL_LIMIT)
                .clamp(self.effective_min_limit(), self.effective_max_limit()),
            _ => self.limit.max(1),
        }
    }

    pub fn effective_max_queue_wait(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(
            self.max_queue_wait_ms,
            DEFAULT_MAX_QUEUE_WAIT_MS,
        )))
    }

    /// The queue wait above which lower priorities are shed: the one set, else a quarter
    /// of the longest wait.
    pub fn effective_target_queue_wait(&self) -> Duration {
        match self.target_queue_wait_ms {
            0 => self.effective_max_queue_wait() / 4,
            ms => Duration::from_millis(u64::from(ms)),
        }
    }

    pub fn effective_sample_window(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(
            self.sample_window_ms,
            DEFAULT_SAMPLE_WINDOW_MS,
        )))
    }

    pub fn effective_min_rtt_interval(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(
            self.min_rtt_interval_ms,
            DEFAULT_MIN_RTT_INTERVAL_MS,
        )))
    }
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

impl From<ConcurrencyPolicy> for pb::ConcurrencyPolicy {
    fn from(c: ConcurrencyPolicy) -> Self {
        pb::ConcurrencyPolicy {
            kind: match c.kind {
                ConcurrencyLimitKind::None => pb::ConcurrencyLimitKind::Unspecified,
                ConcurrencyLimitKind::Static => pb::ConcurrencyLimitKind::Static,
                ConcurrencyLimitKind::Adaptive => pb::ConcurrencyLimitKind::Adaptive,
            }
            .into(),
            limit: c.limit,
            min_limit: c.min_limit,
            max_limit: c.max_limit,
            max_queue: c.max_queue,
            max_queue_wait_ms: c.max_queue_wait_ms,
            drop_strategy: match c.drop_strategy {
                QueueDropStrategy::RejectNew => pb::QueueDropStrategy::RejectNew,
                QueueDropStrategy::DropOldest => pb::QueueDropStrategy::DropOldest,
            }
            .into(),
            target_queue_wait_ms: c.target_queue_wait_ms,
            sample_window_ms: c.sample_window_ms,
            min_rtt_interval_ms: c.min_rtt_interval_ms,
        }
    }
}

impl TryFrom<pb::ConcurrencyPolicy> for ConcurrencyPolicy {
    type Error = ConversionError;

    fn try_from(p: pb::ConcurrencyPolicy) -> Result<Self, Self::Error> {
        let kind = pb::ConcurrencyLimitKind::try_from(p.kind).map_err(|_| {
            ConversionError::UnknownEnum {
                field: "service_policy.concurrency.kind",
                value: p.kind,
            }
        })?;
        let drop_strategy = pb::QueueDropStrategy::try_from(p.drop_strategy).map_err(|_| {
            ConversionError::UnknownEnum {
                field: "service_policy.concurrency.drop_strategy",
                value: p.drop_strategy,
            }
        })?;
        Ok(ConcurrencyPolicy {
            kind: match kind {
                pb::ConcurrencyLimitKind::Unspecified => ConcurrencyLimitKind::None,
                pb::ConcurrencyLimitKind::Static => ConcurrencyLimitKind::Static,
                pb::ConcurrencyLimitKind::Adaptive => ConcurrencyLimitKind::Adaptive,
            },
            limit: p.limit,
            min_limit: p.min_limit,
            max_limit: p.max_limit,
            max_queue: p.max_queue,
            max_queue_wait_ms: p.max_queue_wait_ms,
            drop_strategy: match drop_strategy {
                pb::QueueDropStrategy::Unspecified | pb::QueueDropStrategy::RejectNew => {
                    QueueDropStrategy::RejectNew
                }
                pb::QueueDropStrategy::DropOldest => QueueDropStrategy::DropOldest,
            },
            target_queue_wait_ms: p.target_queue_wait_ms,
            sample_window_ms: p.sample_window_ms,
            min_rtt_interval_ms: p.min_rtt_interval_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adaptive_policy_starts_within_its_bounds_and_a_static_one_at_its_limit() {
        let adaptive = ConcurrencyPolicy {
            kind: ConcurrencyLimitKind::Adaptive,
            min_limit: 30,
            ..Default::default()
        };
        assert_eq!(adaptive.effective_initial_limit(), 30);
        assert_eq!(adaptive.effective_max_limit(), DEFAULT_MAX_LIMIT);
        let fixed = ConcurrencyPolicy {
            kind: ConcurrencyLimitKind::Static,
            limit: 8,
            max_queue_wait_ms: 400,
            ..Default::default()
        };
        assert_eq!(fixed.effective_initial_limit(), 8);
        assert_eq!(fixed.effective_min_limit(), 8);
        assert_eq!(
            fixed.effective_target_queue_wait(),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn an_unknown_kind_is_refused_naming_the_field() {
        let proto = pb::ConcurrencyPolicy {
            kind: 7,
            ..Default::default()
        };
        let error = ConcurrencyPolicy::try_from(proto).unwrap_err();
        assert!(error.to_string().contains("concurrency.kind"), "{error}");
    }
}
