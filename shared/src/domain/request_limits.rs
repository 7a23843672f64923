//! A service's request limits: the largest gRPC message its calls may carry, and how
//! RouteMessage deduplicates messages with an idempotency key (how long answers are kept,
//! and the bounds of what is kept). Numeric fields at 0 mean "the documented default"
//! (see `RequestLimits` in topology.proto); the `effective_*` helpers resolve them.

use std::time::Duration;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// Answers kept per service and proxy when the policy says 0.
pub const DEFAULT_DEDUP_MAX_ENTRIES: u32 = 10_000;
/// Bytes of answers kept per service and proxy when the policy says 0 (16 MiB).
pub const DEFAULT_DEDUP_MAX_BYTES: u64 = 16 * 1024 * 1024;

/// What one call to a service may carry, and RouteMessage's deduplication.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestLimits {
    /// Largest message (request or response), bytes; 0: the proxy's default.
    pub max_message_bytes: u32,
    /// How long answers to keyed messages are replayed; 0: not kept.
    pub dedup_ttl_ms: u32,
    pub dedup_max_entries: u32,
    pub dedup_max_bytes: u64,
    /// Message ids are unique: an id serves as the idempotency key.
    pub ids_are_unique: bool,
}

impl RequestLimits {
    /// The largest message, given the proxy-wide default.
    pub fn effective_max_message_bytes(&self, proxy_default: u32) -> u32 {
        match self.max_message_bytes {
            0 => proxy_default,
            set => set,
        }
    }

    pub fn dedup_ttl(&self) -> Duration {
        Duration::from_millis(u64::from(self.dedup_ttl_ms))
    }

    pub fn effective_dedup_max_entries(&self) -> u32 {
        match self.dedup_max_entries {
            0 => DEFAULT_DEDUP_MAX_ENTRIES,
            set => set,
        }
    }

    pub fn effective_dedup_max_bytes(&self) -> u64 {
        match self.dedup_max_bytes {
            0 => DEFAULT_DEDUP_MAX_BYTES,
            set => set,
        }
    }
}

impl From<RequestLimits> for pb::RequestLimits {
    fn from(l: RequestLimits) -> Self {
        pb::RequestLimits {
            max_message_bytes: l.max_message_bytes,
            dedup_ttl_ms: l.dedup_ttl_ms,
            dedup_max_entries: l.dedup_max_entries,
            dedup_max_bytes: l.dedup_max_bytes,
            ids_are_unique: l.ids_are_unique,
        }
    }
}

impl From<pb::RequestLimits> for RequestLimits {
    fn from(l: pb::RequestLimits) -> Self {
        RequestLimits {
            max_message_bytes: l.max_message_bytes,
            dedup_ttl_ms: l.dedup_ttl_ms,
            dedup_max_entries: l.dedup_max_entries,
            dedup_max_bytes: l.dedup_max_bytes,
            ids_are_unique: l.ids_are_unique,
        }
    }
}
