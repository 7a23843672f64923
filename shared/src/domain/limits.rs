//! Limits on the state a caller can create, and what they imply for message sizes.
//!
//! Every list and every free-text field of the topology has a limit, so the largest
//! object, the largest federation and therefore the largest routing table are known in
//! advance. The control plane checks writes against [`TopologyLimits`] (resolved from its
//! dynamic configuration; operators tune them with `meridianctl config set`), and refuses
//! a configuration whose largest routing table would not fit [`MAX_ROUTING_MESSAGE_BYTES`].
//! That one constant is then both the control plane's encode limit and the proxies' decode
//! limit on the routing stream ([`routing_message_limit`]): any topology the limits let
//! through loads, and nothing larger is ever decoded.
//!
//! The size bounds over-estimate protobuf's encoding on purpose (every length prefix and
//! every integer counted at its widest), so they are safe without being tight.

/// Longest name or id (federation, region, zone, node, tier), as [`crate::names`] checks.
pub const NAME_BYTES: u64 = crate::names::MAX_NAME_LEN as u64;
/// Longest fully qualified gRPC service name.
pub const SERVICE_NAME_BYTES: u64 = 255;
/// Longest method name in an idempotent-method entry.
pub const METHOD_NAME_BYTES: u64 = 255;
/// Longest `host:port` node address: a 253-byte DNS name, ':' and a 5-digit port.
pub const ADDRESS_BYTES: u64 = 253 + 1 + 5;
/// Longest header name for consistent hashing.
pub const HEADER_NAME_BYTES: u64 = 255;
/// Longest actor ("operator:<token name>", "reconciler") recorded on a failover.
pub const ACTOR_BYTES: u64 = 255;

/// Most tiers of one rate-limit policy.
pub use super::rate_limit::MAX_RATE_LIMIT_TIERS;

/// The largest routing-stream message (snapshot or delta) a proxy decodes and the control
/// plane encodes. The dynamic configuration is refused when its limits allow a larger
/// table, so every valid topology fits.
pub const MAX_ROUTING_MESSAGE_BYTES: u64 = 256 * 1024 * 1024;

/// The decode limit for a proxy's `RoutingDiscovery` client and the encode limit for the
/// control plane's `RoutingDiscovery` server (`max_decoding_message_size` /
/// `max_encoding_message_size`).
pub fn routing_message_limit() -> usize {
    usize::try_from(MAX_ROUTING_MESSAGE_BYTES).unwrap_or(usize::MAX)
}

/// The limits in force, every one resolved (no "0 means default" left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyLimits {
    /// Labels on one federation, region or node.
    pub max_labels: u32,
    pub max_label_key_bytes: u32,
    pub max_label_value_bytes: u32,
    pub max_services_per_node: u32,
    pub max_nodes_per_federation: u32,
    pub max_regions_per_federation: u32,
    pub max_zones_per_region: u32,
    /// Service policies per federation.
    pub max_services_per_federation: u32,
    pub max_failover_tiers: u32,
    /// Regions, zones and nodes listed in one failover tier, together.
    pub max_tier_members: u32,
    pub max_idempotent_methods: u32,
    /// Descriptions, reasons and other free text.
    pub max_text_bytes: u32,
    /// CIDRs in a federation's `allowed_networks`.
    pub max_allowed_networks: u32,
}

impl TopologyLimits {
    /// The defaults: generous for real federations, and their largest routing table
    /// (about 127 MiB, for 10,000 nodes each at every limit) fits
    /// [`MAX_ROUTING_MESSAGE_BYTES`].
    pub const DEFAULT: TopologyLimits = TopologyLimits {
        max_labels: 16,
        max_label_key_bytes: 63,
        max_label_value_bytes: 255,
        max_services_per_node: 16,
        max_nodes_per_federation: 10_000,
        max_regions_per_federation: 100,
        max_zones_per_region: 16,
        max_services_per_federation: 500,
        max_failover_tiers: 8,
        max_tier_members: 32,
        max_idempotent_methods: 32,
        max_text_bytes: 1024,
        max_allowed_networks: 64,
    };

    /// Labels at every limit, as map entries.
    fn labels_bytes(&self) -> u64 {
        let entry = field(
            field(u64::from(self.max_label_key_bytes))
                + field(u64::from(self.max_label_value_bytes)),
        );
        u64::from(self.max_labels) * entry
    }

    fn text_bytes(&self) -> u64 {
        field(u64::from(self.max_text_bytes))
    }

    /// The largest `Node` message.
    pub fn max_node_bytes(&self) -> u64 {
        field(NAME_BYTES) * 4 // id, federation, region, zone
            + field(ADDRESS_BYTES)
            + u64::from(self.max_services_per_node) * field(SERVICE_NAME_BYTES)
            + self.labels_bytes()
            + self.text_bytes() // status reason
            + TIMESTAMP
            + NUMBER * 4 // weight, capacity, status, registration
    }

    /// The largest `Region` message.
    pub fn max_region_bytes(&self) -> u64 {
        field(NAME_BYTES) * 2
            + field(NUMBER * 2) // location
            + u64::from(self.max_zones_per_region) * field(NAME_BYTES)
            + self.labels_bytes()
    }

