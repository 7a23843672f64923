//! Keeps a [`TopologyState`] equal to the store: list everything, then watch from the
//! listing's revision. A watch that breaks is resumed from the last revision seen; a watch
//! whose revision was compacted away reloads the whole state and carries on. Readers get a
//! [`StateHandle`]: a cheap, always-current view plus change notifications.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meridian_shared::{Backoff, Shutdown};
use tokio::sync::watch;

use super::TopologyState;
use crate::keys::{Keys, Kind};
use crate::store::{Revision, Store, StoreError};

/// A read view of the followed state.
#[derive(Debug, Clone)]
pub struct StateHandle {
    rx: watch::Receiver<TopologyState>,
}

impl StateHandle {
    /// The current state. Do not hold the guard across an `.await`.
    pub fn borrow(&self) -> watch::Ref<'_, TopologyState> {
        self.rx.borrow()
    }

    /// A receiver notified after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<TopologyState> {
        self.rx.clone()
    }

    /// Whether the first full load has happened.
    pub fn is_loaded(&self) -> bool {
        self.rx.borrow().revision > 0
    }

    /// Waits until the state reflects at least `revision` (e.g. a write just made), or
    /// `timeout` passes; returns whether it got there.
    pub async fn wait_for(&self, revision: Revision, timeout: Duration) -> bool {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.revision >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// The task that follows the store.
pub struct StateFollower {
    store: Arc<dyn Store>,
    keys: Keys,
    tx: watch::Sender<TopologyState>,
}

impl StateFollower {
    pub fn new(store: Arc<dyn Store>, keys: Keys) -> (Self, StateHandle) {
        let (tx, rx) = watch::channel(TopologyState::default());
        (StateFollower { store, keys, tx }, StateHandle { rx })
    }

    /// Follows the store until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = self.follow() => {}
        }
    }

    async fn follow(&self) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut resume_from: Option<Revision> = None;
        loop {
            let from = match resume_from {
                Some(revision) => revision,
                None => match self.reload().await {
                    Ok(revision) => revision + 1,
                    Err(e) => {
                        store_error("list", &e);
                        tokio::time::sleep(backoff.next_delay()).await;
                        continue;
                    }
                },
            };
            match self.watch_from(from, &mut backoff).await {
                StoreError::Compacted {
                    requested,
                    compacted,
                } => {
                    tracing::warn!(
                        requested,
                        compacted,
                        "store history was compacted past this replica's watch; reloading the whole topology"
                    );
                    metrics::counter!("meridian_control_state_reloads_total", "reason" => "compacted").increment(1);
                    resume_from = None;
                }
                e => {
                    store_error("watch", &e);
                    tokio::time::sleep(backoff.next_delay()).await;
                    resume_from = Some(self.tx.borrow().revision + 1);
                }
            }
        }
    }

    /// Lists everything and replaces the state; returns the listing's revision.
    async fn reload(&self) -> Result<Revision, StoreError> {
        let listing = self.store.list(self.keys.root()).await?;
        let (state, errors) = TopologyState::from_listing(&self.keys, &listing);
        for error in errors {
            tracing::error!(%error, "skipping an unreadable stored value; fix or delete it with etcdctl");
        }
        let revision = state.revision;
        self.tx.send_replace(state);
        tracing::debug!(revision, "topology loaded from the store");
        Ok(revision)
    }

    /// Applies watch batches until the watch breaks; returns why.
    async fn watch_from(&self, from: Revision, backoff: &mut Backoff) -> StoreError {
        let mut stream = match self.store.watch(self.keys.root(), from).await {
            Ok(stream) => stream,
            Err(e) => return e,
        };
        while let Some(batch) = stream.next().await {
            let events = match batch {
                Ok(events) => events,
                Err(e) => return e,
            };
            backoff.reset();
            let events: Vec<_> = events
                .into_iter()
                .filter(|e| shapes_topology(&self.keys, e.key()))
                .collect();
            if events.is_empty() {
                continue;
            }
            self.tx.send_modify(|state| {
                for error in state.apply(&self.keys, &events) {
                    tracing::error!(%error, "skipping an unreadable stored value; fix or delete it with etcdctl");
                }
            });
        }
        StoreError::Unavailable("the watch stream ended".into())
    }
}

/// Whether a change to `key` can change the topology. Event history, proxy records and
/// the leader key cannot; they are left out so that writing them (one per ACK, event or
/// election) never wakes the table publisher or anything else that follows the state.
fn shapes_topology(keys: &Keys, key: &str) -> bool {
    match keys.parse(key) {
        Some((Kind::Event | Kind::Proxy | Kind::Load | Kind::Scaling, _)) => false,
        Some(_) => true,
        None => key == keys.config(),
    }
}

fn store_error(op: &'static str, error: &StoreError) {
    metrics::counter!("meridian_control_store_errors_total", "op" => op).increment(1);
    tracing::warn!(%error, op, "store call failed; retrying with backoff");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_topology_keys_wake_the_followers_of_the_state() {
        let keys = Keys::new("/meridian/");
        for key in [
            keys.key(Kind::Node, "eu-1"),
            keys.key(Kind::Federation, "prod"),
            keys.key(Kind::Liveness, "eu-1"),
            keys.config(),
        ] {
            assert!(shapes_topology(&keys, &key), "{key} shapes the topology");
        }
        for key in [
            format!("{}00000000000000000042-a1b2c3d4-7", keys.dir(Kind::Event)),
            format!("{}eu-proxy-1", keys.proxies_of("replica-a")),
            keys.leader(),
            format!("{}event-seq", keys.root()),
            keys.key(Kind::Load, "replica-a"),
            keys.key(Kind::Scaling, "demo.v1.Echo"),
        ] {
            assert!(!shapes_topology(&keys, &key), "{key} does not");
        }
    }
}
