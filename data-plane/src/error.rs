//! Why the proxy itself ended a call, for forwarded calls and RouteMessage alike, and the
//! one edge that turns it into what the caller sees: [`RequestError::into_status`] picks
//! the gRPC code, the message is the error's `Display`. Messages speak to operators: what
//! happened, to what, and what to do. Only the error path allocates them.

use tonic::{Code, Status};

use crate::forward::ProxyBody;
use crate::forward::framing::{Direction, TooLarge};
use crate::forward::status::code_name;

/// Where a call looked for a node, for "no usable node" messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Anywhere in the federation.
    Federation,
    /// The proxy's own region (the message did not allow global routing).
    HomeRegion(&'a str),
    /// The region the message asked for.
    TargetRegion(&'a str),
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Federation => f.write_str("anywhere in the federation"),
            Scope::HomeRegion(region) => write!(
                f,
                "in the proxy's region {region} (set global_routing to use other regions)"
            ),
            Scope::TargetRegion(region) => write!(f, "in the requested region {region}"),
        }
    }
}

/// The trailer telling a client when to retry (gRPC's retry design, A6).
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// Whole milliseconds to wait, rounded up so a client retrying on time is admitted.
fn pushback_ms(wait: std::time::Duration) -> u64 {
    u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "proxy {proxy} has no routing table yet: it has not reached a control plane and has no cached table; check its --control-planes and that a control plane is up"
    )]
    NoTable { proxy: String },

    #[error("{path:?} is not a gRPC method path (/package.Service/Method)")]
    NotAMethodPath { path: String },

    #[error(
        "service {service} is not in the routing table of proxy {proxy} (federation {federation}, version {version}): no node serves it; check the service name or register a node serving it"
    )]
    UnknownService {
        service: String,
        proxy: String,
        federation: String,
        version: u64,
    },

    #[error(
        "malformed grpc-timeout header {value:?}: expected at most 8 digits and a unit (H, M, S, m, u, n), e.g. 500m"
    )]
    MalformedTimeout { value: String },

    #[error(
        "malformed x-meridian-priority header {value:?}: expected one digit, 0 to 9 (9 most important)"
    )]
    MalformedPriority { value: String },

    /// Admission control refused the call before any node saw it.
    #[error(transparent)]
    Refused(#[from] crate::admission::concurrency::Refusal),

    /// A request the caller must fix (a missing or malformed field, an unreadable body).
    #[error("{0}")]
    BadRequest(String),

    #[error("target_node {node:?} is not in the routing table; check `meridianctl nodes`")]
    UnknownNode { node: String },

    #[error("target_region {region:?} is not in the federation; check `meridianctl regions`")]
    UnknownRegion { region: String },

    #[error("target_node {node:?} does not serve {service}")]
    NodeDoesNotServe { node: String, service: String },

    #[error(
        "region {region} is outside this proxy's region {home}; set global_routing to route there"
    )]
    OutsideRegion { region: String, home: String },

    #[error(
        "target_node {node:?} is {status} ({reason}); route without target_node or recover the node"
    )]
    NodeNotRoutable {
        node: String,
        status: String,
        reason: String,
    },

    #[error(
        "no usable node for service {service} {scope}: {known} node(s) known, none healthy and ready (draining, unhealthy, failed, lost, or their breakers open); check `meridianctl nodes`"
    )]
    NoUsableNode {
        service: String,
        /// Where the proxy looked ([`Scope`]).
        scope: String,
        known: usize,
    },

    /// Every usable node had as many calls in flight as it may take (Envoy's "upstream
    /// overflow"); the call failed fast instead of piling onto them.
    #[error(
        "upstream overflow: every usable node of service {service} {scope} has its maximum of calls in flight from this proxy ({full} node(s) full, at most {limit} call(s) each); retry with backoff, add nodes, or raise the service's endpoint_limits.max_requests_per_endpoint (or the proxy's --max-requests-per-endpoint)"
    )]
    UpstreamOverflow {
        service: String,
        /// Where the proxy looked ([`Scope`]).
        scope: String,
        full: usize,
        limit: u32,
    },

    /// A forwarded call went too long without a frame in either direction.
    #[error(
        "no frame in either direction for {} ms on the call to node {node} of service {service}: the stream idle timeout ended it; send more often or raise the service's endpoint_limits.stream_idle_timeout_ms (or the proxy's --stream-idle-timeout-ms)",
        .timeout.as_millis()
    )]
    StreamIdle {
        node: String,
        service: String,
        timeout: std::time::Duration,
    },

    #[error("node {node} has an unusable address {address:?}; re-register it with host:port")]
    UnusableAddress { node: String, address: String },

    #[error(
        "deadline exceeded after {attempts} attempt(s), waiting for node {node} of service {service}; raise the caller's timeout or the service's timeout policy"
    )]
    DeadlineExceeded {
        node: String,
        service: String,
        attempts: u32,
    },

    /// The node never answered: it could not be reached, or its connection failed.
    #[error("node {node} of service {service} failed after {attempts} attempt(s): {reason}")]
    Upstream {
        node: String,
        service: String,
        attempts: u32,
        reason: String,
    },

    /// A message over the service's size limit; nothing of it reached the other side.
    #[error(
        "the {direction} message of {length} bytes is over the limit of {limit} bytes for service {service}; send smaller messages or raise the service's limits.max_message_bytes (or the proxy's --max-message-bytes)"
    )]
    MessageTooLarge {
        service: String,
        direction: Direction,
        length: u32,
        limit: u32,
    },

    #[error("idempotency_key is {length} bytes; at most {max} are allowed")]
    IdempotencyKeyTooLong { length: usize, max: usize },

    #[error(
        "tier {tier:?} of service {service} is over its rate limit ({federation_rate} calls/s across the federation, {local_rate:.1} calls/s at this proxy); retry after {} ms or ask for a higher tier",
        pushback_ms(*.retry_after)
    )]
    RateLimited {
        service: String,
        tier: String,
        federation_rate: f64,
        local_rate: f64,
        /// When a call of the tier would be admitted (the `grpc-retry-pushback-ms`).
        retry_after: std::time::Duration,
    },

    /// The status a node answered with, passed on as is.
    #[error("node answered {}: {}", .0.code(), .0.message())]
    Answered(Status),

    #[error(
        "deadline exceeded waiting for the message with the same idempotency key to service {service}; raise the caller's timeout"
    )]
    JoinDeadlineExceeded { service: String },

    /// The outcome of the first call with an idempotency key, shared with the calls that
    /// waited for it; passed on as is (it was counted once, when the first call ended).
    #[error("the message with the same idempotency key ended with {}: {}", .0.code(), .0.message())]
    Deduplicated(Status),
}

