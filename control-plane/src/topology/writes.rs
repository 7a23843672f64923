//! Validated topology writes. Each write reads what it depends on from the store (not the
//! possibly lagging follower), validates, and commits in one transaction that compares the
//! mod-revisions of everything it read: if any of it changed meanwhile, nothing is written
//! and the write is retried from a fresh read. Refused writes change nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use meridian_shared::domain::{
    ActiveFailover, EventKind, Federation, Node, NodeStatus, Region, RegistrationKind,
    ServicePolicy,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::state::{Liveness, Stored};
use super::validate::{self, Invalid};
use crate::events::EventLog;
use crate::keys::{self, DecodeError, Keys, Kind};
use crate::store::{Compare, LeaseId, Store, StoreError, Txn};

/// Attempts before a write that keeps racing other writes gives up.
const WRITE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("the write kept racing concurrent changes to the same entities; retry it")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// What a status change does, for drain / fail / recover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusChange {
    Drain,
    Fail,
    Recover,
}

impl StatusChange {
    fn status(self) -> NodeStatus {
        match self {
            StatusChange::Drain => NodeStatus::Draining,
            StatusChange::Fail => NodeStatus::Failed,
            // The health checker decides between healthy and unhealthy from here.
            StatusChange::Recover => NodeStatus::Unknown,
        }
    }

    fn event(self) -> EventKind {
        match self {
            StatusChange::Drain => EventKind::NodeDraining,
            StatusChange::Fail => EventKind::NodeFailed,
            StatusChange::Recover => EventKind::NodeRecovered,
        }
    }
}

#[derive(Clone)]
pub struct TopologyWriter {
    store: Arc<dyn Store>,
    keys: Keys,
    events: EventLog,
}

