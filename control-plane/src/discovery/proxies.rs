//! The proxies subscribed to this replica, for `meridianctl proxies` and the connected-
//! proxies gauge. Records change in memory only (a stream opening, an ACK, a NACK costs
//! no store write); a flusher writes the changed ones to the store in batches, under this
//! replica's lease, so any replica can list every proxy of the federation (at most one
//! flush interval behind for other replicas' proxies) and a dead replica's proxies
//! disappear with its lease. Proxy records live outside the topology the control plane
//! follows, so writing them never wakes the table publisher.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meridian_shared::Shutdown;

use serde::{Deserialize, Serialize};

use crate::keys::{self, Keys, Kind};
use crate::replica_lease::ReplicaLease;
use crate::store::{LeaseId, Store, StoreError, Txn};

/// How long changes gather before they are written: one store write per interval at
/// most, however many proxies connect, ACK or NACK meanwhile.
const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Writes per store transaction (etcd refuses more than 128 operations in one).
const OPS_PER_TXN: usize = 100;

/// One proxy's subscription, as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyRecord {
    pub proxy_id: String,
    pub federation: String,
    pub region: String,
    pub zone: String,
    pub acked_version: u64,
    pub sent_version: u64,
    pub last_nack: Option<NackRecord>,
    pub connected_since: SystemTime,
    pub peer_address: String,
    pub replica: String,
    pub build_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackRecord {
    pub version: u64,
    pub error: String,
    pub at: SystemTime,
}

struct Entry {
    stream: u64,
    record: ProxyRecord,
}

/// What this replica's proxies look like in memory, and what the store has not seen yet.
#[derive(Default)]
struct Local {
    entries: HashMap<String, Entry>,
    /// Proxies whose record changed since the last flush.
    dirty: HashSet<String>,
    /// Proxies that disconnected since the last flush.
    gone: HashSet<String>,
}

pub struct ProxyRegistry {
    replica: String,
    keys: Keys,
    store: Arc<dyn Store>,
    lease: ReplicaLease,
    local: Mutex<Local>,
    changed: tokio::sync::Notify,
}

impl ProxyRegistry {
    pub fn new(replica: String, keys: Keys, store: Arc<dyn Store>, lease: ReplicaLease) -> Self {
        ProxyRegistry {
            replica,
            keys,
            store,
            lease,
            local: Mutex::new(Local::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Records a stream's proxy; a newer stream of the same proxy replaces an older one.
    pub fn connected(&self, stream: u64, record: ProxyRecord) {
        let connected = {
            let mut local = self.lock();
            let proxy_id = record.proxy_id.clone();
            local.gone.remove(&proxy_id);
            local.dirty.insert(proxy_id.clone());
            local.entries.insert(proxy_id, Entry { stream, record });
            local.entries.len()
        };
        set_gauge(connected);
        self.changed.notify_one();
    }

    /// Changes the record of `proxy_id` if `stream` still owns it.
    pub fn update(&self, stream: u64, proxy_id: &str, change: impl FnOnce(&mut ProxyRecord)) {
        {
            let mut local = self.lock();
            match local.entries.get_mut(proxy_id) {
                Some(entry) if entry.stream == stream => change(&mut entry.record),
                _ => return,
            }
            local.dirty.insert(proxy_id.to_owned());
        }
        self.changed.notify_one();
    }

    /// Forgets the proxy if `stream` still owns its record.
    pub fn disconnected(&self, stream: u64, proxy_id: &str) {
        let connected = {
            let mut local = self.lock();
            match local.entries.get(proxy_id) {
                Some(entry) if entry.stream == stream => {
                    local.entries.remove(proxy_id);
                    local.dirty.remove(proxy_id);
                    local.gone.insert(proxy_id.to_owned());
                }
                _ => return,
            }
            local.entries.len()
        };
        set_gauge(connected);
        self.changed.notify_one();
    }

    /// Writes changed records to the store until `shutdown`, at most once per
    /// [`FLUSH_INTERVAL`]. A new replica lease (the old one expired, taking the records
    /// with it) rewrites every record.
    pub async fn flush_until(self: Arc<Self>, shutdown: Shutdown) {
        let mut lease_changes = self.lease.subscribe();
        let mut written_on: Option<LeaseId> = None;
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.changed.notified() => {}
                changed = lease_changes.changed() => if changed.is_err() { return },
            }
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(FLUSH_INTERVAL) => {}
            }
            let Some(lease) = self.lease.current() else {
                continue;
            };
            if written_on != Some(lease) {
                let mut local = self.lock();
                let all: Vec<String> = local.entries.keys().cloned().collect();
                local.dirty.extend(all);
                written_on = Some(lease);
            }
            self.flush(lease).await;
        }
    }

