//! Automatic failback: for services whose policy sets `failover.auto_recovery`, the leader
//! clears a failover once the service's primary nodes — those outside the failover's
//! target — have been seen with no usable node after the failover began, and then have a
//! usable node again. A failover started while the primary is still healthy (planned
//! maintenance) therefore stays until the primary has really failed and recovered, or an
//! operator clears it. What was seen lives in this reconciler's memory: after a leader
//! change the new leader waits to see the primary fail again, the safe side.

use std::collections::HashSet;
use std::time::Duration;

use meridian_shared::Shutdown;
use meridian_shared::domain::{ActiveFailover, Node, ServicePolicy};

use super::Leadership;
use crate::topology::{StateHandle, Stored, TopologyState, TopologyWriter};

/// How often to look again without a change.
const RECHECK: Duration = Duration::from_secs(5);

pub async fn run(
    leadership: Leadership,
    state: StateHandle,
    writer: TopologyWriter,
    term: Shutdown,
) {
    let mut changes = state.subscribe();
    // Services whose primary was seen without a usable node since their failover began.
    let mut degraded: HashSet<String> = HashSet::new();
    loop {
        let recovered: Vec<Stored<ActiveFailover>> = {
            let state = changes.borrow_and_update();
            degraded.retain(|service| state.failovers.contains_key(service));
            let mut recovered = Vec::new();
            for (service, failover) in &state.failovers {
                let Some(policy) = state
                    .services
                    .get(service)
                    .filter(|p| p.value.failover.auto_recovery)
                else {
                    continue;
                };
                if primary_usable(&state, &policy.value, &failover.value) {
                    if degraded.contains(service) {
                        recovered.push(failover.clone());
                    }
                } else {
                    degraded.insert(service.clone());
                }
            }
            recovered
        };
        for failover in recovered {
            match writer.clear_failover(&failover, leadership.fence()).await {
                Ok(true) => {
                    degraded.remove(&failover.value.service);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, service = %failover.value.service, "could not fail back; retrying")
                }
            }
        }
        tokio::select! {
            _ = term.wait() => return,
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Whether the service has a usable node outside the failover's target.
fn primary_usable(
    state: &TopologyState,
    policy: &ServicePolicy,
    failover: &ActiveFailover,
) -> bool {
    let tier = policy
        .failover
        .tiers
        .iter()
        .find(|t| t.name == failover.target);
    let in_target = |node: &Node| match tier {
        Some(tier) => {
            tier.regions.contains(&node.region)
                || tier.zones.contains(&node.zone)
                || tier.nodes.contains(&node.id)
        }
        None => node.region == failover.target,
    };
    state.nodes.values().any(|n| {
        let node = &n.value;
        node.federation == policy.federation
            && node.serves(&policy.name)
            && node.status.is_routable()
            && !in_target(node)
    })
}
