//! A lease this replica keeps alive for as long as it runs. Records that describe the
//! replica's own connections (its proxies) are attached to it, so they vanish from the
//! store within the TTL when the replica dies, and other replicas stop listing them.

use std::sync::Arc;
use std::time::Duration;

use meridian_shared::{Backoff, Shutdown};
use tokio::sync::watch;

use crate::store::{LeaseId, Store, StoreError};

/// TTL of the replica lease. Keep-alives go every third of it, never more often than
/// every 5 s (etcd 3.4 drops idle watch streams under faster keep-alive traffic).
pub const REPLICA_LEASE_TTL: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct ReplicaLease {
    rx: watch::Receiver<Option<LeaseId>>,
}

impl ReplicaLease {
    /// Starts keeping a lease alive until `shutdown`, then revokes it.
    pub fn start(store: Arc<dyn Store>, shutdown: Shutdown) -> Self {
        let (tx, rx) = watch::channel(None);
        tokio::spawn(keep(store, tx, shutdown));
        ReplicaLease { rx }
    }

    /// A receiver told whenever the lease is granted anew (or lost).
    pub fn subscribe(&self) -> watch::Receiver<Option<LeaseId>> {
        self.rx.clone()
    }

    /// The current lease, once granted.
    pub fn current(&self) -> Option<LeaseId> {
        *self.rx.borrow()
    }
}

async fn keep(store: Arc<dyn Store>, tx: watch::Sender<Option<LeaseId>>, shutdown: Shutdown) {
    let ttl = i64::try_from(REPLICA_LEASE_TTL.as_secs()).unwrap_or(15);
    let interval = (REPLICA_LEASE_TTL / 3).max(Duration::from_secs(5));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let lease = tokio::select! {
            _ = shutdown.wait() => return,
            granted = store.grant_lease(ttl) => granted,
        };
        let lease = match lease {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(error = %e, "cannot grant this replica's lease; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        backoff.reset();
        tx.send_replace(Some(lease));
        loop {
            tokio::select! {
                _ = shutdown.wait() => {
                    let _ = store.revoke_lease(lease).await;
                    return;
                }
                _ = tokio::time::sleep(interval) => {}
            }
            match store.keep_alive(lease).await {
                Ok(_) => {}
                Err(StoreError::LeaseNotFound(_)) => {
                    tracing::warn!(lease, "this replica's lease expired; granting a new one");
                    tx.send_replace(None);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, lease, "keep-alive of this replica's lease failed; retrying")
                }
            }
        }
    }
}