    /// Writes what changed since the last flush; what could not be written stays
    /// pending for the next one.
    async fn flush(&self, lease: LeaseId) {
        let (puts, deletes) = {
            let mut local = self.lock();
            let dirty = std::mem::take(&mut local.dirty);
            let puts: Vec<(String, Vec<u8>)> = dirty
                .iter()
                .filter_map(|id| local.entries.get(id))
                .map(|e| (e.record.proxy_id.clone(), keys::encode(&e.record)))
                .collect();
            (puts, std::mem::take(&mut local.gone))
        };
        let mut failed_puts = Vec::new();
        for batch in puts.chunks(OPS_PER_TXN) {
            let txn = batch.iter().fold(Txn::new(), |txn, (id, value)| {
                txn.put_with_lease(self.key(id), value.clone(), lease)
            });
            if let Err(e) = self.store.txn(txn).await {
                tracing::warn!(error = %e, records = batch.len(), "could not store proxy records; retrying at the next flush");
                failed_puts.extend(batch.iter().map(|(id, _)| id.clone()));
            }
        }
        let deletes: Vec<String> = deletes.into_iter().collect();
        let mut failed_deletes = Vec::new();
        for batch in deletes.chunks(OPS_PER_TXN) {
            let txn = batch
                .iter()
                .fold(Txn::new(), |txn, id| txn.delete(self.key(id)));
            if let Err(e) = self.store.txn(txn).await {
                tracing::warn!(error = %e, records = batch.len(), "could not remove proxy records; retrying at the next flush (they expire with this replica's lease anyway)");
                failed_deletes.extend_from_slice(batch);
            }
        }
        if failed_puts.is_empty() && failed_deletes.is_empty() {
            return;
        }
        let mut local = self.lock();
        for id in failed_puts {
            if local.entries.contains_key(&id) {
                local.dirty.insert(id);
            }
        }
        for id in failed_deletes {
            if !local.entries.contains_key(&id) {
                local.gone.insert(id);
            }
        }
        drop(local);
        self.changed.notify_one();
    }

    /// Every proxy of every replica, from the store; this replica's own when the store
    /// cannot be read.
    pub async fn list(&self) -> Vec<ProxyRecord> {
        match self.list_stored().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list proxies from the store; showing this replica's only");
                self.local_records()
            }
        }
    }

    fn local_records(&self) -> Vec<ProxyRecord> {
        let local = self.lock();
        let mut records: Vec<_> = local.entries.values().map(|e| e.record.clone()).collect();
        records.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        records
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().expect("proxy registry lock poisoned")
    }

    async fn list_stored(&self) -> Result<Vec<ProxyRecord>, StoreError> {
        let listing = self.store.list(&self.keys.dir(Kind::Proxy)).await?;
        // This replica's own proxies come from memory (exact and current); the store
        // holds the other replicas' as of their last flush.
        let mut records: Vec<ProxyRecord> = listing
            .kvs
            .iter()
            .filter_map(|kv| keys::decode::<ProxyRecord>(&kv.key, &kv.value).ok())
            .filter(|r| r.replica != self.replica)
            .collect();
        records.extend(self.local_records());
        records.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id).then(a.replica.cmp(&b.replica)));
        Ok(records)
    }

    fn key(&self, proxy_id: &str) -> String {
        format!("{}{proxy_id}", self.keys.proxies_of(&self.replica))
    }
}

fn set_gauge(connected: usize) {
    metrics::gauge!("meridian_control_connected_proxies").set(connected as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn record(proxy_id: &str) -> ProxyRecord {
        ProxyRecord {
            proxy_id: proxy_id.into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            acked_version: 0,
            sent_version: 0,
            last_nack: None,
            connected_since: SystemTime::UNIX_EPOCH,
            peer_address: "127.0.0.1:1".into(),
            replica: "cp-a".into(),
            build_version: "test".into(),
        }
    }

    async fn stored(store: &Arc<dyn Store>, keys: &Keys) -> Vec<ProxyRecord> {
        let listing = store.list(&keys.dir(Kind::Proxy)).await.unwrap();
        listing
            .kvs
            .iter()
            .map(|kv| keys::decode(&kv.key, &kv.value).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn records_reach_the_store_in_batches_not_one_write_per_ack() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/t/");
        let shutdown = Shutdown::new();
        let lease = ReplicaLease::start(Arc::clone(&store), shutdown.clone());
        let registry = Arc::new(ProxyRegistry::new(
            "cp-a".into(),
            keys.clone(),
            Arc::clone(&store),
            lease,
        ));
        tokio::spawn(Arc::clone(&registry).flush_until(shutdown.clone()));
        let before = store.revision().await.unwrap();

        for stream in 0..150 {
            registry.connected(stream, record(&format!("p{stream:03}")));
        }
        for stream in 0..150 {
            registry.update(stream, &format!("p{stream:03}"), |r| r.acked_version = 7);
        }
        // This replica lists its own proxies from memory at once.
        let listed = registry.list().await;
        assert_eq!(listed.len(), 150);
        assert!(listed.iter().all(|r| r.acked_version == 7));

        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let records = stored(&store, &keys).await;
            if records.len() == 150 && records.iter().all(|r| r.acked_version == 7) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the flusher did not store the records: {} stored",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let writes = store.revision().await.unwrap() - before;
        assert!(
            writes <= 4,
            "150 connects and 150 ACKs took {writes} store writes; they must be batched"
        );

        // A disconnect removes the record at the next flush; a stale stream cannot.
        registry.disconnected(999, "p000");
        registry.disconnected(1, "p001");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<String> = stored(&store, &keys)
                .await
                .into_iter()
                .map(|r| r.proxy_id)
                .collect();
            if !ids.contains(&"p001".to_owned()) {
                assert!(
                    ids.contains(&"p000".to_owned()),
                    "a stale stream removed p000"
                );
                assert_eq!(ids.len(), 149);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "p001's record was never removed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.trigger();
    }
}
