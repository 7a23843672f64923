//! The dynamic configuration: settings that change at run time through the Admin API
//! (`meridianctl config set`), stored at `{prefix}v1/config` and followed by every replica.
//! Validation lists every bad field, so `config validate` can show them all at once.
//!
//! It also holds the limits on what callers can create ([`DynamicConfig::limits`]): each
//! `max_*` field, 0 for its default ([`TopologyLimits::DEFAULT`]). A configuration whose
//! limits would allow a routing table larger than proxies decode is refused, so a valid
//! topology always reaches every proxy.

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_shared::domain::limits::MAX_ROUTING_MESSAGE_BYTES;
use meridian_shared::domain::{HealthCheckPolicy, TopologyLimits};
use serde::{Deserialize, Serialize};

/// Field-for-field the `DynamicConfig` message; 0 means "the default".
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicConfig {
    pub debounce_quiet_ms: u32,
    pub debounce_max_delay_ms: u32,
    pub default_lease_ttl_seconds: u32,
    pub event_history_limit: u32,
    pub default_health_check: HealthCheckPolicy,
    pub flap_threshold: u32,
    pub flap_window_ms: u32,
    pub load_report_interval_ms: u32,
    pub max_labels: u32,
    pub max_label_key_bytes: u32,
    pub max_label_value_bytes: u32,
    pub max_services_per_node: u32,
    pub max_nodes_per_federation: u32,
    pub max_regions_per_federation: u32,
    pub max_zones_per_region: u32,
    pub max_services_per_federation: u32,
    pub max_failover_tiers: u32,
    pub max_tier_members: u32,
    pub max_idempotent_methods: u32,
    pub max_text_bytes: u32,
    pub max_allowed_networks: u32,
    pub lost_node_retention_seconds: u32,
}

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl DynamicConfig {
    pub fn debounce_quiet(&self) -> Duration {
        millis(self.debounce_quiet_ms, 100)
    }

    pub fn debounce_max_delay(&self) -> Duration {
        millis(self.debounce_max_delay_ms, 1_000)
    }

    pub fn lease_ttl_seconds(&self) -> u32 {
        or(self.default_lease_ttl_seconds, 10)
    }

    pub fn event_history_limit(&self) -> u64 {
        u64::from(or(self.event_history_limit, 1_000))
    }

    /// The limits on what callers can create, defaults filled in.
    pub fn limits(&self) -> TopologyLimits {
        let d = TopologyLimits::DEFAULT;
        TopologyLimits {
            max_labels: or(self.max_labels, d.max_labels),
            max_label_key_bytes: or(self.max_label_key_bytes, d.max_label_key_bytes),
            max_label_value_bytes: or(self.max_label_value_bytes, d.max_label_value_bytes),
            max_services_per_node: or(self.max_services_per_node, d.max_services_per_node),
            max_nodes_per_federation: or(self.max_nodes_per_federation, d.max_nodes_per_federation),
            max_regions_per_federation: or(
                self.max_regions_per_federation,
                d.max_regions_per_federation,
            ),
            max_zones_per_region: or(self.max_zones_per_region, d.max_zones_per_region),
            max_services_per_federation: or(
                self.max_services_per_federation,
                d.max_services_per_federation,
            ),
            max_failover_tiers: or(self.max_failover_tiers, d.max_failover_tiers),
            max_tier_members: or(self.max_tier_members, d.max_tier_members),
            max_idempotent_methods: or(self.max_idempotent_methods, d.max_idempotent_methods),
            max_text_bytes: or(self.max_text_bytes, d.max_text_bytes),
            max_allowed_networks: or(self.max_allowed_networks, d.max_allowed_networks),
        }
    }

    /// How long a `lost` node is kept before the leader deletes it.
    pub fn lost_node_retention(&self) -> Duration {
        Duration::from_secs(u64::from(or(self.lost_node_retention_seconds, 86_400)))
    }

    /// Every problem, in field order; empty when valid.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |field: &'static str, value: u32, range: std::ops::RangeInclusive<u32>| {
            if value != 0 && !range.contains(&value) {
                errors.push(FieldError {
                    field,
                    message: format!(
                        "{value} is out of range: use {} to {} (or 0 for the default)",
                        range.start(),
                        range.end()
                    ),
                });
            }
        };
        check("debounce_quiet_ms", self.debounce_quiet_ms, 1..=10_000);
        check(
            "debounce_max_delay_ms",
            self.debounce_max_delay_ms,
            1..=60_000,
        );
        check(
            "default_lease_ttl_seconds",
            self.default_lease_ttl_seconds,
            5..=300,
        );
        check(
            "event_history_limit",
            self.event_history_limit,
            10..=100_000,
        );
        check(
            "default_health_check.interval_ms",
            self.default_health_check.interval_ms,
            100..=600_000,
        );
        check(
            "default_health_check.timeout_ms",
            self.default_health_check.timeout_ms,
            10..=60_000,
        );
        check(
            "default_health_check.unhealthy_threshold",
            self.default_health_check.unhealthy_threshold,
            1..=100,
        );
        check(
            "default_health_check.healthy_threshold",
            self.default_health_check.healthy_threshold,
            1..=100,
        );
        check("flap_threshold", self.flap_threshold, 2..=1_000);
        check("flap_window_ms", self.flap_window_ms, 1_000..=86_400_000);
        check(
            "load_report_interval_ms",
            self.load_report_interval_ms,
            100..=600_000,
        );
        check("max_labels", self.max_labels, 1..=256);
        check("max_label_key_bytes", self.max_label_key_bytes, 1..=253);
        check(
            "max_label_value_bytes",
            self.max_label_value_bytes,
            1..=4_096,
        );
        check("max_services_per_node", self.max_services_per_node, 1..=256);
        check(
            "max_nodes_per_federation",
            self.max_nodes_per_federation,
            1..=100_000,
        );
        check(
            "max_regions_per_federation",
            self.max_regions_per_federation,
            1..=1_000,
        );
        check("max_zones_per_region", self.max_zones_per_region, 1..=256);
        check(
            "max_services_per_federation",
            self.max_services_per_federation,
            1..=10_000,
        );
        check("max_failover_tiers", self.max_failover_tiers, 1..=64);
        check("max_tier_members", self.max_tier_members, 1..=1_000);
        check(
            "max_idempotent_methods",
            self.max_idempotent_methods,
            1..=1_000,
        );
        check("max_text_bytes", self.max_text_bytes, 1..=16_384);
        check("max_allowed_networks", self.max_allowed_networks, 1..=1_000);
        check(
            "lost_node_retention_seconds",
            self.lost_node_retention_seconds,
            60..=31_536_000,
        );
        if self.debounce_quiet() > self.debounce_max_delay() {
            errors.push(FieldError {
                field: "debounce_max_delay_ms",
                message: format!(
                    "the max delay ({} ms) must not be shorter than the quiet period ({} ms)",
                    self.debounce_max_delay().as_millis(),
                    self.debounce_quiet().as_millis()
                ),
            });
        }
        // Only limits each in range are worth adding up.
        let table = self.limits().max_routing_message_bytes();
        if errors.is_empty() && table > MAX_ROUTING_MESSAGE_BYTES {
            errors.push(FieldError {
                field: "max_nodes_per_federation",
                message: format!(
                    "with these limits the largest routing table would be {} MiB, above the {} MiB \
                     a proxy accepts; lower max_nodes_per_federation, max_services_per_federation \
                     or the per-node limits (max_labels, max_label_value_bytes, \
                     max_services_per_node, max_text_bytes)",
                    table.div_ceil(1 << 20),
                    MAX_ROUTING_MESSAGE_BYTES >> 20
                ),
            });
        }
        errors
    }
}