    /// The largest `ServicePolicy` message.
    pub fn max_service_bytes(&self) -> u64 {
        let tier = field(field(NAME_BYTES) + u64::from(self.max_tier_members) * field(NAME_BYTES));
        let failover = field(u64::from(self.max_failover_tiers) * tier + NUMBER * 4);
        let method = field(1 + SERVICE_NAME_BYTES + 1 + METHOD_NAME_BYTES);
        let retry = field(u64::from(self.max_idempotent_methods) * method + NUMBER * 5);
        let health_check = field(field(SERVICE_NAME_BYTES) + NUMBER * 5);
        let hash = field(field(HEADER_NAME_BYTES));
        // timeout, outlier, scaling, request limits, concurrency, adaptive, endpoint limits
        let numbers_only = field(NUMBER * 2)
            + field(NUMBER * 7)
            + field(NUMBER * 6)
            + field(NUMBER * 5)
            + field(NUMBER * 10)
            + field(NUMBER * 8)
            + field(NUMBER * 2);
        let rate_tier = field(field(NAME_BYTES) + NUMBER * 2);
        let rate_limit = field(
            MAX_RATE_LIMIT_TIERS as u64 * rate_tier + field(HEADER_NAME_BYTES) + field(NAME_BYTES),
        );
        let fallbacks = super::policy::MAX_FALLBACK_SERVICES as u64 * field(SERVICE_NAME_BYTES);
        field(SERVICE_NAME_BYTES)
            + field(NAME_BYTES)
            + NUMBER * 2 // algorithm, global_routing
            + fallbacks
            + failover
            + retry
            + health_check
            + hash
            + numbers_only
            + rate_limit
    }

    /// The largest `ActiveFailover` message.
    pub fn max_failover_bytes(&self) -> u64 {
        field(SERVICE_NAME_BYTES)
            + field(SERVICE_NAME_BYTES.max(NAME_BYTES)) // target: a tier or region name
            + self.text_bytes()
            + field(ACTOR_BYTES)
            + TIMESTAMP
    }

    /// The largest routing-stream message these limits allow: a snapshot of a federation
    /// at every limit, or a delta that replaces all of it and names as many removals.
    pub fn max_routing_message_bytes(&self) -> u64 {
        let nodes = u64::from(self.max_nodes_per_federation);
        let regions = u64::from(self.max_regions_per_federation);
        let services = u64::from(self.max_services_per_federation);
        let table = nodes * field(self.max_node_bytes())
            + regions * field(self.max_region_bytes())
            + services * field(self.max_service_bytes())
            + services * field(self.max_failover_bytes())
            + field(NAME_BYTES)
            + NUMBER * 2
            + TIMESTAMP;
        let removals = nodes * field(NAME_BYTES)
            + regions * field(NAME_BYTES)
            + services * 2 * field(SERVICE_NAME_BYTES);
        // The response around it: the table's own length prefix and the nonce.
        field(table + removals) + ENVELOPE
    }
}

impl Default for TopologyLimits {
    fn default() -> Self {
        TopologyLimits::DEFAULT
    }
}

/// A tag and the widest length prefix (5 bytes covers any u32 length).
const FIELD_OVERHEAD: u64 = 1 + 5;
/// A tag and the widest varint (10 bytes).
const NUMBER: u64 = 1 + 10;
/// A `google.protobuf.Timestamp` field: seconds and nanos.
const TIMESTAMP: u64 = FIELD_OVERHEAD + NUMBER * 2;
/// The response's nonce and other small fields.
const ENVELOPE: u64 = 1024;

/// A length-delimited field whose content is at most `content` bytes.
const fn field(content: u64) -> u64 {
    FIELD_OVERHEAD + content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_limits_fit_the_routing_message_limit() {
        let bytes = TopologyLimits::DEFAULT.max_routing_message_bytes();
        assert!(
            bytes <= MAX_ROUTING_MESSAGE_BYTES,
            "{bytes} > {MAX_ROUTING_MESSAGE_BYTES}"
        );
    }

    #[test]
    fn bounds_grow_with_every_limit() {
        let base = TopologyLimits::DEFAULT;
        let node = base.max_node_bytes();
        for bigger in [
            TopologyLimits {
                max_labels: base.max_labels + 1,
                ..base
            },
            TopologyLimits {
                max_label_value_bytes: base.max_label_value_bytes + 1,
                ..base
            },
            TopologyLimits {
                max_services_per_node: base.max_services_per_node + 1,
                ..base
            },
            TopologyLimits {
                max_text_bytes: base.max_text_bytes + 1,
                ..base
            },
        ] {
            assert!(bigger.max_node_bytes() > node, "{bigger:?}");
        }
        let table = base.max_routing_message_bytes();
        let more_nodes = TopologyLimits {
            max_nodes_per_federation: base.max_nodes_per_federation + 1,
            ..base
        };
        assert!(more_nodes.max_routing_message_bytes() > table);
    }
}
