//! A service's routing policy: algorithm, locality failover, retries, deadlines, passive
//! failure handling, active health checks, hashing, scaling bounds, concurrency limits,
//! adaptive-routing tuning (in [`super::adaptive`]), rate limits (in [`super::rate_limit`]),
//! request limits and endpoint limits; and the failovers in force. Numeric fields at 0 mean
//! "the documented default" (see topology.proto), so an
//! operator only writes what they change; the `effective_*` helpers resolve defaults.

use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{
    AdaptivePolicy, Algorithm, ConcurrencyPolicy, ConversionError, EndpointLimits, RateLimitPolicy,
    RequestLimits, ScalingPolicy, time,
};

/// Declares field-for-field conversions both ways between a domain struct and its proto
/// message, for messages made only of scalars, strings and lists.
macro_rules! mirror_message {
    ($domain:ident <=> $proto:path { $($field:ident),* $(,)? }) => {
        impl From<$domain> for $proto {
            fn from(d: $domain) -> Self {
                Self { $($field: d.$field),* }
            }
        }
        impl From<$proto> for $domain {
            fn from(p: $proto) -> Self {
                Self { $($field: p.$field),* }
            }
        }
    };
}

/// An ordered locality tier or backup group.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverTier {
    pub name: String,
    pub regions: Vec<String>,
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}
mirror_message!(FailoverTier <=> pb::FailoverTier { name, regions, zones, nodes });

/// When traffic leaves the preferred tier and when it comes back.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FailoverPolicy {
    /// Empty: tiers follow the geographic order.
    pub tiers: Vec<FailoverTier>,
    pub overprovisioning_percent: u32,
    pub panic_threshold_percent: u32,
    pub auto_recovery: bool,
    pub slow_start_ms: u32,
}

impl FailoverPolicy {
    /// Envoy's overprovisioning factor (1.4) unless set.
    pub fn effective_overprovisioning_percent(&self) -> u32 {
        or_default(self.overprovisioning_percent, 140)
    }

    pub fn effective_panic_threshold_percent(&self) -> u32 {
        or_default(self.panic_threshold_percent, 50)
    }

    pub fn effective_slow_start(&self) -> Duration {
        millis_or_default(self.slow_start_ms, 10_000)
    }
}

impl From<FailoverPolicy> for pb::FailoverPolicy {
    fn from(p: FailoverPolicy) -> Self {
        pb::FailoverPolicy {
            tiers: p.tiers.into_iter().map(Into::into).collect(),
            overprovisioning_percent: p.overprovisioning_percent,
            panic_threshold_percent: p.panic_threshold_percent,
            auto_recovery: p.auto_recovery,
            slow_start_ms: p.slow_start_ms,
        }
    }
}

impl From<pb::FailoverPolicy> for FailoverPolicy {
    fn from(p: pb::FailoverPolicy) -> Self {
        FailoverPolicy {
            tiers: p.tiers.into_iter().map(Into::into).collect(),
            overprovisioning_percent: p.overprovisioning_percent,
            panic_threshold_percent: p.panic_threshold_percent,
            auto_recovery: p.auto_recovery,
            slow_start_ms: p.slow_start_ms,
        }
    }
}

/// When and how a proxy retries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    /// `/pkg.Service/Method` or `pkg.Service/*`.
    pub idempotent_methods: Vec<String>,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
    pub backoff_base_ms: u32,
    pub backoff_max_ms: u32,
}
mirror_message!(RetryPolicy <=> pb::RetryPolicy {
    max_attempts, idempotent_methods, budget_percent, budget_min_per_second,
    backoff_base_ms, backoff_max_ms,
});

impl RetryPolicy {
    /// Attempts per call, the first included: 3 unless set.
    pub fn effective_max_attempts(&self) -> u32 {
        or_default(self.max_attempts, 3)
    }

    /// Share of calls (percent) the retry budget adds as retries: 20 unless set.
    pub fn effective_budget_percent(&self) -> u32 {
        or_default(self.budget_percent, 20)
    }

    /// Retries per second granted whatever the traffic: 10 unless set.
    pub fn effective_budget_min_per_second(&self) -> u32 {
        or_default(self.budget_min_per_second, 10)
    }

    /// Ceiling of the first pause between attempts: 25 ms unless set.
    pub fn effective_backoff_base(&self) -> Duration {
        millis_or_default(self.backoff_base_ms, 25)
    }

