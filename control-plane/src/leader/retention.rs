//! Lost-node retention: a self-registered node whose lease lapsed stays in the topology as
//! `lost` so operators can see what went away; after `lost_node_retention_seconds`
//! (dynamic config, default a day) the leader deletes it and records a `nodeDeregistered`
//! event with cause "lost-node retention". Without this, nodes that come and go (new ids
//! on every deploy) would grow the topology, and every routing table, without bound.
//!
//! How long a node has been lost comes from its `status_since`, a wall-clock time written
//! when it was marked lost, so a new leader carries on where the last one stopped.

use std::time::{Duration, SystemTime};

use meridian_shared::Shutdown;
use meridian_shared::domain::{Node, NodeStatus};

use super::Leadership;
use crate::topology::{StateHandle, Stored, TopologyState, TopologyWriter};

/// How often the reconciler looks: retention is measured in minutes to days, so a
/// deletion up to this late is fine, and looking at every state change would be waste.
const RECHECK: Duration = Duration::from_secs(30);

pub async fn run(
    leadership: Leadership,
    state: StateHandle,
    writer: TopologyWriter,
    term: Shutdown,
) {
    loop {
        let due = expired(&state.borrow(), SystemTime::now());
        for (node, lost_for) in due {
            if let Err(e) = writer
                .remove_lost(&node, lost_for, leadership.fence())
                .await
            {
                tracing::warn!(error = %e, node = %node.value.id, "could not remove the lost node; retrying later");
            }
        }
        tokio::select! {
            _ = term.wait() => return,
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Nodes lost for longer than the configured retention at `now`, with how long.
pub fn expired(state: &TopologyState, now: SystemTime) -> Vec<(Stored<Node>, Duration)> {
    let retention = state.config.value.lost_node_retention();
    state
        .nodes
        .values()
        .filter(|n| n.value.status == NodeStatus::Lost)
        .filter_map(|n| {
            let since = n.value.status_since?;
            let lost_for = now.duration_since(since).ok()?;
            (lost_for > retention).then(|| (n.clone(), lost_for))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynconfig::DynamicConfig;

    fn node(id: &str, status: NodeStatus, since: Option<SystemTime>) -> Stored<Node> {
        Stored {
            value: Node {
                id: id.into(),
                status,
                status_since: since,
                ..Default::default()
            },
            mod_revision: 3,
        }
    }

    #[test]
    fn only_nodes_lost_longer_than_the_retention_expire() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |secs| Some(now - Duration::from_secs(secs));
        let mut state = TopologyState::default();
        state.config.value = DynamicConfig {
            lost_node_retention_seconds: 3_600,
            ..Default::default()
        };
        for n in [
            node("old-lost", NodeStatus::Lost, ago(3_601)),
            node("new-lost", NodeStatus::Lost, ago(3_599)),
            node("old-failed", NodeStatus::Failed, ago(90_000)),
            node("lost-unknown-since", NodeStatus::Lost, None),
            node(
                "lost-in-future",
                NodeStatus::Lost,
                Some(now + Duration::from_secs(5)),
            ),
        ] {
            state.nodes.insert(n.value.id.clone(), n);
        }
        let ids: Vec<_> = expired(&state, now)
            .into_iter()
            .map(|(n, lost_for)| (n.value.id, lost_for.as_secs()))
            .collect();
        assert_eq!(ids, [("old-lost".to_owned(), 3_601)]);
    }

    #[test]
    fn the_default_retention_is_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut state = TopologyState::default();
        let n = node(
            "lost",
            NodeStatus::Lost,
            Some(now - Duration::from_secs(86_000)),
        );
        state.nodes.insert("lost".into(), n);
        assert!(expired(&state, now).is_empty());
        assert_eq!(expired(&state, now + Duration::from_secs(401)).len(), 1);
    }
}
