//! A service's endpoint limits: how many calls a proxy keeps in flight to one of its nodes
//! at once, and how long a forwarded call may go without a frame. Fields at 0 mean the
//! proxy's own `[upstream]` settings (see `EndpointLimits` in topology.proto); the
//! `effective_*` helpers resolve them against those.

use std::time::Duration;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// What one node takes from a proxy at once, and the stream idle timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointLimits {
    /// Calls in flight at once from one proxy to one node; 0: the proxy's default.
    pub max_requests_per_endpoint: u32,
    /// A forwarded call with no frame either way for this long ends; 0: the proxy's
    /// default.
    pub stream_idle_timeout_ms: u32,
}

impl EndpointLimits {
    /// The calls in flight one node may have, given the proxy's default.
    pub fn effective_max_requests(&self, proxy_default: u32) -> u32 {
        match self.max_requests_per_endpoint {
            0 => proxy_default,
            set => set,
        }
    }

    /// The stream idle timeout, given the proxy's default (`None`: none).
    pub fn effective_stream_idle_timeout(
        &self,
        proxy_default: Option<Duration>,
    ) -> Option<Duration> {
        match self.stream_idle_timeout_ms {
            0 => proxy_default,
            set => Some(Duration::from_millis(u64::from(set))),
        }
    }
}

impl From<EndpointLimits> for pb::EndpointLimits {
    fn from(l: EndpointLimits) -> Self {
        pb::EndpointLimits {
            max_requests_per_endpoint: l.max_requests_per_endpoint,
            stream_idle_timeout_ms: l.stream_idle_timeout_ms,
        }
    }
}

impl From<pb::EndpointLimits> for EndpointLimits {
    fn from(l: pb::EndpointLimits) -> Self {
        EndpointLimits {
            max_requests_per_endpoint: l.max_requests_per_endpoint,
            stream_idle_timeout_ms: l.stream_idle_timeout_ms,
        }
    }
}
