//! The proxies subscribed to this replica, for `meridianctl proxies` and the connected-
//! proxies gauge. Each record is also written to the store under this replica's lease, so
//! any replica can list every proxy of the federation, and a dead replica's proxies
//! disappear with its lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::keys::{self, Keys, Kind};
use crate::replica_lease::ReplicaLease;
use crate::store::{Store, StoreError, Txn};

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

pub struct ProxyRegistry {
    replica: String,
    keys: Keys,
    store: Arc<dyn Store>,
    lease: ReplicaLease,
    local: Mutex<HashMap<String, Entry>>,
}

impl ProxyRegistry {
    pub fn new(replica: String, keys: Keys, store: Arc<dyn Store>, lease: ReplicaLease) -> Self {
        ProxyRegistry {
            replica,
            keys,
            store,
            lease,
            local: Mutex::new(HashMap::new()),
        }
    }

    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Records a stream's proxy; a newer stream of the same proxy replaces an older one.
    pub async fn connected(&self, stream: u64, record: ProxyRecord) {
        self.local
            .lock()
            .expect("proxy registry lock poisoned")
            .insert(
                record.proxy_id.clone(),
                Entry {
                    stream,
                    record: record.clone(),
                },
            );
        self.update_gauge();
        self.persist(&record).await;
    }

    /// Changes the record of `proxy_id` if `stream` still owns it.
    pub async fn update(&self, stream: u64, proxy_id: &str, change: impl FnOnce(&mut ProxyRecord)) {
        let record = {
            let mut local = self.local.lock().expect("proxy registry lock poisoned");
            match local.get_mut(proxy_id) {
                Some(entry) if entry.stream == stream => {
                    change(&mut entry.record);
                    entry.record.clone()
                }
                _ => return,
            }
        };
        self.persist(&record).await;
    }

    /// Forgets the proxy if `stream` still owns its record.
    pub async fn disconnected(&self, stream: u64, proxy_id: &str) {
        let removed = {
            let mut local = self.local.lock().expect("proxy registry lock poisoned");
            match local.get(proxy_id) {
                Some(entry) if entry.stream == stream => local.remove(proxy_id).is_some(),
                _ => false,
            }
        };
        self.update_gauge();
        if removed {
            let key = self.key(proxy_id);
            if let Err(e) = self.store.txn(Txn::new().delete(key)).await {
                tracing::warn!(error = %e, proxy = proxy_id, "could not remove the proxy's record; it expires with this replica's lease");
            }
        }
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
        let local = self.local.lock().expect("proxy registry lock poisoned");
        let mut records: Vec<_> = local.values().map(|e| e.record.clone()).collect();
        records.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id));
        records
    }

    async fn list_stored(&self) -> Result<Vec<ProxyRecord>, StoreError> {
        let listing = self.store.list(&self.keys.dir(Kind::Proxy)).await?;
        let mut records: Vec<ProxyRecord> = listing
            .kvs
            .iter()
            .filter_map(|kv| keys::decode(&kv.key, &kv.value).ok())
            .collect();
        // Records written before this replica's lease was granted exist only locally.
        for record in self.local_records() {
            if !records
                .iter()
                .any(|r| r.proxy_id == record.proxy_id && r.replica == record.replica)
            {
                records.push(record);
            }
        }
        records.sort_by(|a, b| a.proxy_id.cmp(&b.proxy_id).then(a.replica.cmp(&b.replica)));
        Ok(records)
    }

    async fn persist(&self, record: &ProxyRecord) {
        let Some(lease) = self.lease.current() else {
            return;
        };
        let txn =
            Txn::new().put_with_lease(self.key(&record.proxy_id), keys::encode(record), lease);
        if let Err(e) = self.store.txn(txn).await {
            tracing::debug!(error = %e, proxy = %record.proxy_id, "could not store the proxy's record");
        }
    }

    fn key(&self, proxy_id: &str) -> String {
        format!("{}{proxy_id}", self.keys.proxies_of(&self.replica))
    }

    fn update_gauge(&self) {
        let connected = self
            .local
            .lock()
            .expect("proxy registry lock poisoned")
            .len();
        metrics::gauge!("meridian_control_connected_proxies").set(connected as f64);
    }
}
