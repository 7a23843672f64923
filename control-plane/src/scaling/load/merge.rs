//! Turning the node loads of every replica into one [`ServiceLoad`] per service (or per
//! service and region): counts and histograms add up, ORCA figures take the latest,
//! percentiles come from the merged histogram (never an average of percentiles).
//!
//! **The span rule.** Rates are computed over the time the samples actually cover, not
//! the nominal window: from the start of the earliest sample's interval to the end of
//! the latest. A service that started reporting 5 s ago shows its 5 s rate, not that
//! rate diluted over 60 s. Once reports stop, the silence counts: the span runs on to
//! `now`, less two report intervals (a report in flight or a replica's summary not yet
//! published is not silence), so the rate falls as the window moves on, and reaches 0
//! when the last samples leave it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use meridian_shared::latency_histogram::LatencyHistogram;

use super::super::ServiceLoad;
use super::window::NodeLoad;
use crate::topology::TopologyState;

/// What the topology says about a node that load figures need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub federation: String,
    pub region: String,
    /// Concurrent requests it can take; 0 = unknown.
    pub capacity: u32,
}

/// The facts of every node in `state`.
pub fn node_facts(state: &TopologyState) -> HashMap<String, NodeFacts> {
    state
        .nodes
        .values()
        .map(|n| {
            let node = &n.value;
            (
                node.id.clone(),
                NodeFacts {
                    federation: node.federation.clone(),
                    region: node.region.clone(),
                    capacity: node.capacity,
                },
            )
        })
        .collect()
}

/// One entry per (service, node), the figures of every replica added up.
pub fn combine(loads: impl IntoIterator<Item = NodeLoad>) -> Vec<NodeLoad> {
    let mut merged: BTreeMap<(String, String), NodeLoad> = BTreeMap::new();
    for load in loads {
        match merged.get_mut(&(load.service.clone(), load.node.clone())) {
            Some(into) => add(into, &load),
            None => {
                merged.insert((load.service.clone(), load.node.clone()), load);
            }
        }
    }
    merged.into_values().collect()
}

fn add(into: &mut NodeLoad, other: &NodeLoad) {
    into.calls = into.calls.saturating_add(other.calls);
    into.errors = into.errors.saturating_add(other.errors);
    into.latency.merge(&other.latency);
    into.in_flight_seconds += other.in_flight_seconds;
    into.in_flight_max = into.in_flight_max.saturating_add(other.in_flight_max);
    into.orca = match (into.orca, other.orca) {
        (Some(a), Some(b)) => Some(if b.at > a.at { b } else { a }),
        (a, b) => a.or(b),
    };
    into.start = into.start.min(other.start);
    into.end = into.end.max(other.end);
    into.interval = into.interval.max(other.interval);
}

/// The time `loads` cover at `now` (see the module doc); at least 1 ms.
pub fn covered_span<'a>(
    loads: impl IntoIterator<Item = &'a NodeLoad>,
    now: SystemTime,
) -> Duration {
    let mut bounds: Option<(SystemTime, SystemTime, Duration)> = None;
    for load in loads {
        bounds = Some(match bounds {
            None => (load.start, load.end, load.interval),
            Some((start, end, interval)) => (
                start.min(load.start),
                end.max(load.end),
                interval.max(load.interval),
            ),
        });
    }
    let Some((start, end, interval)) = bounds else {
        return Duration::ZERO;
    };
    let silence_from = now.checked_sub(interval * 2).unwrap_or(now);
    let end = end.max(silence_from);
    end.duration_since(start)
        .unwrap_or_default()
        .max(Duration::from_millis(1))
}

/// Requests in flight to a node, time-averaged over the span its samples cover.
fn in_flight_mean(load: &NodeLoad, now: SystemTime) -> f64 {
    load.in_flight_seconds / covered_span([load], now).as_secs_f64()
}

