//! The dynamic configuration: settings that change at run time through the Admin API
//! (`meridianctl config set`), stored at `{prefix}v1/config` and followed by every replica.
//! Validation lists every bad field, so `config validate` can show them all at once.

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_shared::domain::HealthCheckPolicy;
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
        };
        assert_eq!(
            DynamicConfig::from(pb::DynamicConfig::from(config.clone())),
            config
        );
    }
}
