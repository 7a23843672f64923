//! The event log: what happened to the federation (nodes registered, lost, drained...),
//! kept in the store as a bounded history so every replica can serve
//! `meridianctl events`.
//!
//! **Appending** is one put of a new key, `events/{unix nanos}-{writer}-{n}` (`writer`
//! random per log, `n` counting this log's appends), created only if absent. Writers
//! therefore never contend: an earlier design bumped one counter key with a
//! compare-and-swap per event, and under 64 concurrent Admin writes most attempts
//! conflicted, so events were lost after 20 retries each.
//!
//! **An event's sequence number is the store revision that created its key.** Revisions
//! increase across the whole store and every replica, so sequence numbers are unique and
//! ordered, but not consecutive (other writes take the revisions in between). Readers
//! order by it, never by key: the time in a key comes from the writer's clock, which
//! differs between replicas. The `seq` written inside the value is 0 (the revision is not
//! known before the write); events stored by earlier builds, under `events/{seq:020}`,
//! hold their old counter value there, and are read with their revision like the rest.
//!
//! **Trimming** also needs no compare: on its first append and then on every tenth of
//! the history limit, a log lists the events and deletes the oldest (by revision) beyond
//! the limit. Deleting is idempotent, so replicas trimming at once agree. The history
//! may thus exceed `event_history_limit` between trims, by less than a tenth of the limit
//! per replica recording events; the cost of a trim is spread over the appends between
//! trims, about ten listed events per append whatever the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use meridian_shared::domain::{Event, EventKind};

use crate::keys::{self, DecodeError, Keys};
use crate::store::{Compare, KeyValue, Revision, Store, StoreError, Txn};
use crate::topology::StateHandle;

/// Puts of a fresh key before giving up; a key is only taken twice if two logs drew the
/// same random writer id and counted to the same append in the same nanosecond.
const RECORD_ATTEMPTS: usize = 3;
/// Deletes per trimming transaction, below etcd's default limit of 128 operations.
const DELETE_BATCH: usize = 100;

#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    keys: Keys,
    state: StateHandle,
    /// Names this log's keys apart from other replicas' (and other processes').
    writer: String,
    /// Appends by this log (and its clones) so far.
    appended: Arc<AtomicU64>,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>, keys: Keys, state: StateHandle) -> Self {
        EventLog {
            store,
            keys,
            state,
            writer: format!("{:08x}", rand::random::<u32>()),
            appended: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records an event and returns its sequence number. Failures are logged, not
    /// returned: an event that cannot be stored must not undo the change it describes.
    pub async fn record(
        &self,
        kind: EventKind,
        subject: String,
        message: String,
        cause: String,
    ) -> Option<u64> {
        tracing::info!(kind = %kind, %subject, %cause, "{message}");
        let event = Event {
            seq: 0,
            at: SystemTime::now(),
            kind,
            subject,
            message,
            cause,
        };
        let n = self.appended.fetch_add(1, Ordering::Relaxed);
        let seq = match self.append(&event, n).await {
            Ok(seq) => seq,
            Err(e) => {
                tracing::error!(error = %e, kind = %kind, "could not store the event; it is only in this log");
                return None;
            }
        };
        metrics::counter!("meridian_control_events_total", "kind" => kind.as_str()).increment(1);
        let limit = self.state.borrow().config.value.event_history_limit();
        if n.is_multiple_of(trim_every(limit))
            && let Err(e) = self.trim(limit).await
        {
            tracing::warn!(error = %e, "could not trim the event history to {limit} events; a later event will try again");
        }
        Some(seq)
    }

    /// Puts `event` under a new key; returns the revision that created it.
    async fn append(&self, event: &Event, n: u64) -> Result<u64, StoreError> {
        let value = keys::encode(event);
        for _ in 0..RECORD_ATTEMPTS {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let key = self.keys.key(
                keys::Kind::Event,
                &format!("{nanos:020}-{}-{n}", self.writer),
            );
            let txn = Txn::new()
                .when(Compare::ModRevision {
                    key: key.clone(),
                    revision: 0,
                })
                .put(key, value.clone());
            let result = self.store.txn(txn).await?;
            if result.succeeded {
                return Ok(seq_of(result.revision));
            }
        }
        Err(StoreError::Rejected(format!(
            "every event key tried was taken ({RECORD_ATTEMPTS} attempts)"
        )))
    }

    /// Deletes the oldest events beyond `limit`; returns how many it deleted.
    async fn trim(&self, limit: u64) -> Result<usize, StoreError> {
        let listing = self.store.list(&self.keys.dir(keys::Kind::Event)).await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let excess = listing.kvs.len().saturating_sub(limit);
        if excess == 0 {
            return Ok(0);
        }
        let mut kvs = listing.kvs;
        kvs.sort_unstable_by_key(|kv| kv.create_revision);
        for batch in kvs[..excess].chunks(DELETE_BATCH) {
            let txn = batch
                .iter()
                .fold(Txn::new(), |txn, kv| txn.delete(kv.key.clone()));
            self.store.txn(txn).await?;
        }
        tracing::debug!(deleted = excess, limit, "trimmed the event history");
        Ok(excess)
    }

    /// Stored events with `seq >= since`, oldest first, and the revision they were read at.
    pub async fn since(&self, since: u64) -> Result<(Vec<Event>, Revision), EventReadError> {
        let listing = self.store.list(&self.keys.dir(keys::Kind::Event)).await?;
        let mut events = Vec::with_capacity(listing.kvs.len());
        for kv in &listing.kvs {
            let event = self.decode(kv)?;
            if event.seq >= since {
                events.push(event);
            }
        }
        events.sort_unstable_by_key(|e| e.seq);
        Ok((events, listing.revision))
    }

    /// Reads a stored event (from a listing or a watch of the events directory), its
    /// sequence number taken from the revision that created it.
    pub fn decode(&self, kv: &KeyValue) -> Result<Event, DecodeError> {
        let mut event: Event = keys::decode(&kv.key, &kv.value)?;
        event.seq = seq_of(kv.create_revision);
        Ok(event)
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The followed state this log reads its history limit from.
    pub fn state(&self) -> &StateHandle {
        &self.state
    }
}

/// How many appends a log makes from one trim to the next: a tenth of the history limit.
fn trim_every(limit: u64) -> u64 {
    (limit / 10).max(1)
}

/// Revisions start at 1, so every stored event's is positive.
fn seq_of(revision: Revision) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum EventReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