/// A node's utilisation, percent: ORCA application utilisation when the node reports
/// it (above 0), else ORCA cpu utilisation (above 0), else in-flight over its capacity,
/// else 0 when the node sends ORCA reports with both at 0 (an idle node: proto3 cannot
/// tell 0 from absent, and an idle service must still be able to scale down); `None`
/// when none of these is known.
pub fn node_utilization(load: &NodeLoad, capacity: u32, now: SystemTime) -> Option<f64> {
    if let Some(orca) = load.orca {
        if orca.sample.application_utilization > 0.0 {
            return Some(orca.sample.application_utilization * 100.0);
        }
        if orca.sample.cpu_utilization > 0.0 {
            return Some(orca.sample.cpu_utilization * 100.0);
        }
    }
    if capacity > 0 {
        return Some(in_flight_mean(load, now) / f64::from(capacity) * 100.0);
    }
    load.orca.map(|_| 0.0)
}

/// One service's load (or one region's share of it) from its nodes' loads.
pub fn service_load(
    nodes: &[&NodeLoad],
    facts: &HashMap<String, NodeFacts>,
    now: SystemTime,
) -> ServiceLoad {
    let span = covered_span(nodes.iter().copied(), now);
    let mut latency = LatencyHistogram::new();
    let (mut calls, mut errors, mut in_flight) = (0u64, 0u64, 0.0);
    let mut utilizations = Vec::new();
    for load in nodes {
        calls = calls.saturating_add(load.calls);
        errors = errors.saturating_add(load.errors);
        latency.merge(&load.latency);
        in_flight += in_flight_mean(load, now);
        let capacity = facts.get(&load.node).map_or(0, |f| f.capacity);
        utilizations.extend(node_utilization(load, capacity, now));
    }
    let reporting = nodes.len();
    let mean = |sum: f64, count: usize| if count == 0 { 0.0 } else { sum / count as f64 };
    ServiceLoad {
        window: span,
        calls_per_second: if span.is_zero() {
            0.0
        } else {
            calls as f64 / span.as_secs_f64()
        },
        error_rate: if calls == 0 {
            0.0
        } else {
            errors as f64 / calls as f64
        },
        latency_p50_ms: latency.quantile_micros(0.50).map(|us| us / 1_000.0),
        latency_p99_ms: latency.quantile_micros(0.99).map(|us| us / 1_000.0),
        utilization_percent: (!utilizations.is_empty())
            .then(|| mean(utilizations.iter().sum(), utilizations.len())),
        in_flight_per_node: mean(in_flight, reporting),
        nodes_reporting: u32::try_from(reporting).unwrap_or(u32::MAX),
    }
}

/// Every service's load, all regions together.
pub fn by_service(
    nodes: &[NodeLoad],
    facts: &HashMap<String, NodeFacts>,
    now: SystemTime,
) -> BTreeMap<String, ServiceLoad> {
    group(nodes, |load| load.service.clone(), facts, now)
}

/// Every (service, region of the node) pair's load. Nodes no longer in the topology
/// count under region "" (their traffic was real; their region is no longer known).
pub fn by_service_and_region(
    nodes: &[NodeLoad],
    facts: &HashMap<String, NodeFacts>,
    now: SystemTime,
) -> BTreeMap<(String, String), ServiceLoad> {
    group(
        nodes,
        |load| {
            let region = facts.get(&load.node).map(|f| f.region.clone());
            (load.service.clone(), region.unwrap_or_default())
        },
        facts,
        now,
    )
}

fn group<K: Ord>(
    nodes: &[NodeLoad],
    key: impl Fn(&NodeLoad) -> K,
    facts: &HashMap<String, NodeFacts>,
    now: SystemTime,
) -> BTreeMap<K, ServiceLoad> {
    let mut groups: BTreeMap<K, Vec<&NodeLoad>> = BTreeMap::new();
    for load in nodes {
        groups.entry(key(load)).or_default().push(load);
    }
    groups
        .into_iter()
        .map(|(k, loads)| (k, service_load(&loads, facts, now)))
        .collect()
}
