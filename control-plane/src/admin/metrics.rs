//! `Admin/GetGlobalMetrics`: the federation at a glance. Counts come from this replica's
//! followed topology, proxies from every replica's proxy records (in sync = acknowledged
//! the federation's current table version), traffic per service and region from the
//! aggregated load reports ([`LoadView`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use meridian_proto::v1 as pb;
use meridian_shared::domain::NodeStatus;
use tokio::sync::watch;
use tonic::Status;

use crate::discovery::proxies::{ProxyRecord, ProxyRegistry};
use crate::routing::Published;
use crate::scaling::ServiceLoad;
use crate::scaling::load::LoadView;
use crate::topology::{StateHandle, TopologyState};

/// What global metrics are computed from besides the topology.
#[derive(Clone)]
pub struct MetricsSources {
    pub load: LoadView,
    pub tables: watch::Receiver<Arc<Published>>,
}

/// Answers `GetGlobalMetrics` for `federation` (empty: all).
pub async fn global_metrics(
    state: &StateHandle,
    proxies: &ProxyRegistry,
    sources: &MetricsSources,
    federation: &str,
) -> Result<pb::GlobalMetrics, Status> {
    let filter = (!federation.is_empty()).then_some(federation);
    if let Some(name) = filter
        && !state.borrow().federations.contains_key(name)
    {
        return Err(Status::not_found(format!(
            "federation {name:?} does not exist (meridianctl federations list)"
        )));
    }
    let records = proxies.list().await;
    let traffic = sources.load.services_by_region().await;
    let versions = current_versions(&sources.tables.borrow());
    let state = state.borrow();
    let mut metrics = topology_counts(&state, filter);
    (metrics.proxies_connected, metrics.proxies_in_sync) =
        proxy_counts(&records, &versions, filter);
    metrics.window_ms = u32::try_from(sources.load.window().as_millis()).unwrap_or(u32::MAX);
    metrics.at = Some(SystemTime::now().into());
    metrics.traffic = traffic_rows(&traffic, &state, filter);
    Ok(metrics)
}

fn current_versions(published: &Published) -> BTreeMap<String, u64> {
    published
        .tables
        .iter()
        .map(|(federation, table)| (federation.clone(), table.version))
        .collect()
}

/// Federations, regions, services and nodes by status.
fn topology_counts(state: &TopologyState, filter: Option<&str>) -> pb::GlobalMetrics {
    let wanted = |federation: &str| filter.is_none_or(|f| f == federation);
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let nodes = state
        .nodes
        .values()
        .map(|n| &n.value)
        .filter(|n| wanted(&n.federation));
    let mut services: BTreeSet<&str> = state
        .services
        .values()
        .filter(|s| wanted(&s.value.federation))
        .map(|s| s.value.name.as_str())
        .collect();
    let mut metrics = pb::GlobalMetrics {
        federations: count(state.federations.keys().filter(|f| wanted(f)).count()),
        regions: count(
            state
                .regions
                .values()
                .filter(|r| wanted(&r.value.federation))
                .count(),
        ),
        ..Default::default()
    };
    for node in nodes {
        services.extend(node.services.iter().map(String::as_str));
        let counter = match node.status {
            NodeStatus::Healthy | NodeStatus::Unknown => &mut metrics.nodes_active,
            NodeStatus::Unhealthy | NodeStatus::Failed | NodeStatus::Quarantined => {
                &mut metrics.nodes_unhealthy
            }
            NodeStatus::Lost => &mut metrics.nodes_lost,
            NodeStatus::Draining => &mut metrics.nodes_draining,
        };
        *counter += 1;
    }
    metrics.services = count(services.len());
    metrics
}

/// Proxies connected to any replica, and of those, how many acknowledged their
/// federation's current table version.
fn proxy_counts(
    records: &[ProxyRecord],
    versions: &BTreeMap<String, u64>,
    filter: Option<&str>,
) -> (u32, u32) {
    let mut connected = 0u32;
    let mut in_sync = 0u32;
    for record in records {
        if filter.is_some_and(|f| f != record.federation) {
            continue;
        }
        connected += 1;
        if versions
            .get(&record.federation)
            .is_some_and(|&version| record.acked_version == version)
        {
            in_sync += 1;
        }
    }
    (connected, in_sync)
}

/// One row per (service, region) that has traffic or routable nodes, traffic first.
fn traffic_rows(
    traffic: &BTreeMap<(String, String), ServiceLoad>,
    state: &TopologyState,
    filter: Option<&str>,
) -> Vec<pb::ServiceRegionMetrics> {
    let region_wanted = |region: &str| match filter {
        None => true,
        Some(f) => state
            .regions
            .get(region)
            .is_some_and(|r| r.value.federation == f),
    };
    let mut routable: BTreeMap<(String, String), u32> = BTreeMap::new();
    for node in state.nodes.values().map(|n| &n.value) {
        if !node.status.is_routable() {
            continue;
        }
        for service in &node.services {
            *routable
                .entry((service.clone(), node.region.clone()))
                .or_default() += 1;
        }
    }
    let mut rows: BTreeMap<(String, String), pb::ServiceRegionMetrics> = BTreeMap::new();
    for ((service, region), load) in traffic {
        if !region_wanted(region) {
            continue;
        }
        rows.insert(
            (service.clone(), region.clone()),
            row(service, region, Some(load)),
        );
    }
    for ((service, region), count) in routable {
        if !region_wanted(&region) {
            continue;
        }
        rows.entry((service.clone(), region.clone()))
            .or_insert_with(|| row(&service, &region, None))
            .nodes_routable = count;
    }
    rows.into_values().collect()
}

