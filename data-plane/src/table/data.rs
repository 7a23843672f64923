//! The routing table as data: what the control plane sent, applied update by update.
//! A snapshot replaces everything; a delta applies on top of the version it names. An
//! update that cannot be applied is refused with a reason, and the previous data stays:
//! a delta on another base, an unknown enum value, a snapshot for another federation than
//! the proxy's, or anything that would take the proxy back to an older version.
//!
//! Versions are the control plane's store revisions, so one version always names the
//! same content. An update *at* the version held is therefore accepted (it changes
//! nothing): a control-plane replica that could not resume a reconnecting proxy from its
//! held version sends a snapshot of its current table, and once it has caught up that can
//! be exactly the held version. Refusing it would record a spurious NACK and leave the
//! session without an acknowledged base for its next delta.

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
    #[error(
        "the control plane sent a table for federation {sent:?}; this proxy serves {served:?} (--federation)"
    )]
    ForeignFederation { sent: String, served: String },
    #[error(
        "the control plane sent a table without a federation; this proxy serves {served:?} (--federation)"
    )]
    NoFederation { served: String },
    #[error(
        "the control plane sent version {sent} but this proxy holds the newer version {held}; \
         keeping it (a control-plane replica is behind, or its store was restored from an older backup)"
    )]
    Older { sent: u64, held: u64 },
    #[error("invalid entry: {0}")]
    Invalid(#[from] ConversionError),
    #[error("the update was empty")]
    Empty,
}

impl TableData {
    /// The data after `update` for a proxy serving `federation`, or why it cannot be
    /// applied.
    pub fn apply(&self, update: Update, federation: &str) -> Result<TableData, ApplyError> {
        match update {
            Update::Snapshot(table) => {
                self.refuse_older(table.version)?;
                refuse_foreign(&table.federation, federation)?;
                Self::from_snapshot(table)
            }
            Update::Delta(delta) => {
                self.refuse_older(delta.version)?;
                self.with_delta(delta)
            }
        }
    }

    /// Going back to an older version is refused; the version held is accepted (see the
    /// module doc).
    fn refuse_older(&self, sent: u64) -> Result<(), ApplyError> {
        if sent < self.version {
            return Err(ApplyError::Older {
                sent,
                held: self.version,
            });
        }
        Ok(())
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

/// A snapshot must name the proxy's federation. The control plane always fills it in (with
/// the federation of the proxy's Hello), so an empty one is refused too.
fn refuse_foreign(sent: &str, served: &str) -> Result<(), ApplyError> {
    match sent {
        "" => Err(ApplyError::NoFederation {
            served: served.to_owned(),
        }),
        sent if sent != served => Err(ApplyError::ForeignFederation {
            sent: sent.to_owned(),
            served: served.to_owned(),
        }),
        _ => Ok(()),
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

    fn snapshot(version: u64, federation: &str) -> Update {
        Update::Snapshot(pb::RoutingTable {
            version,
            federation: federation.into(),
            nodes: vec![node("a"), node("b")],
            ..Default::default()
        })
    }

    #[test]
    fn deltas_apply_on_their_base_only() {
        let data = TableData::default()
            .apply(snapshot(5, "prod"), "prod")
            .unwrap();
        let delta = pb::RoutingDelta {
            version: 7,
            base_version: 5,
            upserted_nodes: vec![node("c")],
            removed_nodes: vec!["a".into()],
            ..Default::default()
        };
        let next = data.apply(Update::Delta(delta.clone()), "prod").unwrap();
        assert_eq!(next.version, 7);
        assert_eq!(next.federation, "prod");
        assert_eq!(next.nodes.keys().collect::<Vec<_>>(), ["b", "c"]);
        let err = next.apply(Update::Delta(delta), "prod").unwrap_err();
        assert!(
            matches!(err, ApplyError::WrongBase { base: 5, held: 7 }),
            "{err}"
        );
    }

    #[test]
    fn an_invalid_entry_refuses_the_whole_update() {
        let bad = pb::RoutingTable {
            version: 9,
            federation: "prod".into(),
            nodes: vec![pb::Node {
                id: "x".into(),
                status: 77,
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = TableData::default()
            .apply(Update::Snapshot(bad), "prod")
            .unwrap_err();
        assert!(err.to_string().contains("node.status"), "{err}");
    }

    #[test]
    fn a_snapshot_for_another_federation_is_refused() {
        let err = TableData::default()
            .apply(snapshot(3, "staging"), "prod")
            .unwrap_err();
        assert!(matches!(err, ApplyError::ForeignFederation { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "the control plane sent a table for federation \"staging\"; this proxy serves \"prod\" (--federation)"
        );
    }

    #[test]
    fn a_snapshot_without_a_federation_is_refused() {
        let err = TableData::default()
            .apply(snapshot(3, ""), "prod")
            .unwrap_err();
        assert!(matches!(err, ApplyError::NoFederation { .. }), "{err}");
    }

    #[test]
    fn a_snapshot_older_than_the_held_version_is_refused() {
        let held = TableData::default()
            .apply(snapshot(5, "prod"), "prod")
            .unwrap();
        let err = held.apply(snapshot(4, "prod"), "prod").unwrap_err();
        assert!(
            matches!(err, ApplyError::Older { sent: 4, held: 5 }),
            "{err}"
        );
    }

    #[test]
    fn a_delta_to_an_older_version_is_refused() {
        let held = TableData::default()
            .apply(snapshot(5, "prod"), "prod")
            .unwrap();
        let backwards = pb::RoutingDelta {
            version: 2,
            base_version: 5,
            removed_nodes: vec!["a".into()],
            ..Default::default()
        };
        let err = held.apply(Update::Delta(backwards), "prod").unwrap_err();
        assert!(
            matches!(err, ApplyError::Older { sent: 2, held: 5 }),
            "{err}"
        );
    }

    #[test]
    fn a_snapshot_at_the_held_version_is_accepted() {
        // What a replica that could not resume a reconnecting proxy may send once it has
        // caught up with the proxy's version.
        let held = TableData::default()
            .apply(snapshot(5, "prod"), "prod")
            .unwrap();
        let again = held.apply(snapshot(5, "prod"), "prod").unwrap();
        assert_eq!(again, held);
    }
}
