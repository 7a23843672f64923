//! One federation's routing table as plain data, built from the topology state, turned
//! into a `RoutingTable` snapshot or diffed against an older table into a `RoutingDelta`.
//!
//! What goes in: the federation's regions, service policies, failovers, and nodes with
//! their status. Draining and unhealthy nodes stay (the proxy decides); nodes that are
//! `lost`, or self-registered nodes whose lease is gone, are left out, as are removed ones.

use std::collections::BTreeMap;
use std::time::SystemTime;

use meridian_proto::v1 as pb;
use meridian_shared::domain::{
    ActiveFailover, Node, NodeStatus, Region, RegistrationKind, ServicePolicy,
};

use crate::topology::TopologyState;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableContent {
    pub regions: BTreeMap<String, Region>,
    pub services: BTreeMap<String, ServicePolicy>,
    pub nodes: BTreeMap<String, Node>,
    pub failovers: BTreeMap<String, ActiveFailover>,
}

impl TableContent {
    /// The table of `federation` in `state`.
    pub fn build(state: &TopologyState, federation: &str) -> Self {
        let in_table = |node: &Node| {
            node.federation == federation
                && node.status != NodeStatus::Lost
                && (node.registration != RegistrationKind::SelfRegistered
                    || state.liveness.contains_key(&node.id))
        };
        let services: BTreeMap<String, ServicePolicy> = state
            .services
            .iter()
            .filter(|(_, s)| s.value.federation == federation)
            .map(|(name, s)| (name.clone(), routed_policy(&s.value)))
            .collect();
        TableContent {
            regions: state
                .regions
                .iter()
                .filter(|(_, r)| r.value.federation == federation)
                .map(|(name, r)| (name.clone(), r.value.clone()))
                .collect(),
            nodes: state
                .nodes
                .iter()
                .filter(|(_, n)| in_table(&n.value))
                .map(|(id, n)| (id.clone(), n.value.clone()))
                .collect(),
            failovers: state
                .failovers
                .iter()
                .filter(|(service, _)| services.contains_key(*service))
                .map(|(service, f)| (service.clone(), f.value.clone()))
                .collect(),
            services,
        }
    }

