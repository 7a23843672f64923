//! Marks self-registered nodes `lost` once their lease is gone (the store deleted their
//! liveness key), records a `nodeLost` event, and so tells operators what the routing
//! tables already reflect (they leave such nodes out as soon as the liveness key goes).
//! A node in a held status (drained, failed, quarantined) keeps it: it takes no traffic
//! either way, and the operator's decision must outlive the process.

use meridian_shared::Shutdown;
use meridian_shared::domain::{NodeStatus, RegistrationKind};

use super::Leadership;

/// How often the reconciler looks again without a change.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a change waits for the rest of its burst before the nodes are walked.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);
use crate::topology::{StateHandle, TopologyWriter};

pub async fn run(
    leadership: Leadership,
    state: StateHandle,
    writer: TopologyWriter,
    term: Shutdown,
) {
    let mut changes = state.subscribe();
    loop {
        let lapsed: Vec<_> = {
            let state = changes.borrow_and_update();
            state
                .nodes
                .values()
                .filter(|n| {
                    n.value.registration == RegistrationKind::SelfRegistered
                        && n.value.status != NodeStatus::Lost
                        && !n.value.status.is_held()
                        && !state.liveness.contains_key(&n.value.id)
                })
                .cloned()
                .collect()
        };
        for node in lapsed {
            if let Err(e) = writer.mark_lost(&node, leadership.fence()).await {
                tracing::warn!(error = %e, node = %node.value.id, "could not mark the node lost; retrying on the next change");
            }
        }
        // Also look again now and then: a failed write may have no change to retry on.
        tokio::select! {
            _ = term.wait() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Walk the nodes once per burst of changes, not once per change.
                tokio::time::sleep(COALESCE).await;
            }
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}
