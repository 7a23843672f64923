//! The rules for a service's endpoint limits: a count of calls in flight per node and a
//! stream idle timeout a proxy can enforce (the same ranges as the proxy's own
//! `[upstream]` settings; 0 leaves the proxy's setting).

use meridian_shared::domain::EndpointLimits;

use super::{Invalid, invalid};

/// Most calls in flight per node a policy may allow.
pub const MAX_REQUESTS_PER_ENDPOINT: u32 = 1_000_000;
/// Shortest stream idle timeout: below it, an ordinary pause would end calls.
pub const MIN_STREAM_IDLE_TIMEOUT_MS: u32 = 100;
/// Longest stream idle timeout: a day.
pub const MAX_STREAM_IDLE_TIMEOUT_MS: u32 = 86_400_000;

const FIELD: &str = "service_policy.endpoint_limits";

pub fn endpoint_limits(l: &EndpointLimits) -> Result<(), Invalid> {
    if l.max_requests_per_endpoint > MAX_REQUESTS_PER_ENDPOINT {
        return Err(invalid(
            format!("{FIELD}.max_requests_per_endpoint"),
            format!(
                "{} is above {MAX_REQUESTS_PER_ENDPOINT} (0: the proxy's --max-requests-per-endpoint)",
                l.max_requests_per_endpoint
            ),
        ));
    }
    let idle = l.stream_idle_timeout_ms;
    if idle != 0 && !(MIN_STREAM_IDLE_TIMEOUT_MS..=MAX_STREAM_IDLE_TIMEOUT_MS).contains(&idle) {
        return Err(invalid(
            format!("{FIELD}.stream_idle_timeout_ms"),
            format!(
                "{idle} is outside {MIN_STREAM_IDLE_TIMEOUT_MS} to {MAX_STREAM_IDLE_TIMEOUT_MS} (a day; 0: the proxy's --stream-idle-timeout-ms)"
            ),
        ));
    }
    Ok(())
}
