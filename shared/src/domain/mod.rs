//! Meridian's domain types: the topology (federations, regions, nodes, service policies
//! with their rate limits and adaptive-routing tuning),
//! failovers and events, as the control plane stores them (serde JSON in etcd) and as both
//! binaries reason about them.
//!
//! Each type converts to its `meridian.v1` message with `From` and back with `TryFrom`;
//! the way back fails with a [`ConversionError`] naming the field when the message holds
//! something the domain cannot (an unknown enum value, a missing required message).
//! Converting domain → proto → domain is lossless; the tests check every type.

pub mod adaptive;
mod concurrency;
mod conversion;
mod endpoint_limits;
mod enums;
mod event;
pub mod limits;
mod locality;
mod node;
mod policy;
pub mod rate_limit;
mod request_limits;
mod scaling;
mod time;
mod topology;

pub use adaptive::AdaptivePolicy;
pub use concurrency::{ConcurrencyLimitKind, ConcurrencyPolicy, QueueDropStrategy};
pub use conversion::ConversionError;
pub use endpoint_limits::EndpointLimits;
pub use enums::{Algorithm, NodeStatus, RegistrationKind};
pub use event::{Event, EventKind};
pub use limits::TopologyLimits;
pub use locality::{Federation, GeoPoint, Region};
pub use node::Node;
pub use policy::{
    ActiveFailover, FailoverPolicy, FailoverTier, HashPolicy, HealthCheckPolicy,
    MAX_FALLBACK_SERVICES, OutlierPolicy, RetryPolicy, ServicePolicy, TimeoutPolicy,
};
pub use rate_limit::{RateLimitPolicy, RateLimitTier};
pub use request_limits::RequestLimits;
pub use scaling::{
    ExecActuator, PredictiveScaling, ScalingActuator, ScalingPolicy, ScheduledScaling,
    WebhookActuator,
};
pub use topology::Topology;

/// Labels: small, sorted key/value maps (sorted so stored JSON and tables are stable).
pub type Labels = std::collections::BTreeMap<String, String>;

#[cfg(test)]
mod round_trip_tests;
