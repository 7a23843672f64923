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
//! An event can also be written inside the transaction of the change it describes
//! ([`EventLog::prepare`]), so that the two are stored together or not at all; node
//! registrations do this, and their transactions may be committed several at once
//! ([`crate::store::group_commit`]), so one store revision can create several events.
//!
//! **An event's sequence number is the store revision that created its key, times
//! [`SEQ_PER_REVISION`], plus the log's append count `n` (from the key) modulo
//! [`SEQ_PER_REVISION`].** Revisions increase across the whole store and every replica,
//! so sequence numbers are ordered across replicas and events of one transaction (one
//! log's appends, prepared within a few milliseconds of each other) get distinct ones;
//! numbers are not consecutive. Readers order by it, never by key: the time in a key
//! comes from the writer's clock, which differs between replicas. The `seq` written inside
//! the value is 0 (the revision is not known before the write); events stored by earlier
//! builds, under `events/{seq:020}`, hold their old counter value there, and are read with
//! their revision like the rest.
//!
//! **Trimming** also needs no compare: on its first append and then on every tenth of
//! the history limit, a log lists the events and deletes the oldest (by sequence number)
//! beyond the limit. Deleting is idempotent, so replicas trimming at once agree. The history
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
/// Sequence numbers per store revision: one transaction can create this many events
/// with distinct numbers.
pub const SEQ_PER_REVISION: u64 = 1000;

/// An event ready to be written inside another transaction ([`EventLog::prepare`]).
pub struct PreparedEvent {
    event: Event,
    key: String,
    /// This log's append count when the event was prepared.
    n: u64,
}

impl PreparedEvent {
    /// `txn` that also stores this event (under a key no other event has).
    pub fn written_by(&self, txn: Txn) -> Txn {
        txn.when(Compare::ModRevision {
            key: self.key.clone(),
            revision: 0,
        })
        .put(&self.key, keys::encode(&self.event))
    }

    /// The event's sequence number once written by a transaction that committed at
    /// `revision`.
    pub fn seq(&self, revision: Revision) -> u64 {
        seq_of(revision, self.n)
    }
}

#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    keys: Keys,
    state: StateHandle,
    /// Names this log's keys apart from other replicas' (and other processes').
    writer: String,
    /// Events this log (and its clones) prepared so far, stored or not: the `n` of keys.
    appended: Arc<AtomicU64>,
    /// Events this log (and its clones) stored so far: every tenth of the history limit,
    /// a trim.
    stored: Arc<AtomicU64>,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>, keys: Keys, state: StateHandle) -> Self {
        EventLog {
            store,
            keys,
            state,
            writer: format!("{:08x}", rand::random::<u32>()),
            appended: Arc::new(AtomicU64::new(0)),
            stored: Arc::new(AtomicU64::new(0)),
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
        let mut attempt = 0;
        loop {
            let event = self.prepare(kind, subject.clone(), message.clone(), cause.clone());
            let written = self.store.txn(event.written_by(Txn::new())).await;
            match written {
                Ok(result) if result.succeeded => {
                    let seq = event.seq(result.revision);
                    self.written(event).await;
                    return Some(seq);
                }
                Ok(_) if attempt + 1 < RECORD_ATTEMPTS => attempt += 1,
                Ok(_) => {
                    tracing::error!(kind = %kind, "could not store the event: every event key tried was taken ({RECORD_ATTEMPTS} attempts); it is only in this log");
                    self.log(&event.event);
                    return None;
                }
                Err(e) => {
                    tracing::error!(error = %e, kind = %kind, "could not store the event; it is only in this log");
                    self.log(&event.event);
                    return None;
                }
            }
        }
    }

    /// An event for the caller to write inside its own transaction
    /// ([`PreparedEvent::written_by`]); once that transaction committed, the caller hands
    /// the event to [`Self::written`]. Prepare it right before the transaction is built:
    /// events prepared [`SEQ_PER_REVISION`] appends apart must not share a transaction.
    pub fn prepare(
        &self,
        kind: EventKind,
        subject: String,
        message: String,
        cause: String,
    ) -> PreparedEvent {
        let n = self.appended.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let key = self.keys.key(
            keys::Kind::Event,
            &format!("{nanos:020}-{}-{n}", self.writer),
        );
        let event = Event {
            seq: 0,
            at: SystemTime::now(),
            kind,
            subject,
            message,
            cause,
        };
        PreparedEvent { event, key, n }
    }

    /// After the transaction that wrote `event` committed: logs and counts it, and trims
    /// the history when it is this append's turn.
    pub async fn written(&self, event: PreparedEvent) {
        self.log(&event.event);
        let kind = event.event.kind;
        metrics::counter!("meridian_control_events_total", "kind" => kind.as_str()).increment(1);
        let limit = self.state.borrow().config.value.event_history_limit();
        let stored = self.stored.fetch_add(1, Ordering::Relaxed);
        if stored.is_multiple_of(trim_every(limit))
            && let Err(e) = self.trim(limit).await
        {
            tracing::warn!(error = %e, "could not trim the event history to {limit} events; a later event will try again");
        }
    }

    fn log(&self, event: &Event) {
        tracing::info!(kind = %event.kind, subject = %event.subject, cause = %event.cause, "{}", event.message);
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
        kvs.sort_unstable_by_key(|kv| seq_of(kv.create_revision, append_count(&kv.key)));
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
        event.seq = seq_of(kv.create_revision, append_count(&kv.key));
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

/// The sequence number of the event that a log's `n`th append wrote at `revision`.
/// Revisions start at 1, so every stored event's is positive.
fn seq_of(revision: Revision, n: u64) -> u64 {
    let revision = u64::try_from(revision).unwrap_or(0);
    revision * SEQ_PER_REVISION + n % SEQ_PER_REVISION
}

/// The append count `n` in an event key `{nanos}-{writer}-{n}`; 0 for the keys of earlier
/// builds (`{seq:020}`), one per revision.
fn append_count(key: &str) -> u64 {
    let name = key.rsplit('/').next().unwrap_or(key);
    match name.rsplitn(3, '-').collect::<Vec<_>>()[..] {
        [n, _writer, _nanos] => n.parse().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_one_revision_get_distinct_ordered_numbers() {
        let dir = "/meridian/v1/events/";
        let key = |n: u64| format!("{dir}01764470000000000000-a1b2c3d4-{n}");
        assert_eq!(append_count(&key(0)), 0);
        assert_eq!(append_count(&key(1234)), 1234);
        assert_eq!(seq_of(42, append_count(&key(7))), 42_007);
        assert_eq!(seq_of(42, append_count(&key(1007))), 42_007);
        assert!(seq_of(42, append_count(&key(999))) < seq_of(43, 0));
        // Earlier builds' keys: one event per revision.
        assert_eq!(append_count(&format!("{dir}00000000000000000042")), 0);
    }
}
