//! The closed sets of the topology: node status, how a node registered, and the routing
//! algorithms. Stored in JSON by their snake_case names; in proto as the enum numbers.

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::ConversionError;

/// A node's status, as written by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// No health check has completed yet; routable.
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    /// A self-registered node whose lease lapsed.
    Lost,
    Failed,
    Quarantined,
}

impl NodeStatus {
    /// Whether proxies may send new requests to a node in this status.
    pub fn is_routable(self) -> bool {
        matches!(self, NodeStatus::Unknown | NodeStatus::Healthy)
    }

    /// Whether this status holds until it is lifted on purpose: an operator's drain or
    /// fail, or a flapping node's quarantine. A node in one of them keeps it when it
    /// registers again and is not marked lost when its lease lapses (it takes no traffic
    /// either way), so restarting a node does not undo an operator's decision.
    pub fn is_held(self) -> bool {
        matches!(
            self,
            NodeStatus::Draining | NodeStatus::Failed | NodeStatus::Quarantined
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Unknown => "unknown",
            NodeStatus::Healthy => "healthy",
            NodeStatus::Unhealthy => "unhealthy",
            NodeStatus::Draining => "draining",
            NodeStatus::Lost => "lost",
            NodeStatus::Failed => "failed",
            NodeStatus::Quarantined => "quarantined",
        }
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<NodeStatus> for pb::NodeStatus {
    fn from(status: NodeStatus) -> Self {
        match status {
            NodeStatus::Unknown => pb::NodeStatus::Unspecified,
            NodeStatus::Healthy => pb::NodeStatus::Healthy,
            NodeStatus::Unhealthy => pb::NodeStatus::Unhealthy,
            NodeStatus::Draining => pb::NodeStatus::Draining,
            NodeStatus::Lost => pb::NodeStatus::Lost,
            NodeStatus::Failed => pb::NodeStatus::Failed,
            NodeStatus::Quarantined => pb::NodeStatus::Quarantined,
        }
    }
}

impl NodeStatus {
    pub(crate) fn from_proto(value: i32, field: &'static str) -> Result<Self, ConversionError> {
        let status = pb::NodeStatus::try_from(value)
            .map_err(|_| ConversionError::UnknownEnum { field, value })?;
        Ok(match status {
            pb::NodeStatus::Unspecified => NodeStatus::Unknown,
            pb::NodeStatus::Healthy => NodeStatus::Healthy,
            pb::NodeStatus::Unhealthy => NodeStatus::Unhealthy,
            pb::NodeStatus::Draining => NodeStatus::Draining,
            pb::NodeStatus::Lost => NodeStatus::Lost,
            pb::NodeStatus::Failed => NodeStatus::Failed,
            pb::NodeStatus::Quarantined => NodeStatus::Quarantined,
        })
    }
}

/// How a node came to be in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationKind {
    /// Through the Admin API; no lease.
    #[default]
    Operator,
    /// Through NodeRegistry; liveness bound to a lease.
    #[serde(rename = "self")]
    SelfRegistered,
}

impl From<RegistrationKind> for pb::RegistrationKind {
    fn from(kind: RegistrationKind) -> Self {
        match kind {
            RegistrationKind::Operator => pb::RegistrationKind::Operator,
            RegistrationKind::SelfRegistered => pb::RegistrationKind::SelfRegistered,
        }
    }
}

impl RegistrationKind {
    pub(crate) fn from_proto(value: i32, field: &'static str) -> Result<Self, ConversionError> {
        let kind = pb::RegistrationKind::try_from(value)
            .map_err(|_| ConversionError::UnknownEnum { field, value })?;
        Ok(match kind {
            pb::RegistrationKind::Unspecified | pb::RegistrationKind::Operator => {
                RegistrationKind::Operator
            }
            pb::RegistrationKind::SelfRegistered => RegistrationKind::SelfRegistered,
        })
    }
}

/// How a proxy picks an endpoint for a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RoundRobin,
    Weighted,
    Random,
    #[default]
    LeastConnections,
    Adaptive,
    Geographic,
    ConsistentHash,
}

impl Algorithm {
    /// Every algorithm, in documentation order.
    pub const ALL: [Algorithm; 7] = [
        Algorithm::RoundRobin,
        Algorithm::Weighted,
        Algorithm::Random,
        Algorithm::LeastConnections,
        Algorithm::Adaptive,
        Algorithm::Geographic,
        Algorithm::ConsistentHash,
    ];

    /// The snake_case name operators type (`meridianctl services set --algorithm ...`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Weighted => "weighted",
            Algorithm::Random => "random",
            Algorithm::LeastConnections => "least_connections",
            Algorithm::Adaptive => "adaptive",
            Algorithm::Geographic => "geographic",
            Algorithm::ConsistentHash => "consistent_hash",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = ConversionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == name)
            .ok_or_else(|| ConversionError::UnknownName {
                field: "algorithm",
                value: name.to_owned(),
            })
    }
}

impl From<Algorithm> for pb::Algorithm {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::RoundRobin => pb::Algorithm::RoundRobin,
            Algorithm::Weighted => pb::Algorithm::Weighted,
            Algorithm::Random => pb::Algorithm::Random,
            Algorithm::LeastConnections => pb::Algorithm::LeastConnections,
            Algorithm::Adaptive => pb::Algorithm::Adaptive,
            Algorithm::Geographic => pb::Algorithm::Geographic,
            Algorithm::ConsistentHash => pb::Algorithm::ConsistentHash,
        }
    }
}

impl Algorithm {
    pub(crate) fn from_proto(value: i32, field: &'static str) -> Result<Self, ConversionError> {
        let algorithm = pb::Algorithm::try_from(value)
            .map_err(|_| ConversionError::UnknownEnum { field, value })?;
        Ok(match algorithm {
            pb::Algorithm::Unspecified | pb::Algorithm::LeastConnections => {
                Algorithm::LeastConnections
            }
            pb::Algorithm::RoundRobin => Algorithm::RoundRobin,
            pb::Algorithm::Weighted => Algorithm::Weighted,
            pb::Algorithm::Random => Algorithm::Random,
            pb::Algorithm::Adaptive => Algorithm::Adaptive,
            pb::Algorithm::Geographic => Algorithm::Geographic,
            pb::Algorithm::ConsistentHash => Algorithm::ConsistentHash,
        })
    }
}