impl TopologyWriter {
    pub fn new(store: Arc<dyn Store>, keys: Keys, events: EventLog) -> Self {
        TopologyWriter {
            store,
            keys,
            events,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    // === federations ===

    pub async fn upsert_federation(
        &self,
        federation: Federation,
    ) -> Result<Federation, WriteError> {
        validate::federation(&federation)?;
        let key = self.keys.key(Kind::Federation, &federation.name);
        self.retry(|| async {
            let existing = self
                .read::<Federation>(Kind::Federation, &federation.name)
                .await?;
            Ok((
                Txn::new()
                    .when(unchanged(&key, existing.as_ref()))
                    .put(&key, keys::encode(&federation)),
                (),
            ))
        })
        .await?;
        Ok(federation)
    }

    pub async fn delete_federation(&self, name: &str) -> Result<(), WriteError> {
        let key = self.keys.key(Kind::Federation, name);
        self.retry(|| async {
            let existing = self
                .read::<Federation>(Kind::Federation, name)
                .await?
                .ok_or_else(|| {
                    WriteError::NotFound(format!("federation {name:?} does not exist"))
                })?;
            let regions = self.list::<Region>(Kind::Region).await?;
            if let Some(r) = regions.iter().find(|r| r.value.federation == name) {
                return Err(WriteError::Precondition(format!(
                    "federation {name:?} still has region {:?}; delete its regions first",
                    r.value.name
                )));
            }
            let services = self.list::<ServicePolicy>(Kind::Service).await?;
            if let Some(s) = services.iter().find(|s| s.value.federation == name) {
                return Err(WriteError::Precondition(format!(
                    "federation {name:?} still has service {:?}; delete it first",
                    s.value.name
                )));
            }
            Ok((
                Txn::new()
                    .when(unchanged(&key, Some(&existing)))
                    .delete(&key),
                (),
            ))
        })
        .await
    }

    // === regions ===

    pub async fn upsert_region(&self, region: Region, actor: &str) -> Result<Region, WriteError> {
        let key = self.keys.key(Kind::Region, &region.name);
        self.retry(|| async {
            let federation = self.read::<Federation>(Kind::Federation, &region.federation).await?;
            validate::region(&region, federation.as_ref().map(|f| &f.value))?;
            let existing = self.read::<Region>(Kind::Region, &region.name).await?;
            if let Some(old) = &existing {
                if old.value.federation != region.federation {
                    return Err(Invalid {
                        field: "region.federation".into(),
                        message: format!(
                            "region {:?} belongs to federation {:?}; delete it before moving it",
                            region.name, old.value.federation
                        ),
                    }
                    .into());
                }
                let nodes = self.list::<Node>(Kind::Node).await?;
                if let Some(n) = nodes
                    .iter()
                    .find(|n| n.value.region == region.name && !region.zones.contains(&n.value.zone))
                {
                    return Err(WriteError::Precondition(format!(
                        "node {:?} is in zone {:?}, which this change removes; move or deregister it first",
                        n.value.id, n.value.zone
                    )));
                }
            }
            let federation_key = self.keys.key(Kind::Federation, &region.federation);
            let txn = Txn::new()
                .when(unchanged(&federation_key, federation.as_ref()))
                .when(unchanged(&key, existing.as_ref()))
                .put(&key, keys::encode(&region));
            Ok((txn, ()))
        })
        .await?;
        self.event(
            EventKind::RegionChanged,
            format!("region/{}", region.name),
            "region set".into(),
            actor,
        )
        .await;
        Ok(region)
    }

    pub async fn delete_region(&self, name: &str, actor: &str) -> Result<(), WriteError> {
        let key = self.keys.key(Kind::Region, name);
        self.retry(|| async {
            let existing = self
                .read::<Region>(Kind::Region, name)
                .await?
                .ok_or_else(|| WriteError::NotFound(format!("region {name:?} does not exist")))?;
            let nodes = self.list::<Node>(Kind::Node).await?;
            if let Some(n) = nodes.iter().find(|n| n.value.region == name) {
                return Err(WriteError::Precondition(format!(
                    "region {name:?} still has node {:?}; deregister its nodes first",
                    n.value.id
                )));
            }
            Ok((
                Txn::new()
                    .when(unchanged(&key, Some(&existing)))
                    .delete(&key),
                (),
            ))
        })
        .await?;
        self.event(
            EventKind::RegionChanged,
            format!("region/{name}"),
            "region deleted".into(),
            actor,
        )
        .await;
        Ok(())
    }

    // === nodes ===

    /// Registers a node by hand (no lease). The same spec again is a no-op; a different
    /// spec is refused unless `replace`.
    pub async fn register_node(
        &self,
        node: Node,
        replace: bool,
        actor: &str,
    ) -> Result<Node, WriteError> {
        let node = fresh(node, RegistrationKind::Operator);
        let key = self.keys.key(Kind::Node, &node.id);
        let unchanged_spec = self
            .retry(|| async {
                let (federation, region) = self.placement(&node).await?;
                validate::node(
                    &node,
                    federation.as_ref().map(|f| &f.value),
                    region.as_ref().map(|r| &r.value),
                )?;
                let existing = self.read::<Node>(Kind::Node, &node.id).await?;
                if let Some(old) = &existing {
                    if same_spec(&old.value, &node) {
                        return Ok((Txn::new(), Some(old.value.clone())));
                    }
                    if !replace {
                        return Err(duplicate(old));
                    }
                }
                let txn = self
                    .placement_unchanged(&node, federation.as_ref(), region.as_ref())
                    .when(unchanged(&key, existing.as_ref()))
                    .put(&key, keys::encode(&node))
                    .delete(self.keys.key(Kind::Liveness, &node.id));
                Ok((txn, None))
            })
            .await?;
        if let Some(existing) = unchanged_spec {
            return Ok(existing);
        }
        let message = format!(
            "registered at {} serving {}",
            node.address,
            node.services.join(", ")
        );
        self.event(
            EventKind::NodeRegistered,
            format!("node/{}", node.id),
            message,
            actor,
        )
        .await;
        Ok(node)
    }

    /// Registers a node that announced itself, binding its liveness to `lease`. Refused
    /// when another live registration holds the id with a different spec.
    pub async fn register_self(
        &self,
        node: Node,
        lease: LeaseId,
        ttl_seconds: u32,
    ) -> Result<Node, WriteError> {
        let node = fresh(node, RegistrationKind::SelfRegistered);
        let key = self.keys.key(Kind::Node, &node.id);
        let liveness_key = self.keys.key(Kind::Liveness, &node.id);
        let liveness = Liveness {
            lease,
            ttl_seconds,
            registered_at: SystemTime::now(),
        };
        self.retry(|| async {
            let (federation, region) = self.placement(&node).await?;
            validate::node(
                &node,
                federation.as_ref().map(|f| &f.value),
                region.as_ref().map(|r| &r.value),
            )?;
            let existing = self.read::<Node>(Kind::Node, &node.id).await?;
            let live = self.read::<Liveness>(Kind::Liveness, &node.id).await?;
            if let Some(old) = &existing {
                let held_by_other =
                    old.value.registration == RegistrationKind::Operator || live.is_some();
                if held_by_other && !same_spec(&old.value, &node) {
                    return Err(duplicate(old));
                }
            }
            let txn = self
                .placement_unchanged(&node, federation.as_ref(), region.as_ref())
                .when(unchanged(&key, existing.as_ref()))
                .when(unchanged(&liveness_key, live.as_ref()))
                .put(&key, keys::encode(&node))
                .put_with_lease(&liveness_key, keys::encode(&liveness), lease);
            Ok((txn, ()))
        })
        .await?;
        let message = format!(
            "self-registered at {} serving {} (lease {lease}, ttl {ttl_seconds}s)",
            node.address,
            node.services.join(", ")
        );
        self.event(
            EventKind::NodeRegistered,
            format!("node/{}", node.id),
            message,
            "node",
        )
        .await;
        Ok(node)
    }

    /// Removes a node and its liveness at once; revokes its lease. Returns whether it
    /// existed.
    pub async fn deregister_node(&self, id: &str, actor: &str) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Node, id);
        let liveness_key = self.keys.key(Kind::Liveness, id);
        let (existed, lease) = self
            .retry(|| async {
                let Some(existing) = self.read::<Node>(Kind::Node, id).await? else {
                    return Ok((Txn::new(), (false, None)));
                };
                let live = self.read::<Liveness>(Kind::Liveness, id).await?;
                let txn = Txn::new()
                    .when(unchanged(&key, Some(&existing)))
                    .when(unchanged(&liveness_key, live.as_ref()))
                    .delete(&key)
                    .delete(&liveness_key);
                Ok((txn, (true, live.map(|l| l.value.lease))))
            })
            .await?;
        if let Some(lease) = lease
            && let Err(e) = self.store.revoke_lease(lease).await
        {
            tracing::warn!(error = %e, node = id, lease, "could not revoke the node's lease; it will expire by itself");
        }
        if existed {
            self.event(
                EventKind::NodeDeregistered,
                format!("node/{id}"),
                "deregistered".into(),
                actor,
            )
            .await;
        }
        Ok(existed)
    }

