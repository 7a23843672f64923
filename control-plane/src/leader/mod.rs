//! Leader election among control-plane replicas through the store. A replica leads while
//! it holds `{prefix}v1/leader`, created only if absent and attached to the replica's
//! election lease: if the leader dies, the lease lapses within its TTL, the key goes, and
//! a waiting replica takes it. Only the leader runs reconcilers ([`reconcilers`]), and
//! their writes carry a [`Leadership::fence`]: a compare on the leader key's revision, so
//! a deposed leader's late write changes nothing.

pub mod failback;
pub mod lease_expiry;
pub mod reconcilers;
pub mod retention;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meridian_shared::domain::EventKind;
use meridian_shared::{Backoff, Shutdown};
use tokio::sync::watch;

use crate::events::EventLog;
use crate::keys::Keys;
use crate::store::{Compare, LeaseId, Revision, Store, StoreError, Txn};

/// Proof of leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    key: String,
    /// The leader key's mod-revision when this replica took it.
    revision: Revision,
    lease: LeaseId,
}

impl Leadership {
    /// A compare that holds only while this leadership lasts.
    pub fn fence(&self) -> Compare {
        Compare::ModRevision {
            key: self.key.clone(),
            revision: self.revision,
        }
    }
}

/// Who leads, as seen by this replica.
#[derive(Clone)]
pub struct LeaderHandle {
    rx: watch::Receiver<Option<Leadership>>,
}

impl LeaderHandle {
    pub fn current(&self) -> Option<Leadership> {
        self.rx.borrow().clone()
    }

    pub fn is_leader(&self) -> bool {
        self.rx.borrow().is_some()
    }

    pub fn subscribe(&self) -> watch::Receiver<Option<Leadership>> {
        self.rx.clone()
    }
}

pub struct LeaderElection {
    store: Arc<dyn Store>,
    keys: Keys,
    replica: String,
    ttl_seconds: u32,
    events: EventLog,
    tx: watch::Sender<Option<Leadership>>,
}

impl LeaderElection {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        replica: String,
        ttl_seconds: u32,
        events: EventLog,
    ) -> (Self, LeaderHandle) {
        let (tx, rx) = watch::channel(None);
        let election = LeaderElection {
            store,
            keys,
            replica,
            ttl_seconds,
            events,
            tx,
        };
        (election, LeaderHandle { rx })
    }

    /// Campaigns, leads, and campaigns again after losing, until `shutdown`; then resigns
    /// so another replica takes over at once instead of after the TTL.
    pub async fn run(self, shutdown: Shutdown) {
        metrics::gauge!("meridian_control_leader").set(0.0);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_triggered() {
            let result = tokio::select! {
                _ = shutdown.wait() => break,
                result = self.campaign_and_lead(&shutdown) => result,
            };
            self.step_down();
            match result {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: store call failed; retrying");
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        let resigning = self.tx.borrow().clone();
        if let Some(leadership) = resigning {
            let _ = self.store.revoke_lease(leadership.lease).await;
        }
        self.step_down();
    }

    /// One round: wait for the key to be free, take it, hold it until the lease is lost.
    async fn campaign_and_lead(&self, shutdown: &Shutdown) -> Result<(), StoreError> {
        let key = self.keys.leader();
        let lease = self.store.grant_lease(i64::from(self.ttl_seconds)).await?;
        loop {
            let txn = Txn::new()
                .when(Compare::ModRevision {
                    key: key.clone(),
                    revision: 0,
                })
                .put_with_lease(&key, self.replica.clone().into_bytes(), lease);
            let result = self.store.txn(txn).await?;
            if result.succeeded {
                let leadership = Leadership {
                    key: key.clone(),
                    revision: result.revision,
                    lease,
                };
                return self.lead(leadership, shutdown).await;
            }
            self.wait_for_vacancy(&key, lease).await?;
        }
    }

    /// Blocks while another replica holds the key, keeping our own lease alive.
    async fn wait_for_vacancy(&self, key: &str, lease: LeaseId) -> Result<(), StoreError> {
        let Some(holder) = self.store.get(key).await? else {
            return Ok(());
        };
        tracing::info!(leader = %String::from_utf8_lossy(&holder.value), "following the leader");
        let mut watch = self.store.watch(key, holder.mod_revision + 1).await?;
        let mut keep_alive = tokio::time::interval(self.keep_alive_interval());
        keep_alive.tick().await;
        loop {
            tokio::select! {
                batch = watch.next() => match batch {
                    Some(Ok(events)) => {
                        if events.iter().any(|e| matches!(e, crate::store::WatchEvent::Delete { .. })) {
                            return Ok(());
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Err(StoreError::Unavailable("the leader watch ended".into())),
                },
                _ = keep_alive.tick() => {
                    self.store.keep_alive(lease).await?;
                }
            }
        }
    }

    async fn lead(&self, leadership: Leadership, shutdown: &Shutdown) -> Result<(), StoreError> {
        let lease = leadership.lease;
        tracing::info!(replica = %self.replica, "this replica is now the leader");
        metrics::gauge!("meridian_control_leader").set(1.0);
        self.tx.send_replace(Some(leadership));
        self.events
            .record(
                EventKind::LeaderElected,
                format!("replica/{}", self.replica),
                format!("{} leads the control plane", self.replica),
                "election".into(),
            )
            .await;
        let ttl = Duration::from_secs(u64::from(self.ttl_seconds));
        let mut last_refresh = tokio::time::Instant::now();
        let mut keep_alive = tokio::time::interval(self.keep_alive_interval());
        keep_alive.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return Ok(()),
                _ = keep_alive.tick() => {}
            }
            match self.store.keep_alive(lease).await {
                Ok(_) => last_refresh = tokio::time::Instant::now(),
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!(replica = %self.replica, "leadership lost: the election lease expired");
                    return Ok(());
                }
                Err(e) if last_refresh.elapsed() >= ttl => {
                    tracing::warn!(error = %e, "leadership lost: the lease could not be refreshed within its TTL");
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "refreshing the election lease failed; retrying")
                }
            }
        }
    }

    fn step_down(&self) {
        if self.tx.send_replace(None).is_some() {
            tracing::info!(replica = %self.replica, "this replica stepped down as leader");
        }
        metrics::gauge!("meridian_control_leader").set(0.0);
    }

    /// A third of the TTL, at least one second.
    fn keep_alive_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.ttl_seconds) * 1000 / 3).max(Duration::from_secs(1))
    }
}