impl RequestError {
    /// The gRPC code the caller gets.
    pub fn code(&self) -> Code {
        match self {
            RequestError::NoTable { .. }
            | RequestError::NodeNotRoutable { .. }
            | RequestError::NoUsableNode { .. }
            | RequestError::UpstreamOverflow { .. }
            | RequestError::StreamIdle { .. }
            | RequestError::Upstream { .. } => Code::Unavailable,
            RequestError::NotAMethodPath { .. } | RequestError::UnknownService { .. } => {
                Code::Unimplemented
            }
            RequestError::MalformedTimeout { .. }
            | RequestError::MalformedPriority { .. }
            | RequestError::IdempotencyKeyTooLong { .. }
            | RequestError::BadRequest(_)
            | RequestError::NodeDoesNotServe { .. }
            | RequestError::OutsideRegion { .. } => Code::InvalidArgument,
            RequestError::UnknownNode { .. } | RequestError::UnknownRegion { .. } => Code::NotFound,
            RequestError::UnusableAddress { .. } => Code::Internal,
            RequestError::DeadlineExceeded { .. } | RequestError::JoinDeadlineExceeded { .. } => {
                Code::DeadlineExceeded
            }
            RequestError::Refused(_)
            | RequestError::MessageTooLarge { .. }
            | RequestError::RateLimited { .. } => Code::ResourceExhausted,
            RequestError::Answered(status) | RequestError::Deduplicated(status) => status.code(),
        }
    }