    /// Drains, fails or recovers a node.
    pub async fn change_status(
        &self,
        id: &str,
        change: StatusChange,
        reason: &str,
        actor: &str,
    ) -> Result<Node, WriteError> {
        let key = self.keys.key(Kind::Node, id);
        let node = self
            .retry(|| async {
                let existing = self
                    .read::<Node>(Kind::Node, id)
                    .await?
                    .ok_or_else(|| WriteError::NotFound(format!("node {id:?} does not exist")))?;
                if change == StatusChange::Recover && existing.value.status == NodeStatus::Lost {
                    return Err(WriteError::Precondition(format!(
                        "node {id:?} lost its lease; it recovers by registering again"
                    )));
                }
                let mut node = existing.value.clone();
                node.status = change.status();
                node.status_reason = if reason.is_empty() {
                    format!("{} by {actor}", change.event())
                } else {
                    reason.to_owned()
                };
                node.status_since = Some(SystemTime::now());
                let txn = Txn::new()
                    .when(unchanged(&key, Some(&existing)))
                    .put(&key, keys::encode(&node));
                Ok((txn, node))
            })
            .await?;
        self.event(
            change.event(),
            format!("node/{id}"),
            node.status_reason.clone(),
            actor,
        )
        .await;
        Ok(node)
    }

