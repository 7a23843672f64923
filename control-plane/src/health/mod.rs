//! Active health checks by the leader: the reconciler that probes every node whose health
//! is the checker's to judge and writes what it finds into the node's status, which the
//! routing tables carry to every proxy.
//!
//! Which nodes: those whose status is unknown, healthy or unhealthy. Draining, failed and
//! quarantined are operators' decisions and lost is the lease's; the checker leaves them
//! alone until an operator recovers the node (status unknown), and forgets a node that
//! leaves the table.
//!
//! How: one task per checked node, so a slow or hanging node delays nobody else. Each
//! task probes on the node's interval ([`probe`]), feeds the results to its
//! [`tracker::HealthTracker`], and writes the status change the tracker calls for with a
//! fenced write that also requires the node unchanged since it was read: a deposed leader
//! or a concurrent operator change wins, and the task decides again after its next check
//! (level-triggered: it compares with the status as stored, not with what it wrote). The
//! task ends when its node is no longer checked, taking its history with it; in
//! particular a node it quarantines comes back, once recovered, with a clean history.
//!
//! Which settings: the `health_check` of the first of the node's services (by name) whose
//! policy sets one, else the dynamic configuration's `default_health_check`; zeros mean
//! the documented defaults (2 s interval, 1 s timeout, 3 failures, 2 passes). Flap
//! quarantine uses the dynamic configuration's `flap_threshold` (default 5) and
//! `flap_window_ms` (default 60 s).

pub mod probe;
pub mod tracker;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::time::Duration;

use meridian_shared::Shutdown;
use meridian_shared::domain::{HealthCheckPolicy, Node, NodeStatus};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::probe::Probe;
use self::tracker::{Change, HealthTracker, Limits};
use crate::dynconfig::DynamicConfig;
use crate::leader::Leadership;
use crate::topology::{StateHandle, Stored, TopologyState, TopologyWriter};

/// Flap-quarantine defaults for a dynamic configuration that sets 0.
const DEFAULT_FLAP_THRESHOLD: u32 = 5;
const DEFAULT_FLAP_WINDOW: Duration = Duration::from_secs(60);
/// How often the set of checked nodes is looked at again without a change.
const RECHECK: Duration = Duration::from_secs(5);

/// How long a change waits for the rest of its burst before the nodes are walked.
const COALESCE: Duration = Duration::from_millis(100);

/// Checks nodes until `term`; then waits for every node's task to stop.
pub async fn run(
    leadership: Leadership,
    state: StateHandle,
    writer: TopologyWriter,
    term: Shutdown,
) {
    let mut changes = state.subscribe();
    let mut checks: HashMap<String, JoinHandle<()>> = HashMap::new();
    // Stops the node tasks when this loop ends, for whatever reason.
    let stop = Shutdown::new();
    loop {
        checks.retain(|_, task| !task.is_finished());
        let unchecked: Vec<String> = changes
            .borrow_and_update()
            .nodes
            .values()
            .filter(|n| is_checked(n.value.status) && !checks.contains_key(&n.value.id))
            .map(|n| n.value.id.clone())
            .collect();
        for id in unchecked {
            if let Entry::Vacant(slot) = checks.entry(id) {
                let id = slot.key().clone();
                slot.insert(tokio::spawn(check_node(
                    id,
                    leadership.clone(),
                    state.clone(),
                    writer.clone(),
                    stop.clone(),
                )));
            }
        }
        metrics::gauge!("meridian_control_health_checked_nodes").set(checks.len() as f64);
        tokio::select! {
            _ = term.wait() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                // A burst of changes (a deploy registering thousands of nodes) is looked
                // at once, not once per change: each look walks every node.
                tokio::time::sleep(COALESCE).await;
            }
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
    // A write under way finishes (it is fenced either way).
    stop.trigger();
    for task in checks.into_values() {
        let _ = task.await;
    }
    metrics::gauge!("meridian_control_health_checked_nodes").set(0.0);
}

/// Whether the checker judges a node in `status`.
fn is_checked(status: NodeStatus) -> bool {
    matches!(
        status,
        NodeStatus::Unknown | NodeStatus::Healthy | NodeStatus::Unhealthy
    )
}

/// Checks node `id` on its interval until it is no longer checked or `stop`.
async fn check_node(
    id: String,
    leadership: Leadership,
    state: StateHandle,
    writer: TopologyWriter,
    stop: Shutdown,
) {
    let mut tracker = HealthTracker::default();
    let mut probe = Probe::default();
    loop {
        let Some(target) = Target::read(&state.borrow(), &id) else {
            return;
        };
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.wait() => return,
            result = probe.check(&target.node.value.address, &target.policy) => result,
        };
        match result {
            Ok(()) => {
                metrics::counter!("meridian_control_health_checks_total", "result" => "ok")
                    .increment(1);
                tracker.record_pass();
            }
            Err(failure) => {
                metrics::counter!("meridian_control_health_checks_total", "result" => "failed")
                    .increment(1);
                tracing::debug!(node = %id, reason = %failure, "health check failed");
                tracker.record_failure(failure.to_string());
            }
        }
        // Decide on the node as it is now: an operator may have changed it meanwhile.
        let Some(target) = Target::read(&state.borrow(), &id) else {
            return;
        };
        let now = Instant::now();
        if let Some(change) = tracker.decide(target.node.value.status, &target.limits, now)
            && apply(&writer, &leadership, &target.node, &change).await
        {
            tracker.committed(&change, now);
            if change.to == NodeStatus::Quarantined {
                return;
            }
        }
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep_until(started + target.policy.effective_interval()) => {}
        }
    }
}