fn row(service: &str, region: &str, load: Option<&ServiceLoad>) -> pb::ServiceRegionMetrics {
    let load = load.cloned().unwrap_or_default();
    pb::ServiceRegionMetrics {
        service: service.to_owned(),
        region: region.to_owned(),
        calls_per_second: load.calls_per_second,
        error_rate: load.error_rate,
        latency_p50_ms: load.latency_p50_ms.unwrap_or(0.0),
        latency_p99_ms: load.latency_p99_ms.unwrap_or(0.0),
        utilization_percent: load.utilization_percent,
        in_flight_per_node: load.in_flight_per_node,
        nodes_reporting: load.nodes_reporting,
        nodes_routable: 0,
    }
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::{Federation, Node, Region, ServicePolicy};

    use super::*;
    use crate::topology::Stored;

    fn stored<T>(value: T) -> Stored<T> {
        Stored {
            value,
            mod_revision: 1,
        }
    }

    fn node(id: &str, federation: &str, region: &str, status: NodeStatus) -> Node {
        Node {
            id: id.into(),
            federation: federation.into(),
            region: region.into(),
            services: vec![format!("{federation}.v1.Svc")],
            status,
            ..Default::default()
        }
    }

    /// Federations prod (eu-west, us-east) and test (lab), nodes in every status.
    fn state() -> TopologyState {
        let mut state = TopologyState::default();
        for f in ["prod", "test"] {
            let federation = Federation {
                name: f.into(),
                ..Default::default()
            };
            state.federations.insert(f.into(), stored(federation));
        }
        for (r, f) in [("eu-west", "prod"), ("us-east", "prod"), ("lab", "test")] {
            let region = Region {
                name: r.into(),
                federation: f.into(),
                ..Default::default()
            };
            state.regions.insert(r.into(), stored(region));
        }
        let nodes = [
            node("a", "prod", "eu-west", NodeStatus::Healthy),
            node("b", "prod", "eu-west", NodeStatus::Unknown),
            node("c", "prod", "us-east", NodeStatus::Unhealthy),
            node("d", "prod", "us-east", NodeStatus::Quarantined),
            node("e", "prod", "us-east", NodeStatus::Lost),
            node("f", "prod", "us-east", NodeStatus::Draining),
            node("g", "test", "lab", NodeStatus::Failed),
        ];
        for n in nodes {
            state.nodes.insert(n.id.clone(), stored(n));
        }
        let policy = ServicePolicy {
            name: "policy.v1.Only".into(),
            federation: "prod".into(),
            ..Default::default()
        };
        state.services.insert(policy.name.clone(), stored(policy));
        state
    }

    #[test]
    fn nodes_are_counted_by_status_within_the_federation() {
        let state = state();
        let prod = topology_counts(&state, Some("prod"));
        assert_eq!((prod.federations, prod.regions, prod.services), (1, 2, 2));
        assert_eq!(
            (
                prod.nodes_active,
                prod.nodes_unhealthy,
                prod.nodes_lost,
                prod.nodes_draining
            ),
            (2, 2, 1, 1)
        );
        let all = topology_counts(&state, None);
        assert_eq!((all.federations, all.regions, all.services), (2, 3, 3));
        assert_eq!(all.nodes_unhealthy, 3, "failed counts as unhealthy");
    }

    #[test]
    fn a_proxy_is_in_sync_when_it_acked_its_federations_current_version() {
        let record = |id: &str, federation: &str, acked: u64| ProxyRecord {
            proxy_id: id.into(),
            federation: federation.into(),
            region: String::new(),
            zone: String::new(),
            acked_version: acked,
            sent_version: acked,
            last_nack: None,
            connected_since: SystemTime::UNIX_EPOCH,
            peer_address: String::new(),
            replica: "cp".into(),
            build_version: String::new(),
        };
        let records = [
            record("p1", "prod", 7),
            record("p2", "prod", 6),
            record("p3", "test", 3),
        ];
        let versions = BTreeMap::from([("prod".to_owned(), 7), ("test".to_owned(), 3)]);
        assert_eq!(proxy_counts(&records, &versions, None), (3, 2));
        assert_eq!(proxy_counts(&records, &versions, Some("prod")), (2, 1));
    }

    #[test]
    fn traffic_rows_cover_reported_and_routable_pairs_of_the_federation() {
        let state = state();
        let load = ServiceLoad {
            calls_per_second: 120.0,
            latency_p99_ms: Some(9.5),
            nodes_reporting: 1,
            ..Default::default()
        };
        let traffic = BTreeMap::from([
            (("prod.v1.Svc".to_owned(), "eu-west".to_owned()), load),
            (
                ("test.v1.Svc".to_owned(), "lab".to_owned()),
                ServiceLoad::default(),
            ),
        ]);
        let rows = traffic_rows(&traffic, &state, Some("prod"));
        let pairs: Vec<_> = rows
            .iter()
            .map(|r| (r.region.as_str(), r.nodes_reporting, r.nodes_routable))
            .collect();
        // us-east has no routable node and no traffic: no row.
        assert_eq!(pairs, [("eu-west", 1, 2)]);
        assert_eq!(rows[0].calls_per_second, 120.0);
        assert_eq!(rows[0].latency_p99_ms, 9.5);
        assert_eq!(traffic_rows(&traffic, &state, None).len(), 2);
    }
}
