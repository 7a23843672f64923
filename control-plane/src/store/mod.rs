//! The store: one key-value interface with etcd's semantics (revisions, transactions that
//! compare mod-revisions, watches that resume from a revision, leases), and two backends:
//! [`etcd::EtcdStore`] for production and every multi-replica setup, and
//! [`embedded::EmbeddedStore`] (in-process, optionally persisted to a file) for
//! `meridian-control --dev` and unit tests. Both pass the same behavioural suite
//! (`tests/tests/store_suite.rs`).
//!
//! Keys are strings (the full key, prefix included); values are bytes (versioned JSON,
//! see [`crate::keys`]). Revisions start at 1 and increase by one per successful write
//! transaction, across the whole store, as in etcd.

pub mod embedded;
pub mod etcd;
pub mod etcd_access;
pub mod etcd_keepers;
pub mod etcd_rotation;
pub mod group_commit;

use std::pin::Pin;

use futures::Stream;

/// A store revision (etcd's `revision`): increases with every successful write.
pub type Revision = i64;
/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// One key and its value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// The lease the key is attached to; 0 for none.
    pub lease: LeaseId,
}

/// All keys under a prefix, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store revision the read saw; watch from `revision + 1` to follow on.
    pub revision: Revision,
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod-revision equals this; 0 means "the key does not exist".
    ModRevision { key: String, revision: Revision },
    /// The key exists and holds exactly this value.
    Value { key: String, value: Vec<u8> },
}

/// A write inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create or replace; with a lease, the key is deleted when the lease expires.
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    /// Delete one key (no error if absent).
    Delete { key: String },
    /// Delete every key in `[start, end)` (etcd's range delete).
    DeleteRange { start: String, end: String },
}

/// All `compares` hold → all `ops` apply atomically at one new revision; otherwise nothing
/// changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }

    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        });
        self
    }

    pub fn put_with_lease(
        mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        });
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn delete_range(mut self, start: impl Into<String>, end: impl Into<String>) -> Self {
        self.ops.push(Op::DeleteRange {
            start: start.into(),
            end: end.into(),
        });
        self
    }
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the compares held and the ops were applied.
    pub succeeded: bool,
    /// The store revision after the transaction (the new one when it wrote).
    pub revision: Revision,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    /// `mod_revision` is the revision of the deletion.
    Delete {
        key: String,
        mod_revision: Revision,
    },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Batches of changes in revision order; all events of one transaction arrive in one batch.
/// Ends with an error when the watch breaks: [`StoreError::Compacted`] means reload and
/// watch again from the new listing; [`StoreError::Unavailable`] means watch again from
/// the last revision seen + 1.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Vec<WatchEvent>, StoreError>> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer; retry with backoff.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that compaction removed.
    #[error(
        "revision {requested} was compacted (store compacted up to {compacted}); reload and watch again"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The lease expired or was revoked (or never existed).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The request was refused for another reason (e.g. a value over the size limit).
    #[error("the store refused the request: {0}")]
    Rejected(String),
}

/// The store interface. Both backends implement it with the same observable behaviour.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// One key, or `None` when absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key starting with `prefix`, sorted, at one revision.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Applies `txn` atomically if its compares hold.
    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError>;

    /// Changes to keys starting with `prefix`, from revision `from` (inclusive) on.
    /// `from` older than the last compaction → `Err(Compacted)` (either at once or as the
    /// stream's first item).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;

    /// A new lease that expires `ttl_seconds` after its last keep-alive.
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId, StoreError>;

    /// Refreshes a lease; returns its TTL in seconds. `Err(LeaseNotFound)` once expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError>;

    /// Ends a lease now, deleting its keys. Revoking an unknown lease is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Drops history before `revision` (watches from older revisions get `Compacted`).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
}

/// The end of the key range holding every key that starts with `prefix` (etcd's
/// "prefix end"): the prefix with its last byte incremented.
pub fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\0".to_owned()
}
