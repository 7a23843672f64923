//! Events: what happened to the federation, kept as a bounded history for operators
//! (`meridianctl events`).

use std::time::SystemTime;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use super::{ConversionError, time};

/// What kind of thing happened. Named in camelCase on the wire and in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    NodeRegistered,
    NodeDeregistered,
    NodeLost,
    NodeDraining,
    NodeFailed,
    NodeRecovered,
    NodeQuarantined,
    RegionChanged,
    ServiceChanged,
    FailoverStarted,
    FailoverCleared,
    ScalingDecided,
    ScalingExecuted,
    ScalingFailed,
    ConfigUpdated,
    LeaderElected,
    ProxyNack,
    /// A replica re-read its configuration file and tokens file and applied them.
    ConfigReloaded,
    /// A replica's configuration or tokens file was refused on reload; the old one serves.
    ConfigReloadFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 19] = [
        EventKind::NodeRegistered,
        EventKind::NodeDeregistered,
        EventKind::NodeLost,
        EventKind::NodeDraining,
        EventKind::NodeFailed,
        EventKind::NodeRecovered,
        EventKind::NodeQuarantined,
        EventKind::RegionChanged,
        EventKind::ServiceChanged,
        EventKind::FailoverStarted,
        EventKind::FailoverCleared,
        EventKind::ScalingDecided,
        EventKind::ScalingExecuted,
        EventKind::ScalingFailed,
        EventKind::ConfigUpdated,
        EventKind::LeaderElected,
        EventKind::ProxyNack,
        EventKind::ConfigReloaded,
        EventKind::ConfigReloadFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NodeRegistered => "nodeRegistered",
            EventKind::NodeDeregistered => "nodeDeregistered",
            EventKind::NodeLost => "nodeLost",
            EventKind::NodeDraining => "nodeDraining",
            EventKind::NodeFailed => "nodeFailed",
            EventKind::NodeRecovered => "nodeRecovered",
            EventKind::NodeQuarantined => "nodeQuarantined",
            EventKind::RegionChanged => "regionChanged",
            EventKind::ServiceChanged => "serviceChanged",
            EventKind::FailoverStarted => "failoverStarted",
            EventKind::FailoverCleared => "failoverCleared",
            EventKind::ScalingDecided => "scalingDecided",
            EventKind::ScalingExecuted => "scalingExecuted",
            EventKind::ScalingFailed => "scalingFailed",
            EventKind::ConfigUpdated => "configUpdated",
            EventKind::LeaderElected => "leaderElected",
            EventKind::ProxyNack => "proxyNack",
            EventKind::ConfigReloaded => "configReloaded",
            EventKind::ConfigReloadFailed => "configReloadFailed",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = ConversionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == name)
            .ok_or_else(|| ConversionError::UnknownName {
                field: "event.kind",
                value: name.to_owned(),
            })
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at: SystemTime,
    pub kind: EventKind,
    /// e.g. `node/eu-west-a-1`.
    pub subject: String,
    pub message: String,
    /// e.g. `lease expiry`, `operator:alice`.
    pub cause: String,
}

impl From<Event> for pb::Event {
    fn from(e: Event) -> Self {
        pb::Event {
            seq: e.seq,
            at: time::to_proto(Some(e.at)),
            kind: e.kind.as_str().to_owned(),
            subject: e.subject,
            message: e.message,
            cause: e.cause,
        }
    }
}

impl TryFrom<pb::Event> for Event {
    type Error = ConversionError;

    fn try_from(e: pb::Event) -> Result<Self, Self::Error> {
        let at = time::from_proto(e.at, "event.at")?;
        Ok(Event {
            seq: e.seq,
            at: at.ok_or(ConversionError::Missing { field: "event.at" })?,
            kind: e.kind.parse()?,
            subject: e.subject,
            message: e.message,
            cause: e.cause,
        })
    }
}