    /// The call carried `too_large` for `service`.
    pub fn message_too_large(service: String, too_large: TooLarge) -> Self {
        RequestError::MessageTooLarge {
            service,
            direction: too_large.direction,
            length: too_large.length,
            limit: too_large.limit,
        }
    }

    /// The status the caller gets: the node's own for [`RequestError::Answered`] (and the
    /// first call's for [`RequestError::Deduplicated`]), else the proxy's code and message
    /// (counted in `meridian_proxy_local_errors_total`; refusals also in
    /// `meridian_proxy_refused_total` by reason, service and, for message sizes,
    /// direction), with a
    /// `grpc-retry-pushback-ms` trailer when the proxy knows when to retry.
    pub fn into_status(self) -> Status {
        if let RequestError::Answered(status) | RequestError::Deduplicated(status) = self {
            return status;
        }
        let code = self.code();
        metrics::counter!("meridian_proxy_local_errors_total", "code" => code_name(code))
            .increment(1);
        if let RequestError::MessageTooLarge {
            service, direction, ..
        } = &self
        {
            metrics::counter!(
                "meridian_proxy_refused_total",
                "reason" => "message_too_large",
                "direction" => direction.as_str(),
                "service" => service.clone()
            )
            .increment(1);
        }
        if let RequestError::UpstreamOverflow { service, .. } = &self {
            metrics::counter!(
                "meridian_proxy_refused_total",
                "reason" => "upstream_overflow",
                "service" => service.clone()
            )
            .increment(1);
        }
        let mut status = Status::new(code, self.to_string());
        if let RequestError::RateLimited { retry_after, .. } = self {
            status
                .metadata_mut()
                .insert(RETRY_PUSHBACK, pushback_ms(retry_after).into());
        }
        status
    }

    /// The status as a trailers-only response (HTTP 200 with `grpc-status` and
    /// `grpc-message` in the headers), for forwarded calls.
    pub fn into_response(self) -> http::Response<ProxyBody> {
        self.into_status().into_http()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_error_is_a_trailers_only_response_with_its_code_and_message() {
        let error = RequestError::NoUsableNode {
            service: "demo.v1.Echo".into(),
            scope: Scope::Federation.to_string(),
            known: 2,
        };
        let response = error.into_response();
        assert_eq!(response.status(), http::StatusCode::OK);
        let status = Status::from_header_map(response.headers()).expect("a grpc-status header");
        assert_eq!(status.code(), Code::Unavailable);
        let message = status.message();
        assert!(
            message.contains("demo.v1.Echo") && message.contains("2 node(s) known"),
            "{message}"
        );
    }

    #[test]
    fn a_rate_limited_call_is_resource_exhausted_with_a_pushback_trailer() {
        let error = RequestError::RateLimited {
            service: "demo.v1.Echo".into(),
            tier: "free".into(),
            federation_rate: 50.0,
            local_rate: 25.0,
            retry_after: std::time::Duration::from_micros(12_300),
        };
        let response = error.into_response();
        let status = Status::from_header_map(response.headers()).expect("a grpc-status header");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status.message().contains("\"free\"") && status.message().contains("50 calls/s"),
            "{}",
            status.message()
        );
        assert_eq!(
            response.headers().get(RETRY_PUSHBACK).map(|v| v.as_bytes()),
            Some(&b"13"[..]),
            "12.3 ms, rounded up"
        );
    }

    #[test]
    fn a_nodes_answer_passes_through_untouched() {
        let status = RequestError::Answered(Status::resource_exhausted("queue full")).into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "queue full");
    }
}
