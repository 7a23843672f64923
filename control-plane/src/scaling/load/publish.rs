//! The compact summary each replica stores of its window under `{prefix}v1/load/{replica}`
//! (attached to the replica's lease, so a dead replica's summary goes with it), written
//! once per report interval; and reading the other replicas' summaries back. A new
//! leader reads them at once, which is its warm start.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meridian_shared::Shutdown;
use meridian_shared::latency_histogram::LatencyHistogram;
use serde::{Deserialize, Serialize};

use super::LoadAggregator;
use super::report::OrcaSample;
use super::window::{NodeLoad, OrcaLatest};
use crate::keys::{self, Keys, Kind};
use crate::replica_lease::ReplicaLease;
use crate::store::{LeaseId, Store, StoreError, Txn};

/// Largest summary written, bytes (etcd refuses values above 1.5 MiB by default). Past
/// it, the nodes with the fewest calls are left out and a warning says so.
pub const MAX_SUMMARY_BYTES: usize = 1024 * 1024;

/// One replica's window as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSummary {
    pub replica: String,
    /// When it was written.
    pub at: SystemTime,
    pub window_ms: u64,
    pub nodes: Vec<StoredNodeLoad>,
}

/// [`NodeLoad`] as stored: the histogram sparse, ORCA flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredNodeLoad {
    pub service: String,
    pub node: String,
    pub calls: u64,
    pub errors: u64,
    pub latency_bucket_index: Vec<u32>,
    pub latency_bucket_count: Vec<u64>,
    pub in_flight_seconds: f64,
    pub in_flight_max: u32,
    pub orca: Option<StoredOrca>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StoredOrca {
    pub at: SystemTime,
    pub cpu_utilization: f64,
    pub application_utilization: f64,
    pub rps: f64,
}

impl From<&NodeLoad> for StoredNodeLoad {
    fn from(load: &NodeLoad) -> Self {
        let (latency_bucket_index, latency_bucket_count) = load.latency.to_sparse();
        StoredNodeLoad {
            service: load.service.clone(),
            node: load.node.clone(),
            calls: load.calls,
            errors: load.errors,
            latency_bucket_index,
            latency_bucket_count,
            in_flight_seconds: load.in_flight_seconds,
            in_flight_max: load.in_flight_max,
            orca: load.orca.map(|o| StoredOrca {
                at: o.at,
                cpu_utilization: o.sample.cpu_utilization,
                application_utilization: o.sample.application_utilization,
                rps: o.sample.rps,
            }),
            start: load.start,
            end: load.end,
            interval_ms: u64::try_from(load.interval.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl StoredNodeLoad {
    /// `None` when its histogram is unreadable (a summary from a broken writer).
    fn to_load(&self) -> Option<NodeLoad> {
        let latency =
            LatencyHistogram::from_sparse(&self.latency_bucket_index, &self.latency_bucket_count)
                .ok()?;
        Some(NodeLoad {
            service: self.service.clone(),
            node: self.node.clone(),
            calls: self.calls,
            errors: self.errors,
            latency,
            in_flight_seconds: self.in_flight_seconds,
            in_flight_max: self.in_flight_max,
            orca: self.orca.map(|o| OrcaLatest {
                at: o.at,
                sample: OrcaSample {
                    cpu_utilization: o.cpu_utilization,
                    application_utilization: o.application_utilization,
                    rps: o.rps,
                },
            }),
            start: self.start,
            end: self.end,
            interval: Duration::from_millis(self.interval_ms),
        })
    }
}

/// The summary of `nodes`, the busiest first until [`MAX_SUMMARY_BYTES`]; also says how
/// many nodes were left out.
pub fn summarize(
    replica: &str,
    window: Duration,
    mut nodes: Vec<NodeLoad>,
    at: SystemTime,
) -> (LoadSummary, usize) {
    nodes.sort_by_key(|n| std::cmp::Reverse(n.calls));
    let mut budget = MAX_SUMMARY_BYTES.saturating_sub(256);
    let mut stored = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let record = StoredNodeLoad::from(node);
        // Each record encoded on its own, plus a comma: the summary's size to a few bytes.
        let size = serde_json::to_vec(&record).map_or(usize::MAX, |v| v.len() + 1);
        if size > budget {
            break;
        }
        budget -= size;
        stored.push(record);
    }
    let left_out = nodes.len() - stored.len();
    let summary = LoadSummary {
        replica: replica.to_owned(),
        at,
        window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        nodes: stored,
    };
    (summary, left_out)
}

/// The node loads of every replica but `own` whose summary is younger than `window`.
pub async fn read_others(
    store: &dyn Store,
    keys: &Keys,
    own: &str,
    window: Duration,
    now: SystemTime,
) -> Result<Vec<NodeLoad>, StoreError> {
    let listing = store.list(&keys.dir(Kind::Load)).await?;
    let oldest = now.checked_sub(window).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut loads = Vec::new();
    for kv in &listing.kvs {
        let summary = match keys::decode::<LoadSummary>(&kv.key, &kv.value) {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a replica's load summary");
                continue;
            }
        };
        if summary.replica == own || summary.at < oldest {
            continue;
        }
        let before = loads.len();
        loads.extend(summary.nodes.iter().filter_map(StoredNodeLoad::to_load));
        let unreadable = summary.nodes.len() - (loads.len() - before);
        if unreadable > 0 {
            tracing::warn!(key = %kv.key, unreadable, "ignoring nodes with unreadable latency histograms in a replica's load summary");
        }
    }
    Ok(loads)
}

/// Writes this replica's summary every report interval until `shutdown`: one put per
/// interval, none while the window stays empty and the empty summary is already stored.
pub async fn publish_until(aggregator: LoadAggregator, lease: ReplicaLease, shutdown: Shutdown) {
    let mut written: Option<(LeaseId, bool)> = None;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(aggregator.report_interval()) => {}
        }
        let Some(lease) = lease.current() else {
            continue;
        };
        let (summary, left_out) = aggregator.summary(SystemTime::now());
        if left_out > 0 {
            tracing::warn!(
                left_out,
                stored = summary.nodes.len(),
                "this replica's load summary is over {MAX_SUMMARY_BYTES} bytes; the nodes with the fewest calls are left out of it (other replicas and a new leader will not see them)"
            );
        }
        let empty = summary.nodes.is_empty();
        if empty && written == Some((lease, true)) {
            continue;
        }
        let store: &Arc<dyn Store> = aggregator.store();
        let key = aggregator.keys().key(Kind::Load, &summary.replica);
        let txn = Txn::new().put_with_lease(key, keys::encode(&summary), lease);
        match store.txn(txn).await {
            Ok(_) => written = Some((lease, empty)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store this replica's load summary; other replicas see its load only after the next interval");
            }
        }
    }
}
