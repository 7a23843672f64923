//! Validated topology writes. Each write reads what it depends on from the store (not the
//! possibly lagging follower), validates, and commits in one transaction that compares the
//! mod-revisions of everything it read: if any of it changed meanwhile, nothing is written
//! and the write is retried from a fresh read. Refused writes change nothing. Node
//! registration, the one write that comes in bulk, takes its first read from the followed
//! state instead (no store round trip); the same compares guard it, so a stale view only
//! costs a retry that reads the store. A registration writes its event in the node's
//! transaction, and registrations waiting for the store at the same moment are committed
//! as one transaction ([`GroupCommit`]), each still answered by its own compares.
//!
//! The limits come from the dynamic configuration, read with the rest and fenced on too.
//! Counts (nodes, regions, services per federation) come from the followed state, which
//! may lag the store by a moment: concurrent writes near a limit can pass it by a few.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use meridian_shared::domain::{
    ActiveFailover, EventKind, Federation, Node, NodeStatus, Region, RegistrationKind,
    ServicePolicy, TopologyLimits,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::state::{Liveness, Stored, TopologyState};
use super::validate::{self, Invalid};
use crate::dynconfig::DynamicConfig;
use crate::events::{EventLog, PreparedEvent};
use crate::keys::{self, DecodeError, Keys, Kind};
use crate::store::group_commit::GroupCommit;
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
    /// The caller may not change this entity (a node held by another credential).
    #[error("{0}")]
    Forbidden(String),
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
    /// Commits registrations, which come in bulk, several to a transaction.
    group: GroupCommit,
    keys: Keys,
    events: EventLog,
}

/// How a write's transaction reaches the store.
#[derive(Debug, Clone, Copy)]
enum Commit {
    Alone,
    Grouped,
}

/// What a registration did.
enum Registered {
    /// The node was already registered with this spec.
    Unchanged(Node),
    /// The node was written, with this event.
    Written(PreparedEvent),
}