    /// Largest ceiling of a pause between attempts: 250 ms unless set.
    pub fn effective_backoff_max(&self) -> Duration {
        millis_or_default(self.backoff_max_ms, 250)
    }
}

/// Request deadlines.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutPolicy {
    pub default_timeout_ms: u32,
    pub max_timeout_ms: u32,
}
mirror_message!(TimeoutPolicy <=> pb::TimeoutPolicy { default_timeout_ms, max_timeout_ms });

impl TimeoutPolicy {
    /// The deadline of a call whose caller sent none, given the proxy's default
    /// (`None`: no deadline).
    pub fn effective_default_timeout(&self, proxy_default: Option<Duration>) -> Option<Duration> {
        millis_if_set(self.default_timeout_ms).or(proxy_default)
    }

    /// The longest deadline a caller may ask for; `None` (any) unless set.
    pub fn effective_max_timeout(&self) -> Option<Duration> {
        millis_if_set(self.max_timeout_ms)
    }
}

/// Breaker and outlier-ejection settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutlierPolicy {
    pub consecutive_failures: u32,
    pub failure_rate_percent: u32,
    pub min_requests: u32,
    pub window_ms: u32,
    pub base_ejection_ms: u32,
    pub max_ejection_ms: u32,
    pub max_ejection_percent: u32,
}
mirror_message!(OutlierPolicy <=> pb::OutlierPolicy {
    consecutive_failures, failure_rate_percent, min_requests, window_ms,
    base_ejection_ms, max_ejection_ms, max_ejection_percent,
});

impl OutlierPolicy {
    /// Consecutive failures that open an endpoint's breaker: 5 unless set.
    pub fn effective_consecutive_failures(&self) -> u32 {
        or_default(self.consecutive_failures, 5)
    }

    /// Failure share (percent) over the window that opens the breaker: 50 unless set.
    pub fn effective_failure_rate_percent(&self) -> u32 {
        or_default(self.failure_rate_percent, 50)
    }

    /// Calls in the window before the failure rate counts: 20 unless set.
    pub fn effective_min_requests(&self) -> u32 {
        or_default(self.min_requests, 20)
    }

    /// The failure-rate window: 10 s unless set.
    pub fn effective_window(&self) -> Duration {
        millis_or_default(self.window_ms, 10_000)
    }

    /// The first ejection penalty: 1 s unless set.
    pub fn effective_base_ejection(&self) -> Duration {
        millis_or_default(self.base_ejection_ms, 1_000)
    }

    /// The longest ejection penalty: 30 s unless set.
    pub fn effective_max_ejection(&self) -> Duration {
        millis_or_default(self.max_ejection_ms, 30_000)
    }

    /// Most of a service's endpoints (percent) ejected at once: 50 unless set.
    pub fn effective_max_ejection_percent(&self) -> u32 {
        or_default(self.max_ejection_percent, 50)
    }
}

/// Active health checking by the control-plane leader.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheckPolicy {
    pub grpc_service: String,
    pub tcp_only: bool,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}
mirror_message!(HealthCheckPolicy <=> pb::HealthCheckPolicy {
    grpc_service, tcp_only, interval_ms, timeout_ms, unhealthy_threshold, healthy_threshold,
});

impl HealthCheckPolicy {
    pub fn effective_interval(&self) -> Duration {
        millis_or_default(self.interval_ms, 2_000)
    }

    pub fn effective_timeout(&self) -> Duration {
        millis_or_default(self.timeout_ms, 1_000)
    }

    pub fn effective_unhealthy_threshold(&self) -> u32 {
        or_default(self.unhealthy_threshold, 3)
    }

    pub fn effective_healthy_threshold(&self) -> u32 {
        or_default(self.healthy_threshold, 2)
    }
}

/// Where consistent hashing takes its key from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HashPolicy {
    pub header: String,
}
mirror_message!(HashPolicy <=> pb::HashPolicy { header });