fn or(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

fn millis(value: u32, default: u32) -> Duration {
    Duration::from_millis(u64::from(or(value, default)))
}

impl From<DynamicConfig> for pb::DynamicConfig {
    fn from(c: DynamicConfig) -> Self {
        pb::DynamicConfig {
            debounce_quiet_ms: c.debounce_quiet_ms,
            debounce_max_delay_ms: c.debounce_max_delay_ms,
            default_lease_ttl_seconds: c.default_lease_ttl_seconds,
            event_history_limit: c.event_history_limit,
            default_health_check: Some(c.default_health_check.into()),
            flap_threshold: c.flap_threshold,
            flap_window_ms: c.flap_window_ms,
            load_report_interval_ms: c.load_report_interval_ms,
            max_labels: c.max_labels,
            max_label_key_bytes: c.max_label_key_bytes,
            max_label_value_bytes: c.max_label_value_bytes,
            max_services_per_node: c.max_services_per_node,
            max_nodes_per_federation: c.max_nodes_per_federation,
            max_regions_per_federation: c.max_regions_per_federation,
            max_zones_per_region: c.max_zones_per_region,
            max_services_per_federation: c.max_services_per_federation,
            max_failover_tiers: c.max_failover_tiers,
            max_tier_members: c.max_tier_members,
            max_idempotent_methods: c.max_idempotent_methods,
            max_text_bytes: c.max_text_bytes,
            max_allowed_networks: c.max_allowed_networks,
            lost_node_retention_seconds: c.lost_node_retention_seconds,
        }
    }
}

impl From<pb::DynamicConfig> for DynamicConfig {
    fn from(c: pb::DynamicConfig) -> Self {
        DynamicConfig {
            debounce_quiet_ms: c.debounce_quiet_ms,
            debounce_max_delay_ms: c.debounce_max_delay_ms,
            default_lease_ttl_seconds: c.default_lease_ttl_seconds,
            event_history_limit: c.event_history_limit,
            default_health_check: c.default_health_check.map(Into::into).unwrap_or_default(),
            flap_threshold: c.flap_threshold,
            flap_window_ms: c.flap_window_ms,
            load_report_interval_ms: c.load_report_interval_ms,
            max_labels: c.max_labels,
            max_label_key_bytes: c.max_label_key_bytes,
            max_label_value_bytes: c.max_label_value_bytes,
            max_services_per_node: c.max_services_per_node,
            max_nodes_per_federation: c.max_nodes_per_federation,
            max_regions_per_federation: c.max_regions_per_federation,
            max_zones_per_region: c.max_zones_per_region,
            max_services_per_federation: c.max_services_per_federation,
            max_failover_tiers: c.max_failover_tiers,
            max_tier_members: c.max_tier_members,
            max_idempotent_methods: c.max_idempotent_methods,
            max_text_bytes: c.max_text_bytes,
            max_allowed_networks: c.max_allowed_networks,
            lost_node_retention_seconds: c.lost_node_retention_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_resolve() {
        let config = DynamicConfig::default();
        assert!(config.problems().is_empty());
        assert_eq!(config.debounce_quiet(), Duration::from_millis(100));
        assert_eq!(config.lease_ttl_seconds(), 10);
    }

    #[test]
    fn every_bad_field_is_named() {
        let config = DynamicConfig {
            debounce_quiet_ms: 50_000,
            default_lease_ttl_seconds: 1,
            ..Default::default()
        };
        let fields: Vec<_> = config.problems().into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "debounce_quiet_ms",
                "default_lease_ttl_seconds",
                "debounce_max_delay_ms"
            ]
        );
    }

    #[test]
    fn limits_default_when_zero_and_follow_when_set() {
        let config = DynamicConfig::default();
        assert_eq!(config.limits(), TopologyLimits::DEFAULT);
        assert_eq!(config.lost_node_retention(), Duration::from_secs(86_400));
        let config = DynamicConfig {
            max_labels: 3,
            lost_node_retention_seconds: 600,
            ..Default::default()
        };
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert_eq!(config.limits().max_labels, 3);
        assert_eq!(
            config.limits().max_nodes_per_federation,
            TopologyLimits::DEFAULT.max_nodes_per_federation
        );
        assert_eq!(config.lost_node_retention(), Duration::from_secs(600));
    }

    #[test]
    fn limits_out_of_range_are_named() {
        let config = DynamicConfig {
            max_labels: 257,
            lost_node_retention_seconds: 59,
            ..Default::default()
        };
        let fields: Vec<_> = config.problems().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["max_labels", "lost_node_retention_seconds"]);
    }

    #[test]
    fn limits_whose_table_would_not_reach_proxies_are_refused() {
        // Each in range, together far above what a proxy decodes.
        let config = DynamicConfig {
            max_nodes_per_federation: 100_000,
            max_labels: 256,
            max_label_value_bytes: 4_096,
            ..Default::default()
        };
        let problems = config.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "max_nodes_per_federation");
        assert!(
            problems[0].message.contains("MiB"),
            "{}",
            problems[0].message
        );
    }

    #[test]
    fn round_trips_through_proto() {
        let config = DynamicConfig {
            debounce_quiet_ms: 7,
            debounce_max_delay_ms: 70,
            default_lease_ttl_seconds: 12,
            event_history_limit: 99,
            default_health_check: HealthCheckPolicy {
                interval_ms: 500,
                ..Default::default()
            },
            flap_threshold: 4,
            flap_window_ms: 9_000,
            load_report_interval_ms: 800,
            max_labels: 100,
            max_label_key_bytes: 101,
            max_label_value_bytes: 102,
            max_services_per_node: 103,
            max_nodes_per_federation: 104,
            max_regions_per_federation: 105,
            max_zones_per_region: 106,
            max_services_per_federation: 107,
            max_failover_tiers: 108,
            max_tier_members: 109,
            max_idempotent_methods: 110,
            max_text_bytes: 111,
            max_allowed_networks: 112,
            lost_node_retention_seconds: 113,
        };
        assert_eq!(
            DynamicConfig::from(pb::DynamicConfig::from(config.clone())),
            config
        );
    }
}
