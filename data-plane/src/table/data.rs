//! The routing table as data: what the control plane sent, applied update by update.
//! A snapshot replaces everything; a delta applies on top of the version it names. An
//! update that cannot be applied (a delta on another base, an unknown enum value) is
//! refused with a reason, and the previous data stays.

use std::collections::BTreeMap;

use meridian_proto::v1 as pb;
use meridian_proto::v1::stream_routes_response::Update;
use meridian_shared::domain::{ActiveFailover, ConversionError, Node, Region, ServicePolicy};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableData {
    pub version: u64,
    pub federation: String,
    pub regions: BTreeMap<String, Region>,
    pub services: BTreeMap<String, ServicePolicy>,
    pub nodes: BTreeMap<String, Node>,
    pub failovers: BTreeMap<String, ActiveFailover>,
}

/// Why an update was refused (sent back in the NACK).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("delta on version {base} but this proxy holds version {held}")]
    WrongBase { base: u64, held: u64 },
    #[error("invalid entry: {0}")]
    Invalid(#[from] ConversionError),
    #[error("the update was empty")]
    Empty,
}

impl TableData {
    /// The data after `update`, or why it cannot be applied.
    pub fn apply(&self, update: Update) -> Result<TableData, ApplyError> {
        match update {
            Update::Snapshot(table) => Self::from_snapshot(table),
            Update::Delta(delta) => self.with_delta(delta),
        }
    }

    pub fn from_snapshot(table: pb::RoutingTable) -> Result<TableData, ApplyError> {
        Ok(TableData {
            version: table.version,
            federation: table.federation,
            regions: keyed(table.regions, Region::try_from, |r| r.name.clone())?,
            services: keyed(table.services, ServicePolicy::try_from, |s| s.name.clone())?,
            nodes: keyed(table.nodes, Node::try_from, |n| n.id.clone())?,
            failovers: keyed(table.failovers, ActiveFailover::try_from, |f| {
                f.service.clone()
            })?,
        })
    }

    fn with_delta(&self, delta: pb::RoutingDelta) -> Result<TableData, ApplyError> {
        if delta.base_version != self.version {
            return Err(ApplyError::WrongBase {
                base: delta.base_version,
                held: self.version,
            });
        }
        let mut next = self.clone();
        next.version = delta.version;
        merge(
            &mut next.regions,
            delta.removed_regions,
            delta.upserted_regions,
            Region::try_from,
            |r| r.name.clone(),
        )?;
        merge(
            &mut next.services,
            delta.removed_services,
            delta.upserted_services,
            ServicePolicy::try_from,
            |s| s.name.clone(),
        )?;
        merge(
            &mut next.nodes,
            delta.removed_nodes,
            delta.upserted_nodes,
            Node::try_from,
            |n| n.id.clone(),
        )?;
        merge(
            &mut next.failovers,
            delta.removed_failovers,
            delta.upserted_failovers,
            ActiveFailover::try_from,
            |f| f.service.clone(),
        )?;
        Ok(next)
    }

    /// The data as a snapshot message (for the last-known-good file).
    pub fn to_snapshot(&self) -> pb::RoutingTable {
        pb::RoutingTable {
            version: self.version,
            federation: self.federation.clone(),
            regions: self.regions.values().cloned().map(Into::into).collect(),
            services: self.services.values().cloned().map(Into::into).collect(),
            nodes: self.nodes.values().cloned().map(Into::into).collect(),
            failovers: self.failovers.values().cloned().map(Into::into).collect(),
            generated_at: None,
        }
    }
}

fn keyed<P, T>(
    items: Vec<P>,
    convert: impl Fn(P) -> Result<T, ConversionError>,
    key: impl Fn(&T) -> String,
) -> Result<BTreeMap<String, T>, ConversionError> {
    items
        .into_iter()
        .map(|item| {
            let value = convert(item)?;
            Ok((key(&value), value))
        })
        .collect()
}

fn merge<P, T>(
    map: &mut BTreeMap<String, T>,
    removed: Vec<String>,
    upserted: Vec<P>,
    convert: impl Fn(P) -> Result<T, ConversionError>,
    key: impl Fn(&T) -> String,
) -> Result<(), ConversionError> {
    for name in removed {
        map.remove(&name);
    }
    for item in upserted {
        let value = convert(item)?;
        map.insert(key(&value), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> pb::Node {
        pb::Node {
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn deltas_apply_on_their_base_only() {
        let snapshot = pb::RoutingTable {
            version: 5,
            nodes: vec![node("a"), node("b")],
            ..Default::default()
        };
        let data = TableData::default()
            .apply(Update::Snapshot(snapshot))
            .unwrap();
        let delta = pb::RoutingDelta {
            version: 7,
            base_version: 5,
            upserted_nodes: vec![node("c")],
            removed_nodes: vec!["a".into()],
            ..Default::default()
        };
        let next = data.apply(Update::Delta(delta.clone())).unwrap();
        assert_eq!(next.version, 7);
        assert_eq!(next.nodes.keys().collect::<Vec<_>>(), ["b", "c"]);
        let err = next.apply(Update::Delta(delta)).unwrap_err();
        assert!(
            matches!(err, ApplyError::WrongBase { base: 5, held: 7 }),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_entry_refuses_the_whole_update() {
        let bad = pb::RoutingTable {
            version: 9,
            nodes: vec![pb::Node {
                id: "x".into(),
                status: 77,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = TableData::default()
            .apply(Update::Snapshot(bad))
            .unwrap_err();
        assert!(err.to_string().contains("node.status"), "{err}");
    }
}
