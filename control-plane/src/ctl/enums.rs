//! The names of `meridian.v1` enums as operators see them, both ways: lowercase names in
//! tables and JSON (`healthy`, `least_connections`), and flag values parsed back into the
//! proto enums.
//!
//! Node statuses and algorithms take their names from the domain types in
//! `meridian_shared::domain`, so the CLI, the stored JSON and the docs cannot drift apart.

use std::str::FromStr;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use meridian_proto::v1 as pb;
use meridian_shared::domain::{Algorithm, EventKind, NodeStatus};

/// Every node status, in the order of the proto enum.
const STATUSES: [NodeStatus; 7] = [
    NodeStatus::Unknown,
    NodeStatus::Healthy,
    NodeStatus::Unhealthy,
    NodeStatus::Draining,
    NodeStatus::Lost,
    NodeStatus::Failed,
    NodeStatus::Quarantined,
];

/// The name of a `NodeStatus` value; a value this build does not know prints as its number.
pub(super) fn node_status_name(value: i32) -> String {
    STATUSES
        .into_iter()
        .find(|s| pb::NodeStatus::from(*s) as i32 == value)
        .map_or_else(|| value.to_string(), |s| s.as_str().to_owned())
}

/// The name of an `Algorithm` value; unspecified is the default, `least_connections`.
pub(super) fn algorithm_name(value: i32) -> String {
    if value == pb::Algorithm::Unspecified as i32 {
        return Algorithm::default().as_str().to_owned();
    }
    Algorithm::ALL
        .into_iter()
        .find(|a| pb::Algorithm::from(*a) as i32 == value)
        .map_or_else(|| value.to_string(), |a| a.as_str().to_owned())
}

/// The name of a `RegistrationKind` value; unspecified counts as `operator`.
pub(super) fn registration_name(value: i32) -> String {
    match pb::RegistrationKind::try_from(value) {
        Ok(pb::RegistrationKind::Unspecified | pb::RegistrationKind::Operator) => "operator".into(),
        Ok(pb::RegistrationKind::SelfRegistered) => "self_registered".into(),
        Err(_) => value.to_string(),
    }
}

/// Parses `--status NAME`, listing the names in `--help`.
pub(super) fn status_parser() -> impl TypedValueParser<Value = pb::NodeStatus> {
    PossibleValuesParser::new(STATUSES.map(NodeStatus::as_str)).map(|name| {
        let status = STATUSES
            .into_iter()
            .find(|s| s.as_str() == name)
            .expect("PossibleValuesParser only passes listed names");
        pb::NodeStatus::from(status)
    })
}

/// Parses `--algorithm NAME`, listing the names in `--help`.
pub(super) fn algorithm_parser() -> impl TypedValueParser<Value = pb::Algorithm> {
    PossibleValuesParser::new(Algorithm::ALL.map(Algorithm::as_str))
        .try_map(|name| Algorithm::from_str(&name).map(pb::Algorithm::from))
}

/// Parses `--kind NAME` (camelCase event kinds), listing the names in `--help`.
pub(super) fn event_kind_parser() -> PossibleValuesParser {
    PossibleValuesParser::new(EventKind::ALL.map(EventKind::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_statuses_print_as_lowercase_names() {
        assert_eq!(node_status_name(pb::NodeStatus::Healthy as i32), "healthy");
        assert_eq!(
            node_status_name(pb::NodeStatus::Quarantined as i32),
            "quarantined"
        );
        assert_eq!(
            node_status_name(pb::NodeStatus::Unspecified as i32),
            "unknown"
        );
        assert_eq!(node_status_name(42), "42");
    }

    #[test]
    fn algorithms_print_as_snake_case_names() {
        assert_eq!(
            algorithm_name(pb::Algorithm::LeastConnections as i32),
            "least_connections"
        );
        assert_eq!(
            algorithm_name(pb::Algorithm::ConsistentHash as i32),
            "consistent_hash"
        );
        assert_eq!(
            algorithm_name(pb::Algorithm::Unspecified as i32),
            "least_connections"
        );
        assert_eq!(algorithm_name(99), "99");
    }

    #[test]
    fn registration_kinds_print_as_lowercase_names() {
        assert_eq!(registration_name(0), "operator");
        assert_eq!(
            registration_name(pb::RegistrationKind::SelfRegistered as i32),
            "self_registered"
        );
    }

    #[test]
    fn every_status_and_algorithm_name_round_trips() {
        for status in STATUSES {
            let value = pb::NodeStatus::from(status) as i32;
            assert_eq!(node_status_name(value), status.as_str());
        }
        for algorithm in Algorithm::ALL {
            let value = pb::Algorithm::from(algorithm) as i32;
            assert_eq!(algorithm_name(value), algorithm.as_str());
        }
    }
}
