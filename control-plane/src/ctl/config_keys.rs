//! The `KEY=VALUE` language of `meridianctl config set|validate`: one key per
//! `DynamicConfig` field, named as in the proto (`debounce_quiet_ms`), with the nested
//! health-check defaults reached by a dot (`default_health_check.interval_ms`).
//!
//! Assignments are parsed and type-checked while the command line is parsed, so an
//! unknown key or a bad number is refused before anything is sent. Each key is one entry
//! in [`FIELDS`], pairing its name with an accessor for its slot: listing, reading and
//! writing all go through that one table, so they cannot disagree.

use std::str::FromStr;

use meridian_proto::v1 as pb;
use serde_json::{Map, Value};

type Config = pb::DynamicConfig;

/// Where one key's value lives, by type.
#[derive(Clone, Copy)]
enum Slot {
    Number(fn(&mut Config) -> &mut u32),
    Flag(fn(&mut Config) -> &mut bool),
    Text(fn(&mut Config) -> &mut String),
}

struct Field {
    key: &'static str,
    slot: Slot,
}

fn health_check(config: &mut Config) -> &mut pb::HealthCheckPolicy {
    config.default_health_check.get_or_insert_default()
}

const FIELDS: &[Field] = &[
    Field {
        key: "debounce_quiet_ms",
        slot: Slot::Number(|c| &mut c.debounce_quiet_ms),
    },
    Field {
        key: "debounce_max_delay_ms",
        slot: Slot::Number(|c| &mut c.debounce_max_delay_ms),
    },
    Field {
        key: "default_lease_ttl_seconds",
        slot: Slot::Number(|c| &mut c.default_lease_ttl_seconds),
    },
    Field {
        key: "event_history_limit",
        slot: Slot::Number(|c| &mut c.event_history_limit),
    },
    Field {
        key: "default_health_check.grpc_service",
        slot: Slot::Text(|c| &mut health_check(c).grpc_service),
    },
    Field {
        key: "default_health_check.tcp_only",
        slot: Slot::Flag(|c| &mut health_check(c).tcp_only),
    },
    Field {
        key: "default_health_check.interval_ms",
        slot: Slot::Number(|c| &mut health_check(c).interval_ms),
    },
    Field {
        key: "default_health_check.timeout_ms",
        slot: Slot::Number(|c| &mut health_check(c).timeout_ms),
    },
    Field {
        key: "default_health_check.unhealthy_threshold",
        slot: Slot::Number(|c| &mut health_check(c).unhealthy_threshold),
    },
    Field {
        key: "default_health_check.healthy_threshold",
        slot: Slot::Number(|c| &mut health_check(c).healthy_threshold),
    },
    Field {
        key: "flap_threshold",
        slot: Slot::Number(|c| &mut c.flap_threshold),
    },
    Field {
        key: "flap_window_ms",
        slot: Slot::Number(|c| &mut c.flap_window_ms),
    },
    Field {
        key: "load_report_interval_ms",
        slot: Slot::Number(|c| &mut c.load_report_interval_ms),
    },
    Field {
        key: "max_labels",
        slot: Slot::Number(|c| &mut c.max_labels),
    },
    Field {
        key: "max_label_key_bytes",
        slot: Slot::Number(|c| &mut c.max_label_key_bytes),
    },
    Field {
        key: "max_label_value_bytes",
        slot: Slot::Number(|c| &mut c.max_label_value_bytes),
    },
    Field {
        key: "max_services_per_node",
        slot: Slot::Number(|c| &mut c.max_services_per_node),
    },
    Field {
        key: "max_nodes_per_federation",
        slot: Slot::Number(|c| &mut c.max_nodes_per_federation),
    },
    Field {
        key: "max_regions_per_federation",
        slot: Slot::Number(|c| &mut c.max_regions_per_federation),
    },
    Field {
        key: "max_zones_per_region",
        slot: Slot::Number(|c| &mut c.max_zones_per_region),
    },
    Field {
        key: "max_services_per_federation",
        slot: Slot::Number(|c| &mut c.max_services_per_federation),
    },
    Field {
        key: "max_failover_tiers",
        slot: Slot::Number(|c| &mut c.max_failover_tiers),
    },
    Field {
        key: "max_tier_members",
        slot: Slot::Number(|c| &mut c.max_tier_members),
    },
    Field {
        key: "max_idempotent_methods",
        slot: Slot::Number(|c| &mut c.max_idempotent_methods),
    },
    Field {
        key: "max_text_bytes",
        slot: Slot::Number(|c| &mut c.max_text_bytes),
    },
    Field {
        key: "max_allowed_networks",
        slot: Slot::Number(|c| &mut c.max_allowed_networks),
    },
    Field {
        key: "lost_node_retention_seconds",
        slot: Slot::Number(|c| &mut c.lost_node_retention_seconds),
    },
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    #[error("expected KEY=VALUE, e.g. debounce_quiet_ms=200, got {0:?}")]
    NotAnAssignment(String),
    #[error("unknown configuration key {key:?}; valid keys: {}", valid_keys().join(", "))]
    UnknownKey { key: String },
    #[error("{key} takes a whole number from 0 to {max}, got {value:?}", max = u32::MAX)]
    BadNumber { key: &'static str, value: String },
    #[error("{key} takes true or false, got {value:?}")]
    BadFlag { key: &'static str, value: String },
}

/// Every key, in proto field order.
pub(super) fn valid_keys() -> Vec<&'static str> {
    FIELDS.iter().map(|f| f.key).collect()
}

/// One checked `KEY=VALUE`, ready to apply: the slot and a value of its type.
#[derive(Clone, Debug)]
pub enum Assignment {
    Number(fn(&mut Config) -> &mut u32, u32),
    Flag(fn(&mut Config) -> &mut bool, bool),
    Text(fn(&mut Config) -> &mut String, String),
}

impl FromStr for Assignment {
    type Err = AssignmentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (key, raw) = text
            .split_once('=')
            .ok_or_else(|| AssignmentError::NotAnAssignment(text.to_owned()))?;
        let field = FIELDS.iter().find(|f| f.key == key.trim()).ok_or_else(|| {
            AssignmentError::UnknownKey {
                key: key.to_owned(),
            }
        })?;
        Ok(match field.slot {
            Slot::Number(slot) => {
                let value = raw.trim().parse().map_err(|_| AssignmentError::BadNumber {
                    key: field.key,
                    value: raw.to_owned(),
                })?;
                Assignment::Number(slot, value)
            }
            Slot::Flag(slot) => {
                let value = raw.trim().parse().map_err(|_| AssignmentError::BadFlag {
                    key: field.key,
                    value: raw.to_owned(),
                })?;
                Assignment::Flag(slot, value)
            }
            Slot::Text(slot) => Assignment::Text(slot, raw.to_owned()),
        })
    }
}