    /// The number of entries, for choosing between a delta and a snapshot.
    pub fn len(&self) -> usize {
        self.regions.len() + self.services.len() + self.nodes.len() + self.failovers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole table as a snapshot message.
    pub fn snapshot(&self, federation: &str, version: u64) -> pb::RoutingTable {
        pb::RoutingTable {
            version,
            federation: federation.to_owned(),
            regions: self.regions.values().cloned().map(Into::into).collect(),
            services: self.services.values().cloned().map(Into::into).collect(),
            nodes: self.nodes.values().cloned().map(Into::into).collect(),
            failovers: self.failovers.values().cloned().map(Into::into).collect(),
            generated_at: Some(SystemTime::now().into()),
        }
    }

    /// What turns `base` (at `base_version`) into `self` (at `version`).
    pub fn delta_from(
        &self,
        base: &TableContent,
        base_version: u64,
        version: u64,
    ) -> pb::RoutingDelta {
        let (upserted_regions, removed_regions) = diff(&base.regions, &self.regions);
        let (upserted_services, removed_services) = diff(&base.services, &self.services);
        let (upserted_nodes, removed_nodes) = diff(&base.nodes, &self.nodes);
        let (upserted_failovers, removed_failovers) = diff(&base.failovers, &self.failovers);
        pb::RoutingDelta {
            version,
            base_version,
            upserted_regions,
            removed_regions,
            upserted_services,
            removed_services,
            upserted_nodes,
            removed_nodes,
            upserted_failovers,
            removed_failovers,
            generated_at: Some(SystemTime::now().into()),
        }
    }
}

/// Entries of `new` that are new or changed, and names in `old` no longer in `new`.
fn diff<T, P>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> (Vec<P>, Vec<String>)
where
    T: Clone + PartialEq + Into<P>,
{
    let upserted = new
        .iter()
        .filter(|(name, value)| old.get(*name) != Some(*value))
        .map(|(_, value)| value.clone().into())
        .collect();
    let removed = old
        .keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect();
    (upserted, removed)
}

/// How many entries a delta carries.
pub fn delta_len(delta: &pb::RoutingDelta) -> usize {
    delta.upserted_regions.len()
        + delta.removed_regions.len()
        + delta.upserted_services.len()
        + delta.removed_services.len()
        + delta.upserted_nodes.len()
        + delta.removed_nodes.len()
        + delta.upserted_failovers.len()
        + delta.removed_failovers.len()
}

/// The part of a service policy proxies route with: everything but scaling, which only
/// the control plane acts on (and whose actuator commands and URLs proxies have no
/// business seeing). A change to scaling alone therefore sends no update.
fn routed_policy(policy: &ServicePolicy) -> ServicePolicy {
    ServicePolicy {
        scaling: Default::default(),
        ..policy.clone()
    }
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::Federation;

    use super::*;
    use crate::topology::{Liveness, Stored};

    fn stored<T>(value: T) -> Stored<T> {
        Stored {
            value,
            mod_revision: 1,
        }
    }

    fn node(
        id: &str,
        federation: &str,
        registration: RegistrationKind,
        status: NodeStatus,
    ) -> Node {
        Node {
            id: id.into(),
            federation: federation.into(),
            region: "r".into(),
            registration,
            status,
            ..Default::default()
        }
    }

    fn state() -> TopologyState {
        let mut s = TopologyState::default();
        s.federations.insert(
            "prod".into(),
            stored(Federation {
                name: "prod".into(),
                ..Default::default()
            }),
        );
        for n in [
            node(
                "ok",
                "prod",
                RegistrationKind::Operator,
                NodeStatus::Healthy,
            ),
            node(
                "draining",
                "prod",
                RegistrationKind::Operator,
                NodeStatus::Draining,
            ),
            node(
                "lost",
                "prod",
                RegistrationKind::SelfRegistered,
                NodeStatus::Lost,
            ),
            node(
                "leased",
                "prod",
                RegistrationKind::SelfRegistered,
                NodeStatus::Unknown,
            ),
            node(
                "lapsed",
                "prod",
                RegistrationKind::SelfRegistered,
                NodeStatus::Unknown,
            ),
            node(
                "other",
                "staging",
                RegistrationKind::Operator,
                NodeStatus::Healthy,
            ),
        ] {
            s.nodes.insert(n.id.clone(), stored(n));
        }
        let liveness = Liveness {
            lease: 7,
            ttl_seconds: 10,
            registered_at: SystemTime::UNIX_EPOCH,
            owner: "node:test".into(),
            held_by: "cp-a".into(),
        };
        s.liveness.insert("leased".into(), stored(liveness));
        s
    }

    #[test]
    fn table_keeps_status_but_drops_lost_and_lapsed_nodes_and_other_federations() {
        let table = TableContent::build(&state(), "prod");
        let ids: Vec<&str> = table.nodes.keys().map(String::as_str).collect();
        assert_eq!(ids, ["draining", "leased", "ok"]);
        assert_eq!(table.nodes["draining"].status, NodeStatus::Draining);
    }

    #[test]
    fn delta_carries_exactly_the_changes() {
        let old = TableContent::build(&state(), "prod");
        let mut s = state();
        s.nodes.remove("ok");
        s.nodes.get_mut("draining").unwrap().value.status = NodeStatus::Healthy;
        let new = TableContent::build(&s, "prod");
        let delta = new.delta_from(&old, 5, 9);
        assert_eq!((delta.base_version, delta.version), (5, 9));
        assert_eq!(delta.removed_nodes, ["ok"]);
        let upserted: Vec<&str> = delta.upserted_nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(upserted, ["draining"]);
        assert_eq!(delta_len(&delta), 2);
        assert_eq!(delta_len(&old.delta_from(&old, 5, 5)), 0);
    }
}