/// Writes `change`; returns whether it landed.
async fn apply(
    writer: &TopologyWriter,
    leadership: &Leadership,
    node: &Stored<Node>,
    change: &Change,
) -> bool {
    let id = &node.value.id;
    let written = writer
        .set_health(
            node,
            change.to,
            change.reason.clone(),
            leadership.fence(),
            change.event,
        )
        .await;
    match written {
        Ok(true) => {
            if change.event.is_none() {
                tracing::info!(node = %id, from = %change.from, to = %change.to, "{}", change.reason);
            }
            true
        }
        Ok(false) => {
            tracing::debug!(node = %id, to = %change.to, "the node changed or leadership ended before the health status was written; deciding again after the next check");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, node = %id, to = %change.to, "could not write the health status; retrying after the next check");
            false
        }
    }
}

/// A checked node and the settings to check it with.
struct Target {
    node: Stored<Node>,
    policy: HealthCheckPolicy,
    limits: Limits,
}

impl Target {
    /// Node `id` as `state` has it, if it is there and checked.
    fn read(state: &TopologyState, id: &str) -> Option<Target> {
        let node = state.nodes.get(id).filter(|n| is_checked(n.value.status))?;
        let policy = policy_for(state, &node.value);
        let limits = limits(&policy, &state.config.value);
        Some(Target {
            node: node.clone(),
            policy,
            limits,
        })
    }
}

/// The `health_check` of the first of the node's services (by name) whose policy, in the
/// node's federation, sets one; else the configured default.
fn policy_for(state: &TopologyState, node: &Node) -> HealthCheckPolicy {
    let mut services: Vec<&String> = node.services.iter().collect();
    services.sort();
    services
        .into_iter()
        .filter_map(|name| state.services.get(name))
        .map(|service| &service.value)
        .filter(|service| service.federation == node.federation)
        .map(|service| &service.health_check)
        .find(|check| **check != HealthCheckPolicy::default())
        .unwrap_or(&state.config.value.default_health_check)
        .clone()
}

fn limits(policy: &HealthCheckPolicy, config: &DynamicConfig) -> Limits {
    Limits {
        unhealthy_threshold: policy.effective_unhealthy_threshold(),
        healthy_threshold: policy.effective_healthy_threshold(),
        flap_threshold: match config.flap_threshold {
            0 => DEFAULT_FLAP_THRESHOLD,
            n => n,
        },
        flap_window: match config.flap_window_ms {
            0 => DEFAULT_FLAP_WINDOW,
            ms => Duration::from_millis(u64::from(ms)),
        },
    }
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::ServicePolicy;

    use super::*;

    fn node(services: &[&str]) -> Node {
        Node {
            id: "n1".into(),
            federation: "prod".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn service(name: &str, federation: &str, interval_ms: u32) -> Stored<ServicePolicy> {
        Stored {
            value: ServicePolicy {
                name: name.into(),
                federation: federation.into(),
                health_check: HealthCheckPolicy {
                    interval_ms,
                    ..Default::default()
                },
                ..Default::default()
            },
            mod_revision: 1,
        }
    }

    #[test]
    fn the_policy_is_the_first_service_setting_one_else_the_configured_default() {
        let mut state = TopologyState::default();
        state.config.value.default_health_check.interval_ms = 9_000;
        let n = node(&["z.Last", "b.Second", "a.First"]);
        assert_eq!(policy_for(&state, &n).interval_ms, 9_000, "no policies");

        state
            .services
            .insert("a.First".into(), service("a.First", "prod", 0));
        state
            .services
            .insert("z.Last".into(), service("z.Last", "prod", 300));
        assert_eq!(
            policy_for(&state, &n).interval_ms,
            300,
            "a.First sets no health check, so z.Last's counts"
        );
        state
            .services
            .insert("b.Second".into(), service("b.Second", "prod", 200));
        assert_eq!(policy_for(&state, &n).interval_ms, 200, "sorted by name");
        state
            .services
            .insert("b.Second".into(), service("b.Second", "other", 200));
        assert_eq!(
            policy_for(&state, &n).interval_ms,
            300,
            "another federation's policy does not apply"
        );
    }

    #[test]
    fn limits_resolve_defaults() {
        let limits = limits(&HealthCheckPolicy::default(), &DynamicConfig::default());
        assert_eq!(
            limits,
            Limits {
                unhealthy_threshold: 3,
                healthy_threshold: 2,
                flap_threshold: 5,
                flap_window: Duration::from_secs(60),
            }
        );
        let config = DynamicConfig {
            flap_threshold: 2,
            flap_window_ms: 10_000,
            ..Default::default()
        };
        let limits = super::limits(&HealthCheckPolicy::default(), &config);
        assert_eq!(
            (limits.flap_threshold, limits.flap_window),
            (2, Duration::from_secs(10))
        );
    }

    #[test]
    fn only_unknown_healthy_and_unhealthy_nodes_are_checked() {
        let mut state = TopologyState::default();
        for status in [
            NodeStatus::Unknown,
            NodeStatus::Healthy,
            NodeStatus::Unhealthy,
            NodeStatus::Draining,
            NodeStatus::Failed,
            NodeStatus::Quarantined,
            NodeStatus::Lost,
        ] {
            let mut n = node(&[]);
            n.status = status;
            state.nodes.insert(
                "n1".into(),
                Stored {
                    value: n,
                    mod_revision: 1,
                },
            );
            let checked = Target::read(&state, "n1").is_some();
            assert_eq!(
                checked,
                status.is_routable() || status == NodeStatus::Unhealthy
            );
        }
        assert!(Target::read(&state, "absent").is_none());
    }
}
