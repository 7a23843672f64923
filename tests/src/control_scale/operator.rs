//! The operator's side of the benchmark: the Admin API calls that build the federation
//! and change it, timed as the caller sees them.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_shared::domain::limits::TopologyLimits;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::ScaleError;
use super::layout;
use crate::control::{ControlPlaneProcess, OPERATOR_TOKEN, authorized};

/// Health checks that change nothing during a run: one TCP probe when a node enters the
/// checked set, the next ten minutes later, and a hundred failures (or passes) before a
/// verdict. Limits are raised (and per-node sizes lowered, so the largest table still
/// fits a proxy's decode limit) when `nodes` exceeds the default node limit.
pub async fn configure(cp: &ControlPlaneProcess, nodes: usize) -> Result<(), ScaleError> {
    let mut config = pb::DynamicConfig {
        default_health_check: Some(pb::HealthCheckPolicy {
            tcp_only: true,
            interval_ms: 600_000,
            timeout_ms: 1_000,
            unhealthy_threshold: 100,
            healthy_threshold: 100,
            ..Default::default()
        }),
        ..Default::default()
    };
    let default_limit = TopologyLimits::DEFAULT.max_nodes_per_federation as usize;
    if nodes > default_limit {
        config.max_nodes_per_federation = u32::try_from(nodes)
            .map_err(|_| ScaleError(format!("{nodes} nodes is over any limit")))?;
        config.max_labels = 1;
        config.max_label_key_bytes = 16;
        config.max_label_value_bytes = 16;
        config.max_services_per_node = 1;
        config.max_text_bytes = 64;
    }
    let request = pb::UpdateConfigRequest {
        config: Some(config),
        dry_run: false,
        expected_revision: 0,
    };
    cp.admin()
        .await
        .update_config(authorized(request, OPERATOR_TOKEN))
        .await
        .map_err(|s| ScaleError(format!("updating the dynamic configuration: {s}")))?;
    for (region, location) in layout::REGIONS {
        let zones = layout::zones(region);
        let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
        cp.create_region(layout::FEDERATION, region, location, &zones)
            .await;
    }
    Ok(())
}

/// Registers nodes `0..nodes` with `concurrency` calls in flight; returns how long it took.
pub async fn register_nodes(
    admin: &AdminClient<Channel>,
    nodes: usize,
    concurrency: usize,
) -> Result<Duration, ScaleError> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (mut admin, next) = (admin.clone(), Arc::clone(&next));
        workers.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= nodes {
                    return Ok::<(), ScaleError>(());
                }
                let request = pb::RegisterNodeRequest {
                    node: Some(layout::node(index)),
                    replace: false,
                };
                admin
                    .register_node(authorized(request, OPERATOR_TOKEN))
                    .await
                    .map_err(|s| {
                        ScaleError(format!("registering {}: {s}", layout::node_id(index)))
                    })?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.map_err(|e| ScaleError(format!("a registration worker: {e}")))??;
    }
    Ok(started.elapsed())
}

/// Drains (`drain`) or recovers node `index`.
pub async fn set_draining(
    admin: &AdminClient<Channel>,
    index: usize,
    drain: bool,
) -> Result<(), ScaleError> {
    let mut admin = admin.clone();
    let id = layout::node_id(index);
    let reason = "control-plane scale benchmark".to_owned();
    let result = if drain {
        let request = pb::DrainNodeRequest { id, reason };
        admin.drain_node(authorized(request, OPERATOR_TOKEN)).await
    } else {
        let request = pb::RecoverNodeRequest { id, reason };
        admin
            .recover_node(authorized(request, OPERATOR_TOKEN))
            .await
    };
    result
        .map(drop)
        .map_err(|s| ScaleError(format!("draining or recovering node {index}: {s}")))
}

/// When a burst of writes ran.
#[derive(Debug, Clone, Copy)]
pub struct BurstWrites {
    /// From the first call's start to the last call's return.
    pub duration: Duration,
    /// When the last call returned.
    pub last_return: Instant,
    /// When the last call started.
    pub last_start: Instant,
}

/// Drains every node in `nodes`, starting the calls evenly over `spread` (each on its own
/// task, so a slow call delays none after it).
pub async fn drain_burst(
    admin: &AdminClient<Channel>,
    nodes: Range<usize>,
    spread: Duration,
) -> Result<BurstWrites, ScaleError> {
    let count = nodes.len().max(1) as u32;
    let started = tokio::time::Instant::now();
    let first = Instant::now();
    let mut calls = JoinSet::new();
    let mut last_start = first;
    for (i, index) in nodes.enumerate() {
        tokio::time::sleep_until(started + spread * i as u32 / count).await;
        last_start = Instant::now();
        let admin = admin.clone();
        calls.spawn(async move {
            set_draining(&admin, index, true).await?;
            Ok::<_, ScaleError>(Instant::now())
        });
    }
    let mut last = first;
    while let Some(done) = calls.join_next().await {
        let returned = done.map_err(|e| ScaleError(format!("a drain call: {e}")))??;
        last = last.max(returned);
    }
    Ok(BurstWrites {
        duration: last - first,
        last_return: last,
        last_start,
    })
}
