//! A node: one backend gRPC server, where it is, what it serves, and its status.

use std::time::SystemTime;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{ConversionError, Labels, NodeStatus, RegistrationKind, time};

/// The weight a node gets when its spec says 0.
pub const DEFAULT_NODE_WEIGHT: u32 = 100;

/// One backend gRPC server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// `host:port`.
    pub address: String,
    pub federation: String,
    pub region: String,
    pub zone: String,
    /// Fully qualified gRPC service names.
    pub services: Vec<String>,
    /// 0 means [`DEFAULT_NODE_WEIGHT`].
    #[serde(default)]
    pub weight: u32,
    /// Concurrent requests it can take; 0 means unknown.
    #[serde(default)]
    pub capacity: u32,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub status: NodeStatus,
    #[serde(default)]
    pub status_reason: String,
    #[serde(default)]
    pub status_since: Option<SystemTime>,
    #[serde(default)]
    pub registration: RegistrationKind,
}

impl Node {
    /// The weight to route with.
    pub fn effective_weight(&self) -> u32 {
        if self.weight == 0 {
            DEFAULT_NODE_WEIGHT
        } else {
            self.weight
        }
    }

    /// Whether the node serves `service`.
    pub fn serves(&self, service: &str) -> bool {
        self.services.iter().any(|s| s == service)
    }
}

impl From<Node> for pb::Node {
    fn from(n: Node) -> Self {
        pb::Node {
            id: n.id,
            address: n.address,
            federation: n.federation,
            region: n.region,
            zone: n.zone,
            services: n.services,
            weight: n.weight,
            capacity: n.capacity,
            labels: n.labels.into_iter().collect(),
            status: pb::NodeStatus::from(n.status).into(),
            status_reason: n.status_reason,
            status_since: time::to_proto(n.status_since),
            registration: pb::RegistrationKind::from(n.registration).into(),
        }
    }
}

impl TryFrom<pb::Node> for Node {
    type Error = ConversionError;

    fn try_from(n: pb::Node) -> Result<Self, Self::Error> {
        Ok(Node {
            status: NodeStatus::from_proto(n.status, "node.status")?,
            status_since: time::from_proto(n.status_since, "node.status_since")?,
            registration: RegistrationKind::from_proto(n.registration, "node.registration")?,
            id: n.id,
            address: n.address,
            federation: n.federation,
            region: n.region,
            zone: n.zone,
            services: n.services,
            weight: n.weight,
            capacity: n.capacity,
            labels: n.labels.into_iter().collect(),
            status_reason: n.status_reason,
        })
    }
}