impl TopologyWriter {
    pub fn new(store: Arc<dyn Store>, keys: Keys, events: EventLog) -> Self {
        TopologyWriter {
            group: GroupCommit::new(Arc::clone(&store)),
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
        let key = self.keys.key(Kind::Federation, &federation.name);
        self.retry(|| async {
            let config = self.config().await?;
            validate::federation(&federation, &limits(&config))?;
            let existing = self
                .read::<Federation>(Kind::Federation, &federation.name)
                .await?;
            Ok((
                Txn::new()
                    .when(self.config_unchanged(&config))
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
            let config = self.config().await?;
            let limits = limits(&config);
            let federation = self.read::<Federation>(Kind::Federation, &region.federation).await?;
            validate::region(&region, federation.as_ref().map(|f| &f.value), &limits)?;
            let others = self.count(|s| {
                s.regions.values().filter(|r| r.value.federation == region.federation && r.value.name != region.name).count()
            });
            validate::room_for_one_more("region.federation", &region.federation, others, "regions", limits.max_regions_per_federation, "max_regions_per_federation")?;
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
                .when(self.config_unchanged(&config))
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
    /// spec is refused unless `replace`. The event is written with the node, and the write
    /// may share its transaction with other registrations ([`GroupCommit`]).
    pub async fn register_node(
        &self,
        node: Node,
        replace: bool,
        actor: &str,
    ) -> Result<Node, WriteError> {
        let node = fresh(node, RegistrationKind::Operator);
        let mut first_attempt = true;
        let registered = self
            .retry_via(Commit::Grouped, || {
                let from_state = std::mem::take(&mut first_attempt);
                let node = &node;
                async move {
                    if from_state {
                        let (placement, existing) = self.placement_seen(node);
                        let planned =
                            self.plan_registration(node, placement, existing, replace, actor);
                        if let Ok(write @ (_, Registered::Written(_))) = planned {
                            return Ok(write);
                        }
                        // The followed state may not have caught up with a write this
                        // caller just made (its federation, its region): a refusal or a
                        // no-op is decided on what the store holds.
                    }
                    let placement = self.placement(node).await?;
                    let existing = self.read::<Node>(Kind::Node, &node.id).await?;
                    self.plan_registration(node, placement, existing, replace, actor)
                }
            })
            .await?;
        match registered {
            Registered::Unchanged(existing) => Ok(existing),
            Registered::Written(event) => {
                self.events.written(event).await;
                Ok(node)
            }
        }
    }

    /// Registers a node for `owner` (the credential's actor name) with its liveness on
    /// `lease`. A node an operator registered, or one whose live lease another credential
    /// holds, is refused: a node credential cannot take over someone else's node. Refused
    /// too when another live registration holds the id with a different spec. The event
    /// is written with the node, and the write may share its transaction with other
    /// registrations ([`GroupCommit`]).
    pub async fn register_self(
        &self,
        node: Node,
        liveness: &Liveness,
        lease: LeaseId,
    ) -> Result<Node, WriteError> {
        let node = fresh(node, RegistrationKind::SelfRegistered);
        let key = self.keys.key(Kind::Node, &node.id);
        let liveness_key = self.keys.key(Kind::Liveness, &node.id);
        let owner = liveness.owner.as_str();
        let ttl_seconds = liveness.ttl_seconds;
        let (written, event) = self
            .retry_via(Commit::Grouped, || async {
                let (config, federation, region) = self.placement(&node).await?;
                validate::node(
                    &node,
                    federation.as_ref().map(|f| &f.value),
                    region.as_ref().map(|r| &r.value),
                    &limits(&config),
                )?;
                self.room_for_node(&node, &limits(&config))?;
                let existing = self.read::<Node>(Kind::Node, &node.id).await?;
                let live = self.read::<Liveness>(Kind::Liveness, &node.id).await?;
                if let Some(old) = &existing {
                    check_self_owned(old, live.as_ref(), owner)?;
                    if live.is_some() && !same_spec(&old.value, &node) {
                        return Err(duplicate(old));
                    }
                }
                let written = keep_held_status(node.clone(), existing.as_ref());
                let event = self.events.prepare(
                    EventKind::NodeRegistered,
                    format!("node/{}", node.id),
                    format!(
                        "self-registered at {} serving {} (lease {lease}, ttl {ttl_seconds}s)",
                        node.address,
                        node.services.join(", ")
                    ),
                    owner.to_owned(),
                );
                let txn = self
                    .placement_unchanged(&node, &config, federation.as_ref(), region.as_ref())
                    .when(unchanged(&key, existing.as_ref()))
                    .when(unchanged(&liveness_key, live.as_ref()))
                    .put(&key, keys::encode(&written))
                    .put_with_lease(&liveness_key, keys::encode(liveness), lease);
                Ok((event.written_by(txn), (written, event)))
            })
            .await?;
        self.events.written(event).await;
        Ok(written)
    }

    /// The liveness of node `id` as the store holds it now.
    pub async fn read_liveness(&self, id: &str) -> Result<Option<Stored<Liveness>>, WriteError> {
        self.read::<Liveness>(Kind::Liveness, id).await
    }

    /// Moves node `id`'s liveness onto `lease` as `adopted`, if it is still `current`.
    /// Returns whether it was moved.
    pub async fn adopt_liveness(
        &self,
        id: &str,
        current: &Stored<Liveness>,
        adopted: &Liveness,
        lease: LeaseId,
    ) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Liveness, id);
        let txn = Txn::new()
            .when(unchanged(&key, Some(current)))
            .put_with_lease(&key, keys::encode(adopted), lease);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Deletes node `id`'s liveness if the store still holds exactly `held` (nobody
    /// adopted, renewed or replaced it meanwhile): the node's keep-alives stopped. Returns
    /// whether it was deleted.
    pub async fn lapse_liveness(&self, id: &str, held: &Liveness) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Liveness, id);
        let txn = Txn::new()
            .when(Compare::Value {
                key: key.clone(),
                value: keys::encode(held),
            })
            .delete(&key);
        Ok(self.store.txn(txn).await?.succeeded)
    }

    /// Removes a node and its liveness at once (the liveness lease is shared with other
    /// nodes, so it stays). Returns whether it existed.
    pub async fn deregister_node(&self, id: &str, actor: &str) -> Result<bool, WriteError> {
        self.deregister_node_if(id, actor, |_, _| Ok(())).await
    }

    /// Removes a self-registered node for the credential that holds its live lease
    /// (`lease`, or 0 for whichever it holds); refuses anyone else. Returns whether it
    /// existed.
    pub async fn deregister_own_node(
        &self,
        id: &str,
        lease: LeaseId,
        owner: &str,
    ) -> Result<bool, WriteError> {
        self.deregister_node_if(id, owner, |node, live| {
            check_self_owned(node, live, owner)?;
            match live {
                Some(l) if lease == 0 || l.value.lease == lease => Ok(()),
                Some(_) => Err(WriteError::Forbidden(format!(
                    "lease {lease} is not the lease of node {id:?}; send the lease_id Register returned"
                ))),
                None => Err(WriteError::Forbidden(format!(
                    "node {id:?} holds no live lease; its lease lapsed, so only an operator can remove it (meridianctl nodes deregister {id})"
                ))),
            }
        })
        .await
    }

    async fn deregister_node_if(
        &self,
        id: &str,
        actor: &str,
        allowed: impl Fn(&Stored<Node>, Option<&Stored<Liveness>>) -> Result<(), WriteError>,
    ) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Node, id);
        let liveness_key = self.keys.key(Kind::Liveness, id);
        let existed = self
            .retry(|| async {
                let Some(existing) = self.read::<Node>(Kind::Node, id).await? else {
                    return Ok((Txn::new(), false));
                };
                let live = self.read::<Liveness>(Kind::Liveness, id).await?;
                allowed(&existing, live.as_ref())?;
                let txn = Txn::new()
                    .when(unchanged(&key, Some(&existing)))
                    .when(unchanged(&liveness_key, live.as_ref()))
                    .delete(&key)
                    .delete(&liveness_key);
                Ok((txn, true))
            })
            .await?;
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
        validate::text("reason", reason, &self.limits().await?)?;
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

    /// Deletes a node that has been `lost` longer than the retention period, with its
    /// liveness key (absent for a lost node, and required to stay so); `fence` makes the
    /// write conditional on this replica still leading. Returns false when the node
    /// changed meanwhile (it registered again) or the fence failed.
    pub async fn remove_lost(
        &self,
        node: &Stored<Node>,
        lost_for: std::time::Duration,
        fence: Compare,
    ) -> Result<bool, WriteError> {
        let key = self.keys.key(Kind::Node, &node.value.id);
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
            .delete(&key);
        if !self.store.txn(txn).await?.succeeded {
            return Ok(false);
        }
        self.event(
            EventKind::NodeDeregistered,
            format!("node/{}", node.value.id),
            format!(
                "removed: lost for {} min, longer than the retention period \
                 (config lost_node_retention_seconds)",
                lost_for.as_secs() / 60
            ),
            "lost-node retention",
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
            let config = self.config().await?;
            let limits = limits(&config);
            validate::service(
                &policy,
                federation.as_ref().map(|f| &f.value),
                &names,
                &limits,
            )?;
            let others = self.count(|s| {
                s.services
                    .values()
                    .filter(|p| {
                        p.value.federation == policy.federation && p.value.name != policy.name
                    })
                    .count()
            });
            validate::room_for_one_more(
                "service_policy.federation",
                &policy.federation,
                others,
                "service policies",
                limits.max_services_per_federation,
                "max_services_per_federation",
            )?;
            let existing = self
                .read::<ServicePolicy>(Kind::Service, &policy.name)
                .await?;
            let federation_key = self.keys.key(Kind::Federation, &policy.federation);
            let txn = Txn::new()
                .when(self.config_unchanged(&config))
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
    async fn retry<T, F, Fut>(&self, build: F) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(Txn, T), WriteError>>,
    {
        self.retry_via(Commit::Alone, build).await
    }

    /// [`Self::retry`], committing `via` the store alone or grouped with other writes.
    async fn retry_via<T, F, Fut>(&self, via: Commit, mut build: F) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(Txn, T), WriteError>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let (txn, outcome) = build().await?;
            if txn.ops.is_empty() {
                return Ok(outcome);
            }
            let result = match via {
                Commit::Alone => self.store.txn(txn).await?,
                Commit::Grouped => self.group.txn(txn).await?,
            };
            if result.succeeded {
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

    async fn placement(&self, node: &Node) -> Result<Placement, WriteError> {
        let config = self.config().await?;
        let federation = self.read(Kind::Federation, &node.federation).await?;
        let region = self.read(Kind::Region, &node.region).await?;
        Ok((config, federation, region))
    }

    /// The transaction that registers `node` by hand over `existing`, given its
    /// placement; nothing to write when the same spec is already registered.
    fn plan_registration(
        &self,
        node: &Node,
        (config, federation, region): Placement,
        existing: Option<Stored<Node>>,
        replace: bool,
        actor: &str,
    ) -> Result<(Txn, Registered), WriteError> {
        validate::node(
            node,
            federation.as_ref().map(|f| &f.value),
            region.as_ref().map(|r| &r.value),
            &limits(&config),
        )?;
        self.room_for_node(node, &limits(&config))?;
        if let Some(old) = &existing {
            if same_spec(&old.value, node) {
                return Ok((Txn::new(), Registered::Unchanged(old.value.clone())));
            }
            if !replace {
                return Err(duplicate(old));
            }
        }
        let event = self.events.prepare(
            EventKind::NodeRegistered,
            format!("node/{}", node.id),
            format!(
                "registered at {} serving {}",
                node.address,
                node.services.join(", ")
            ),
            actor.to_owned(),
        );
        let key = self.keys.key(Kind::Node, &node.id);
        let txn = self
            .placement_unchanged(node, &config, federation.as_ref(), region.as_ref())
            .when(unchanged(&key, existing.as_ref()))
            .put(&key, keys::encode(node))
            .delete(self.keys.key(Kind::Liveness, &node.id));
        Ok((event.written_by(txn), Registered::Written(event)))
    }

    /// What [`Self::placement`] and a read of the node's record would return, as this
    /// replica's followed state has them.
    fn placement_seen(&self, node: &Node) -> (Placement, Option<Stored<Node>>) {
        let state = self.events.state().borrow();
        let config = (state.config.mod_revision > 0).then(|| state.config.clone());
        (
            (
                config,
                state.federations.get(&node.federation).cloned(),
                state.regions.get(&node.region).cloned(),
            ),
            state.nodes.get(&node.id).cloned(),
        )
    }

    /// A transaction that holds only if the configuration and the node's federation and
    /// region did not change.
    fn placement_unchanged(
        &self,
        node: &Node,
        config: &Option<Stored<DynamicConfig>>,
        federation: Option<&Stored<Federation>>,
        region: Option<&Stored<Region>>,
    ) -> Txn {
        Txn::new()
            .when(self.config_unchanged(config))
            .when(unchanged(
                &self.keys.key(Kind::Federation, &node.federation),
                federation,
            ))
            .when(unchanged(
                &self.keys.key(Kind::Region, &node.region),
                region,
            ))
    }

    /// The dynamic configuration as stored; `None` when never set (the defaults).
    async fn config(&self) -> Result<Option<Stored<DynamicConfig>>, WriteError> {
        let Some(kv) = self.store.get(&self.keys.config()).await? else {
            return Ok(None);
        };
        Ok(Some(Stored {
            value: keys::decode(&kv.key, &kv.value)?,
            mod_revision: kv.mod_revision,
        }))
    }

    /// The limits on what callers can create, as the stored configuration sets them.
    pub async fn limits(&self) -> Result<TopologyLimits, WriteError> {
        Ok(limits(&self.config().await?))
    }

    fn config_unchanged(&self, config: &Option<Stored<DynamicConfig>>) -> Compare {
        unchanged(&self.keys.config(), config.as_ref())
    }

    /// Counts something in the followed state (see the module doc for why not the store).
    fn count(&self, count: impl FnOnce(&TopologyState) -> usize) -> usize {
        count(&self.events.state().borrow())
    }

    /// Refuses a node that would take its federation past `max_nodes_per_federation`;
    /// replacing a node already counted never does.
    fn room_for_node(&self, node: &Node, limits: &TopologyLimits) -> Result<(), WriteError> {
        let others = self.count(|s| {
            let counted = s
                .nodes
                .get(&node.id)
                .is_some_and(|n| n.value.federation == node.federation);
            s.nodes_in(&node.federation) - usize::from(counted)
        });
        validate::room_for_one_more(
            "node.federation",
            &node.federation,
            others,
            "nodes",
            limits.max_nodes_per_federation,
            "max_nodes_per_federation",
        )?;
        Ok(())
    }

    async fn event(&self, kind: EventKind, subject: String, message: String, actor: &str) {
        self.events
            .record(kind, subject, message, actor.to_owned())
            .await;
    }
}

/// The configuration, federation and region a node write depends on.
type Placement = (
    Option<Stored<DynamicConfig>>,
    Option<Stored<Federation>>,
    Option<Stored<Region>>,
);

fn limits(config: &Option<Stored<DynamicConfig>>) -> TopologyLimits {
    config
        .as_ref()
        .map_or_else(TopologyLimits::default, |c| c.value.limits())
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

/// `node` as registration writes it over `existing`: a held status (drained, failed,
/// quarantined; [`NodeStatus::is_held`]) stays with its reason and time.
fn keep_held_status(mut node: Node, existing: Option<&Stored<Node>>) -> Node {
    if let Some(old) = existing.filter(|old| old.value.status.is_held()) {
        node.status = old.value.status;
        node.status_reason = old.value.status_reason.clone();
        node.status_since = old.value.status_since;
    }
    node
}

/// Refuses NodeRegistry changes to a node an operator registered, or whose live lease
/// another credential (`owner` is the caller's actor name) holds.
fn check_self_owned(
    node: &Stored<Node>,
    live: Option<&Stored<Liveness>>,
    owner: &str,
) -> Result<(), WriteError> {
    let id = &node.value.id;
    if node.value.registration == RegistrationKind::Operator {
        return Err(WriteError::Forbidden(format!(
            "node {id:?} was registered by an operator; NodeRegistry cannot take it over or remove it (use meridianctl nodes)"
        )));
    }
    match live {
        Some(l) if l.value.owner != owner => Err(WriteError::Forbidden(format!(
            "node {id:?} is held by the live lease of another credential; use the credential that registered it, or wait for its lease to lapse"
        ))),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::topology::follower::StateFollower;

    /// A writer whose followed state is never updated: it only ever sees an empty
    /// topology, like a replica whose watch has not yet delivered the caller's last write.
    fn writer_with_a_state_that_lags() -> TopologyWriter {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/meridian/");
        let (_follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
        let events = EventLog::new(Arc::clone(&store), keys.clone(), state);
        TopologyWriter::new(store, keys, events)
    }

    #[tokio::test]
    async fn a_node_registers_into_a_federation_the_followed_state_has_not_seen_yet() {
        let writer = writer_with_a_state_that_lags();
        writer
            .upsert_federation(Federation {
                name: "prod".into(),
                allowed_networks: vec!["127.0.0.0/8".into()],
                ..Default::default()
            })
            .await
            .expect("creating the federation");
        writer
            .upsert_region(
                Region {
                    name: "eu-west".into(),
                    federation: "prod".into(),
                    zones: vec!["eu-west-a".into()],
                    ..Default::default()
                },
                "test",
            )
            .await
            .expect("creating the region");
        let node = Node {
            id: "eu-1".into(),
            address: "127.0.0.1:7001".into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            services: vec!["echo.Echo".into()],
            ..Default::default()
        };
        writer
            .register_node(node.clone(), false, "test")
            .await
            .expect("the store holds the federation and region: the node registers");
        // The same spec again is a no-op, also decided on the store.
        writer
            .register_node(node.clone(), false, "test")
            .await
            .expect("registering the same spec twice is a no-op");
        let other = Node {
            address: "127.0.0.1:7002".into(),
            ..node
        };
        let refused = writer.register_node(other, false, "test").await;
        assert!(
            matches!(&refused, Err(WriteError::Invalid(i)) if i.field == "node.id"),
            "a different spec without replace is refused, got {refused:?}"
        );
    }
}