impl Assignment {
    /// Writes the value into `config`; of several assignments to one key, the last wins.
    pub(super) fn apply(&self, config: &mut Config) {
        match self {
            Assignment::Number(slot, value) => *slot(config) = *value,
            Assignment::Flag(slot, value) => *slot(config) = *value,
            Assignment::Text(slot, value) => value.clone_into(slot(config)),
        }
    }
}

/// Every key with its value in `config`; an absent health-check message reads as zeros
/// (its defaults).
pub(crate) fn entries(config: &Config) -> Vec<(&'static str, Value)> {
    let mut scratch = config.clone();
    FIELDS
        .iter()
        .map(|field| {
            let value = match field.slot {
                Slot::Number(slot) => Value::from(*slot(&mut scratch)),
                Slot::Flag(slot) => Value::from(*slot(&mut scratch)),
                Slot::Text(slot) => Value::from(slot(&mut scratch).clone()),
            };
            (field.key, value)
        })
        .collect()
}

/// The keys whose values differ between `old` and `new`, as `key old → new`.
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<String> {
    entries(old)
        .into_iter()
        .zip(entries(new))
        .filter(|((_, before), (_, after))| before != after)
        .map(|((key, before), (_, after))| format!("{key} {before} → {after}"))
        .collect()
}

/// `config` as a JSON object shaped like the proto message (dotted keys nest).
pub(super) fn to_json(config: &Config) -> Map<String, Value> {
    let mut object = Map::new();
    for (key, value) in entries(config) {
        match key.split_once('.') {
            None => {
                object.insert(key.to_owned(), value);
            }
            Some((outer, inner)) => {
                let nested = object
                    .entry(outer)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(nested) = nested {
                    nested.insert(inner.to_owned(), value);
                }
            }
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assign(text: &str) -> Result<Config, AssignmentError> {
        let mut config = Config::default();
        text.parse::<Assignment>()?.apply(&mut config);
        Ok(config)
    }

    #[test]
    fn changes_name_each_changed_key_with_both_values() {
        let old = Config::default();
        let mut new = assign("debounce_quiet_ms=50").unwrap();
        "default_health_check.tcp_only=true"
            .parse::<Assignment>()
            .unwrap()
            .apply(&mut new);
        assert_eq!(
            changes(&old, &new),
            [
                "debounce_quiet_ms 0 → 50",
                "default_health_check.tcp_only false → true"
            ]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn top_level_and_nested_keys_assign() {
        assert_eq!(
            assign("debounce_quiet_ms=200").map(|c| c.debounce_quiet_ms),
            Ok(200)
        );
        let config = assign("default_health_check.interval_ms=1000").expect("valid");
        assert_eq!(
            config.default_health_check.map(|h| h.interval_ms),
            Some(1000)
        );
        let config = assign("default_health_check.tcp_only=true").expect("valid");
        assert_eq!(config.default_health_check.map(|h| h.tcp_only), Some(true));
        let config = assign("default_health_check.grpc_service=demo.v1.Echo").expect("valid");
        assert_eq!(
            config
                .default_health_check
                .map(|h| h.grpc_service)
                .as_deref(),
            Some("demo.v1.Echo")
        );
    }

    #[test]
    fn an_unknown_key_is_refused_listing_the_valid_ones() {
        let err = assign("debounce_ms=200").expect_err("unknown key");
        assert_eq!(
            err,
            AssignmentError::UnknownKey {
                key: "debounce_ms".into()
            }
        );
        let message = err.to_string();
        for key in valid_keys() {
            assert!(message.contains(key), "{message} lacks {key}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(
            assign("flap_threshold=five"),
            Err(AssignmentError::BadNumber {
                key: "flap_threshold",
                value: "five".into()
            })
        );
        assert!(matches!(
            assign("flap_window_ms=-1"),
            Err(AssignmentError::BadNumber { .. })
        ));
        assert!(matches!(
            assign("default_health_check.tcp_only=yes"),
            Err(AssignmentError::BadFlag { .. })
        ));
        assert_eq!(
            assign("flap_threshold"),
            Err(AssignmentError::NotAnAssignment("flap_threshold".into()))
        );
    }

    #[test]
    fn every_key_reads_back_what_was_written() {
        for key in valid_keys() {
            let mut config = Config::default();
            let (text, expected) = match entries(&config).into_iter().find(|(k, _)| *k == key) {
                Some((_, Value::Number(_))) => (format!("{key}=7"), Value::from(7)),
                Some((_, Value::Bool(_))) => (format!("{key}=true"), Value::from(true)),
                _ => (format!("{key}=x"), Value::from("x")),
            };
            text.parse::<Assignment>()
                .expect("valid")
                .apply(&mut config);
            let read = entries(&config).into_iter().find(|(k, _)| *k == key);
            assert_eq!(read, Some((key, expected)), "{key}");
        }
    }

    #[test]
    fn json_nests_the_health_check() {
        let config = assign("default_health_check.interval_ms=1000").expect("valid");
        let json = Value::Object(to_json(&config));
        assert_eq!(json["default_health_check"]["interval_ms"], 1000);
        assert_eq!(json["debounce_quiet_ms"], 0);
    }
}
