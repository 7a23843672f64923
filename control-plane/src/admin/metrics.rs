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