/// The routing policy of one gRPC service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServicePolicy {
    /// Fully qualified gRPC service name, e.g. `demo.v1.Echo`.
    pub name: String,
    pub federation: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub failover: FailoverPolicy,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub timeout: TimeoutPolicy,
    #[serde(default)]
    pub outlier: OutlierPolicy,
    #[serde(default)]
    pub health_check: HealthCheckPolicy,
    #[serde(default)]
    pub hash: HashPolicy,
    #[serde(default)]
    pub scaling: ScalingPolicy,
    #[serde(default)]
    pub concurrency: ConcurrencyPolicy,
    pub limits: RequestLimits,
    pub rate_limit: RateLimitPolicy,
    /// The adaptive algorithm's tuning (ignored by the others).
    #[serde(default)]
    pub adaptive: AdaptivePolicy,
    #[serde(default)]
    pub endpoint_limits: EndpointLimits,
    /// Services that take its calls, in order, when it has no usable node or a call
    /// still fails retryably after its attempts; at most [`MAX_FALLBACK_SERVICES`].
    #[serde(default)]
    pub fallback_services: Vec<String>,
    /// Forwarded calls go to any region's nodes instead of staying in the proxy's region
    /// while it has usable capacity.
    #[serde(default)]
    pub global_routing: bool,
}

/// Most fallback services one policy names.
pub const MAX_FALLBACK_SERVICES: usize = 4;

impl From<ServicePolicy> for pb::ServicePolicy {
    fn from(p: ServicePolicy) -> Self {
        pb::ServicePolicy {
            name: p.name,
            federation: p.federation,
            algorithm: pb::Algorithm::from(p.algorithm).into(),
            failover: Some(p.failover.into()),
            retry: Some(p.retry.into()),
            timeout: Some(p.timeout.into()),
            outlier: Some(p.outlier.into()),
            health_check: Some(p.health_check.into()),
            hash: Some(p.hash.into()),
            scaling: Some(p.scaling.into()),
            concurrency: Some(p.concurrency.into()),
            limits: Some(p.limits.into()),
            rate_limit: Some(p.rate_limit.into()),
            adaptive: Some(p.adaptive.into()),
            endpoint_limits: Some(p.endpoint_limits.into()),
            fallback_services: p.fallback_services,
            global_routing: p.global_routing,
        }
    }
}

impl TryFrom<pb::ServicePolicy> for ServicePolicy {
    type Error = ConversionError;

    /// Absent sub-policies mean "all defaults".
    fn try_from(p: pb::ServicePolicy) -> Result<Self, Self::Error> {
        Ok(ServicePolicy {
            algorithm: Algorithm::from_proto(p.algorithm, "service_policy.algorithm")?,
            name: p.name,
            federation: p.federation,
            failover: p.failover.map(Into::into).unwrap_or_default(),
            retry: p.retry.map(Into::into).unwrap_or_default(),
            timeout: p.timeout.map(Into::into).unwrap_or_default(),
            outlier: p.outlier.map(Into::into).unwrap_or_default(),
            health_check: p.health_check.map(Into::into).unwrap_or_default(),
            hash: p.hash.map(Into::into).unwrap_or_default(),
            scaling: p.scaling.map(Into::into).unwrap_or_default(),
            concurrency: p
                .concurrency
                .map(TryInto::try_into)
                .transpose()?
                .unwrap_or_default(),
            limits: p.limits.map(Into::into).unwrap_or_default(),
            rate_limit: p.rate_limit.map(Into::into).unwrap_or_default(),
            adaptive: p.adaptive.map(Into::into).unwrap_or_default(),
            endpoint_limits: p.endpoint_limits.map(Into::into).unwrap_or_default(),
            fallback_services: p.fallback_services,
            global_routing: p.global_routing,
        })
    }
}

/// A failover in force: a service's traffic sent to a tier, backup group or region.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ActiveFailover {
    pub service: String,
    pub target: String,
    pub reason: String,
    pub started_by: String,
    pub started_at: Option<SystemTime>,
}

impl From<ActiveFailover> for pb::ActiveFailover {
    fn from(f: ActiveFailover) -> Self {
        pb::ActiveFailover {
            service: f.service,
            target: f.target,
            reason: f.reason,
            started_by: f.started_by,
            started_at: time::to_proto(f.started_at),
        }
    }
}

impl TryFrom<pb::ActiveFailover> for ActiveFailover {
    type Error = ConversionError;

    fn try_from(f: pb::ActiveFailover) -> Result<Self, Self::Error> {
        Ok(ActiveFailover {
            started_at: time::from_proto(f.started_at, "active_failover.started_at")?,
            service: f.service,
            target: f.target,
            reason: f.reason,
            started_by: f.started_by,
        })
    }
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

fn millis_or_default(value: u32, default_ms: u32) -> Duration {
    Duration::from_millis(u64::from(or_default(value, default_ms)))
}

fn millis_if_set(value: u32) -> Option<Duration> {
    (value > 0).then(|| Duration::from_millis(u64::from(value)))
}
