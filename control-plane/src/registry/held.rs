//! The self-registered nodes this replica keeps alive, without one store call per
//! keep-alive.
//!
//! Liveness keys of the nodes a replica holds share one store lease per TTL, which the
//! replica renews every third of the TTL; a node's own keep-alive only moves its deadline
//! in memory. A node whose deadline passes has its liveness key deleted here, as the store
//! would have done at the end of a lease of its own, so "no keep-alive for one TTL means
//! gone" holds as before. When this replica dies, its leases run out within the TTL and
//! take the keys of the nodes it held with them, unless the nodes, reconnecting, reached
//! another replica first: a keep-alive for a node held elsewhere (or by nobody, a key of an
//! earlier build) moves its key onto this replica's lease ("adopts" it), and the other
//! replica's later delete no longer matches the key.
//!
//! A replica that cannot renew a shared lease (the store is away) refuses keep-alives with
//! `UNAVAILABLE`, so nodes go to a replica that can, instead of believing they are alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use meridian_shared::Shutdown;
use tokio::time::Instant;

use crate::store::{LeaseId, Store, StoreError};
use crate::topology::{Liveness, Stored, TopologyWriter, WriteError};

/// How often deadlines are checked: a lapsed node goes at most this long after its TTL.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum KeepAliveError {
    #[error(
        "this control-plane replica has not renewed its store lease for {ttl_seconds}s nodes for {silent_ms} ms (the store may be unreachable from it); keep alive through another replica"
    )]
    LeaseNotRenewed { ttl_seconds: u32, silent_ms: u128 },
    #[error(
        "node {0:?} changed while its liveness was being moved to this replica; send the keep-alive again"
    )]
    Moved(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Shared handle; cheap to clone.
#[derive(Clone)]
pub struct HeldNodes {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    writer: TopologyWriter,
    replica: String,
    /// One lease per TTL (seconds).
    leases: Mutex<HashMap<u32, SharedLease>>,
    /// Serialises grants, so concurrent first registrations of a TTL share one lease.
    granting: tokio::sync::Mutex<()>,
    held: Mutex<HashMap<String, Held>>,
}

#[derive(Clone, Copy)]
struct SharedLease {
    id: LeaseId,
    renewed: Instant,
}

struct Held {
    deadline: Instant,
    /// Exactly what this replica wrote: the lapse deletes the key only if it still is.
    liveness: Liveness,
}

fn ttl(seconds: u32) -> Duration {
    Duration::from_secs(u64::from(seconds))
}

impl HeldNodes {
    /// Starts the sweep of lapsed nodes, until `shutdown`. The shared leases are not
    /// revoked at shutdown: they run out within their TTL, so nodes have that long to
    /// reach another replica, which adopts them without a gap in routing.
    pub fn start(
        store: Arc<dyn Store>,
        writer: TopologyWriter,
        replica: String,
        shutdown: Shutdown,
    ) -> Self {
        let held = HeldNodes {
            inner: Arc::new(Inner {
                store,
                writer,
                replica,
                leases: Mutex::default(),
                granting: tokio::sync::Mutex::default(),
                held: Mutex::default(),
            }),
        };
        tokio::spawn(held.clone().sweep(shutdown));
        held
    }

    /// This replica's name, as liveness records it (`held_by`).
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The lease the liveness keys of nodes with this TTL go on, granted (and from then on
    /// renewed) on first use.
    pub async fn lease_for(&self, ttl_seconds: u32) -> Result<LeaseId, StoreError> {
        if let Some(lease) = self.live_lease(ttl_seconds) {
            return Ok(lease);
        }
        let _granting = self.inner.granting.lock().await;
        if let Some(lease) = self.live_lease(ttl_seconds) {
            return Ok(lease);
        }
        let id = self.inner.store.grant_lease(i64::from(ttl_seconds)).await?;
        self.leases().insert(
            ttl_seconds,
            SharedLease {
                id,
                renewed: Instant::now(),
            },
        );
        tokio::spawn(self.clone().renew(ttl_seconds, id));
        Ok(id)
    }

    /// Starts the keep-alive deadline of a node this replica just registered.
    pub fn hold(&self, node: &str, liveness: Liveness) {
        let deadline = Instant::now() + ttl(liveness.ttl_seconds);
        self.held_nodes()
            .insert(node.to_owned(), Held { deadline, liveness });
        metrics::gauge!("meridian_control_nodes_held").set(self.held_nodes().len() as f64);
    }

    /// Forgets a node that was deregistered.
    pub fn release(&self, node: &str) {
        self.held_nodes().remove(node);
    }

    /// One keep-alive of a node whose `live` liveness the caller checked it owns. Moves
    /// its deadline, adopting it first when another replica (or none) holds it. Returns
    /// the TTL left.
    pub async fn keep_alive(
        &self,
        node: &str,
        live: Stored<Liveness>,
    ) -> Result<u32, KeepAliveError> {
        let ttl_seconds = live.value.ttl_seconds;
        let mut live = live;
        for attempt in 0..2 {
            if live.value.held_by == self.inner.replica && self.touch(node, &live.value)? {
                return Ok(ttl_seconds);
            }
            let lease = self.lease_for(ttl_seconds).await?;
            let adopted = Liveness {
                held_by: self.inner.replica.clone(),
                ..live.value.clone()
            };
            if self
                .inner
                .writer
                .adopt_liveness(node, &live, &adopted, lease)
                .await?
            {
                tracing::info!(
                    node,
                    from = %live.value.held_by,
                    "this replica now keeps node {node:?} alive (its keep-alives moved here)"
                );
                metrics::counter!("meridian_control_nodes_adopted_total").increment(1);
                self.hold(node, adopted);
                return Ok(ttl_seconds);
            }
            // The followed state was behind the store: decide again on what it holds.
            if attempt == 0 {
                match self.inner.writer.read_liveness(node).await? {
                    Some(stored) if stored.value.lease == live.value.lease => live = stored,
                    _ => break,
                }
            }
        }
        Err(KeepAliveError::Moved(node.to_owned()))
    }

    /// Moves the deadline of a node this replica holds with exactly `liveness`; false when
    /// it holds no such node. Refused while the node's shared lease is not being renewed.
    fn touch(&self, node: &str, liveness: &Liveness) -> Result<bool, KeepAliveError> {
        let ttl_seconds = liveness.ttl_seconds;
        let renewed = self.leases().get(&ttl_seconds).map(|l| l.renewed);
        let Some(renewed) = renewed else {
            return Ok(false);
        };
        // Two missed renewals: the lease may be gone by the time the node next calls.
        let silent = renewed.elapsed();
        if silent > ttl(ttl_seconds) * 2 / 3 {
            return Err(KeepAliveError::LeaseNotRenewed {
                ttl_seconds,
                silent_ms: silent.as_millis(),
            });
        }
        let mut held = self.held_nodes();
        match held.get_mut(node) {
            Some(h) if h.liveness == *liveness => {
                h.deadline = Instant::now() + ttl(ttl_seconds);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Renews the shared lease `id` of `ttl_seconds` every third of its TTL until it is
    /// lost or replaced.
    async fn renew(self, ttl_seconds: u32, id: LeaseId) {
        let every = ttl(ttl_seconds) / 3;
        loop {
            tokio::time::sleep(every).await;
            if self.leases().get(&ttl_seconds).map(|l| l.id) != Some(id) {
                return;
            }
            match self.inner.store.keep_alive(id).await {
                Ok(_) => {
                    if let Some(lease) = self.leases().get_mut(&ttl_seconds) {
                        lease.renewed = Instant::now();
                    }
                }
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!(
                        lease = id,
                        ttl_seconds,
                        "the store lease of this replica's {ttl_seconds}s nodes expired (the store was unreachable for longer than the TTL); their liveness is gone and they will register again"
                    );
                    self.leases().remove(&ttl_seconds);
                    self.held_nodes()
                        .retain(|_, h| h.liveness.ttl_seconds != ttl_seconds);
                    return;
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    lease = id,
                    "could not renew the store lease of this replica's {ttl_seconds}s nodes; retrying in {every:?}"
                ),
            }
        }
    }

    /// Every [`SWEEP_EVERY`], deletes the liveness of held nodes past their deadline.
    async fn sweep(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let mut lapsed = Vec::new();
            self.held_nodes().retain(|node, h| {
                let keep = h.deadline > now;
                if !keep {
                    lapsed.push((node.clone(), h.liveness.clone()));
                }
                keep
            });
            for (node, liveness) in lapsed {
                self.lapse(&node, &liveness).await;
            }
        }
    }

    async fn lapse(&self, node: &str, liveness: &Liveness) {
        match self.inner.writer.lapse_liveness(node, liveness).await {
            Ok(true) => tracing::info!(
                node,
                "node {node:?} sent no keep-alive for {}s; its liveness lapsed",
                liveness.ttl_seconds
            ),
            // Adopted by another replica, re-registered or deregistered meanwhile.
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, node, "could not delete the liveness of node {node:?}, whose keep-alives stopped; retrying");
                let retry_at = Instant::now() + SWEEP_EVERY;
                self.held_nodes()
                    .entry(node.to_owned())
                    .or_insert_with(|| Held {
                        deadline: retry_at,
                        liveness: liveness.clone(),
                    });
            }
        }
    }

    fn live_lease(&self, ttl_seconds: u32) -> Option<LeaseId> {
        self.leases().get(&ttl_seconds).map(|l| l.id)
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<u32, SharedLease>> {
        self.inner.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn held_nodes(&self) -> MutexGuard<'_, HashMap<String, Held>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use meridian_shared::domain::{Federation, Node, Region};

    use super::*;
    use crate::events::EventLog;
    use crate::keys::{Keys, Kind};
    use crate::store::embedded::EmbeddedStore;
    use crate::topology::StateFollower;

    const TTL: u32 = 6;

    struct Replicas {
        store: Arc<dyn Store>,
        keys: Keys,
        writer: TopologyWriter,
        _shutdown: Shutdown,
        a: HeldNodes,
        b: HeldNodes,
    }

    /// Two replicas' held nodes on one store holding a federation with one region.
    async fn replicas() -> Replicas {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/held/");
        let (_follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
        let events = EventLog::new(Arc::clone(&store), keys.clone(), state);
        let writer = TopologyWriter::new(Arc::clone(&store), keys.clone(), events);
        writer
            .upsert_federation(Federation {
                name: "prod".into(),
                allowed_networks: vec!["127.0.0.0/8".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        writer
            .upsert_region(
                Region {
                    name: "eu".into(),
                    federation: "prod".into(),
                    zones: vec!["eu-a".into()],
                    ..Default::default()
                },
                "test",
            )
            .await
            .unwrap();
        let shutdown = Shutdown::new();
        let start = |name: &str| {
            HeldNodes::start(
                Arc::clone(&store),
                writer.clone(),
                name.into(),
                shutdown.clone(),
            )
        };
        Replicas {
            a: start("cp-a"),
            b: start("cp-b"),
            store: Arc::clone(&store),
            keys,
            writer,
            _shutdown: shutdown,
        }
    }

    impl Replicas {
        /// Registers node `id` through `replica`, as `Register` does.
        async fn register(&self, replica: &HeldNodes, id: &str) -> Liveness {
            let lease = replica.lease_for(TTL).await.unwrap();
            let liveness = Liveness {
                lease,
                ttl_seconds: TTL,
                registered_at: SystemTime::now(),
                owner: "node:test".into(),
                held_by: replica.replica().into(),
            };
            let node = Node {
                id: id.into(),
                address: "127.0.0.1:9000".into(),
                federation: "prod".into(),
                region: "eu".into(),
                zone: "eu-a".into(),
                services: vec!["demo.v1.Echo".into()],
                ..Default::default()
            };
            self.writer
                .register_self(node, &liveness, lease)
                .await
                .unwrap();
            replica.hold(id, liveness.clone());
            liveness
        }

        /// The liveness key of `id`: its value and the lease it is attached to.
        async fn liveness(&self, id: &str) -> Option<(Stored<Liveness>, LeaseId)> {
            let kv = self
                .store
                .get(&self.keys.key(Kind::Liveness, id))
                .await
                .unwrap()?;
            let value = crate::keys::decode(&kv.key, &kv.value).unwrap();
            Some((
                Stored {
                    value,
                    mod_revision: kv.mod_revision,
                },
                kv.lease,
            ))
        }

        async fn keep_alive(&self, replica: &HeldNodes, id: &str) -> Result<u32, KeepAliveError> {
            let (live, _) = self.liveness(id).await.expect("a live node");
            replica.keep_alive(id, live).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_share_a_lease_and_one_without_keep_alives_lapses_after_its_ttl() {
        let r = replicas().await;
        let first = r.register(&r.a, "n1").await;
        let second = r.register(&r.a, "n2").await;
        assert_eq!(
            first.lease, second.lease,
            "same TTL, same replica: one lease"
        );
        // n1 keeps alive every third of the TTL for three TTLs; n2 stays silent.
        for _ in 0..9 {
            tokio::time::sleep(ttl(TTL) / 3).await;
            assert_eq!(r.keep_alive(&r.a, "n1").await.unwrap(), TTL);
        }
        assert!(r.liveness("n1").await.is_some(), "n1 kept alive stays live");
        assert!(
            r.liveness("n2").await.is_none(),
            "n2, silent for a TTL, lapsed"
        );
        assert_eq!(r.liveness("n1").await.unwrap().1, first.lease);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_whose_keep_alives_move_to_another_replica_is_adopted_there() {
        let r = replicas().await;
        let registered = r.register(&r.a, "n1").await;
        r.keep_alive(&r.b, "n1").await.expect("adopted by cp-b");
        let (moved, lease) = r.liveness("n1").await.unwrap();
        assert_eq!(moved.value.held_by, "cp-b");
        assert_eq!(lease, r.b.lease_for(TTL).await.unwrap());
        assert_eq!(
            moved.value.lease, registered.lease,
            "the node keeps presenting the lease id Register returned"
        );
        // Keep-alives now reach cp-b only: cp-a's deadline passes without deleting it.
        for _ in 0..9 {
            tokio::time::sleep(ttl(TTL) / 3).await;
            r.keep_alive(&r.b, "n1").await.unwrap();
        }
        let (still, _) = r.liveness("n1").await.expect("cp-a did not delete it");
        assert_eq!(still.value.held_by, "cp-b");
        // Back to cp-a, which still remembers the node: it adopts it again.
        r.keep_alive(&r.a, "n1").await.unwrap();
        assert_eq!(r.liveness("n1").await.unwrap().0.value.held_by, "cp-a");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_on_a_lease_of_its_own_is_adopted_on_its_first_keep_alive() {
        let r = replicas().await;
        // What an earlier build wrote: a lease per node, no holder.
        let own = r.store.grant_lease(i64::from(TTL)).await.unwrap();
        let legacy = Liveness {
            lease: own,
            ttl_seconds: TTL,
            registered_at: SystemTime::now(),
            owner: "node:test".into(),
            held_by: String::new(),
        };
        let node = Node {
            id: "old".into(),
            address: "127.0.0.1:9000".into(),
            federation: "prod".into(),
            region: "eu".into(),
            zone: "eu-a".into(),
            services: vec!["demo.v1.Echo".into()],
            ..Default::default()
        };
        r.writer.register_self(node, &legacy, own).await.unwrap();
        r.keep_alive(&r.a, "old").await.unwrap();
        // The node's own lease runs out; the key now lives on cp-a's.
        for _ in 0..6 {
            tokio::time::sleep(ttl(TTL) / 3).await;
            r.keep_alive(&r.a, "old").await.unwrap();
        }
        let (live, lease) = r.liveness("old").await.expect("still live");
        assert_eq!(live.value.held_by, "cp-a");
        assert_ne!(lease, own);
    }
}