    /// Marks a self-registered node lost after its lease lapsed; `fence` makes the write
    /// conditional on this replica still leading. Returns false when the node changed
    /// meanwhile (re-registered, deregistered) or the fence failed.
    pub async fn mark_lost(&self, node: &Stored<Node>, fence: Compare) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Node, &node.value.id);
        let mut lost = node.value.clone();
        lost.status = NodeStatus::Lost;
        lost.status_reason = "lease expired: the node stopped sending keep-alives".into();
        lost.status_since = Some(SystemTime::now());
        let txn = Txn::new()
            .when(fence)
            .when(Compare::ModRevision {
                key: key.clone(),
                revision: node.mod_revision,
            })
            .when(Compare::ModRevision {
                key: self.keys.key(Kind::Liveness, &node.value.id),
                revision: 0,
            })
            .put(&key, keys::encode(&lost));
        if !self.store.txn(txn).await?.succeeded {
            return Ok(false);
        }
        self.event(
            EventKind::NodeLost,
            format!("node/{}", lost.id),
            "lost: its lease expired (no keep-alive within the TTL); proxies stop routing to it"
                .into(),
            "lease expiry",
        )
        .await;
        Ok(true)
    }

    /// Sets the status the health checker decided on (healthy, unhealthy, quarantined),
    /// recording `event` (cause "health check") when given; `fence` makes the write
    /// conditional on this replica still leading. Returns false when the node changed
    /// since `node` was read (an operator drained it, it re-registered...) or the fence
    /// failed: the checker decides again from the fresh state.
    pub async fn set_health(
        &self,
        node: &Stored<Node>,
        status: NodeStatus,
        reason: String,
        fence: Compare,
        event: Option<EventKind>,
    ) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Node, &node.value.id);
        let mut checked = node.value.clone();
        checked.status = status;
        checked.status_reason = reason;
        checked.status_since = Some(SystemTime::now());
        let txn = Txn::new()
            .when(fence)
            .when(Compare::ModRevision {
                key: key.clone(),
                revision: node.mod_revision,
            })
            .put(&key, keys::encode(&checked));
        if !self.store.txn(txn).await?.succeeded {
            return Ok(false);
        }
        if let Some(kind) = event {
            self.event(
                kind,
                format!("node/{}", checked.id),
                checked.status_reason,
                "health check",
            )
            .await;
        }
        Ok(true)
    }

    /// Clears a failover automatically (failback), fenced on leadership and on the
    /// failover being unchanged; returns false when either changed.
    pub async fn clear_failover(
        &self,
        failover: &Stored<ActiveFailover>,
        fence: Compare,
    ) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Failover, &failover.value.service);
        let txn = Txn::new()
            .when(fence)
            .when(Compare::ModRevision {
                key: key.clone(),
                revision: failover.mod_revision,
            })
            .delete(&key);
        if !self.store.txn(txn).await?.succeeded {
            return Ok(false);
        }
        self.event(
            EventKind::FailoverCleared,
            format!("service/{}", failover.value.service),
            format!(
                "failed back from {}: the primary nodes are usable again",
                failover.value.target
            ),
            "auto recovery",
        )
        .await;
        Ok(true)
    }

    // === services ===

    pub async fn upsert_service(
        &self,
        policy: ServicePolicy,
        actor: &str,
    ) -> Result<ServicePolicy, WriteError> {
        let key = self.keys.key(Kind::Service, &policy.name);
        self.retry(|| async {
            let federation = self
                .read::<Federation>(Kind::Federation, &policy.federation)
                .await?;
            let regions = self.list::<Region>(Kind::Region).await?;
            let names: HashSet<&str> = regions
                .iter()
                .filter(|r| r.value.federation == policy.federation)
                .map(|r| r.value.name.as_str())
                .collect();
            validate::service(&policy, federation.as_ref().map(|f| &f.value), &names)?;
            let existing = self
                .read::<ServicePolicy>(Kind::Service, &policy.name)
                .await?;
            let federation_key = self.keys.key(Kind::Federation, &policy.federation);
            let txn = Txn::new()
                .when(unchanged(&federation_key, federation.as_ref()))
                .when(unchanged(&key, existing.as_ref()))
                .put(&key, keys::encode(&policy));
            Ok((txn, ()))
        })
        .await?;
        let message = format!("policy set: algorithm {}", policy.algorithm);
        self.event(
            EventKind::ServiceChanged,
            format!("service/{}", policy.name),
            message,
            actor,
        )
        .await;
        Ok(policy)
    }

    pub async fn delete_service(&self, name: &str, actor: &str) -> Result<(), WriteError> {
        let key = self.keys.key(Kind::Service, name);
        self.retry(|| async {
            let existing = self
                .read::<ServicePolicy>(Kind::Service, name)
                .await?
                .ok_or_else(|| WriteError::NotFound(format!("service {name:?} has no policy")))?;
            let txn = Txn::new()
                .when(unchanged(&key, Some(&existing)))
                .delete(&key)
                .delete(self.keys.key(Kind::Failover, name));
            Ok((txn, ()))
        })
        .await?;
        self.event(
            EventKind::ServiceChanged,
            format!("service/{name}"),
            "policy deleted".into(),
            actor,
        )
        .await;
        Ok(())
    }

    // === helpers ===

    /// Builds and commits a transaction, rebuilding from fresh reads when it lost a race;
    /// returns what the successful build said. An empty transaction means "nothing to
    /// write".
    async fn retry<T, F, Fut>(&self, mut build: F) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(Txn, T), WriteError>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let (txn, outcome) = build().await?;
            if txn.ops.is_empty() || self.store.txn(txn).await?.succeeded {
                return Ok(outcome);
            }
        }
        Err(WriteError::Conflict)
    }

    async fn read<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Stored<T>>, WriteError> {
        let Some(kv) = self.store.get(&self.keys.key(kind, name)).await? else {
            return Ok(None);
        };
        Ok(Some(Stored {
            value: keys::decode(&kv.key, &kv.value)?,
            mod_revision: kv.mod_revision,
        }))
    }

    async fn list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<Stored<T>>, WriteError> {
        let listing = self.store.list(&self.keys.dir(kind)).await?;
        listing
            .kvs
            .iter()
            .map(|kv| {
                Ok(Stored {
                    value: keys::decode(&kv.key, &kv.value)?,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect()
    }

    async fn placement(
        &self,
        node: &Node,
    ) -> Result<(Option<Stored<Federation>>, Option<Stored<Region>>), WriteError> {
        let federation = self.read(Kind::Federation, &node.federation).await?;
        let region = self.read(Kind::Region, &node.region).await?;
        Ok((federation, region))
    }

    /// A transaction that holds only if the node's federation and region did not change.
    fn placement_unchanged(
        &self,
        node: &Node,
        federation: Option<&Stored<Federation>>,
        region: Option<&Stored<Region>>,
    ) -> Txn {
        Txn::new()
            .when(unchanged(
                &self.keys.key(Kind::Federation, &node.federation),
                federation,
            ))
            .when(unchanged(
                &self.keys.key(Kind::Region, &node.region),
                region,
            ))
    }

    async fn event(&self, kind: EventKind, subject: String, message: String, actor: &str) {
        self.events
            .record(kind, subject, message, actor.to_owned())
            .await;
    }
}

/// The compare that holds while `key` is as it was read (absent when `stored` is `None`).
fn unchanged<T: Serialize>(key: &str, stored: Option<&Stored<T>>) -> Compare {
    Compare::ModRevision {
        key: key.to_owned(),
        revision: stored.map_or(0, |s| s.mod_revision),
    }
}

/// A node as registration writes it: status fields reset.
fn fresh(mut node: Node, registration: RegistrationKind) -> Node {
    node.status = NodeStatus::Unknown;
    node.status_reason = String::new();
    node.status_since = Some(SystemTime::now());
    node.registration = registration;
    node
}

/// Whether two nodes have the same spec (everything but status and registration).
pub fn same_spec(a: &Node, b: &Node) -> bool {
    fn spec(n: &Node) -> Node {
        Node {
            weight: n.effective_weight(),
            status: NodeStatus::default(),
            status_reason: String::new(),
            status_since: None,
            registration: RegistrationKind::default(),
            ..n.clone()
        }
    }
    spec(a) == spec(b)
}
fn duplicate(existing: &Stored<Node>) -> WriteError {
    let old = &existing.value;
    WriteError::Invalid(Invalid {
        field: "node.id".into(),
        message: format!(
            "node {:?} already exists with a different spec (address {}, region {}, zone {}, services {}); \
             deregister it first or register with replace",
            old.id,
            old.address,
            old.region,
            old.zone,
            old.services.join(",")
        ),
    })
}
