//! The event log: what happened to the federation (nodes registered, lost, drained...),
//! kept in the store as a bounded history so every replica can serve
//! `meridianctl events`. Sequence numbers come from a counter key bumped in the same
//! transaction as the event, so they are gap-free and ordered across replicas; events
//! beyond the configured history limit are trimmed in that transaction too.

use std::sync::Arc;
use std::time::SystemTime;

use meridian_shared::domain::{Event, EventKind};

use crate::keys::{self, DecodeError, Keys};
use crate::store::{Compare, Revision, Store, StoreError, Txn};
use crate::topology::StateHandle;

/// How often a record retries when other replicas record at the same moment.
const RECORD_ATTEMPTS: usize = 20;

#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    keys: Keys,
    state: StateHandle,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>, keys: Keys, state: StateHandle) -> Self {
        EventLog { store, keys, state }
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
        match self.try_record(kind, subject, message, cause).await {
            Ok(seq) => Some(seq),
            Err(e) => {
                tracing::error!(error = %e, kind = %kind, "could not store the event; it is only in this log");
                None
            }
        }
    }

    async fn try_record(
        &self,
        kind: EventKind,
        subject: String,
        message: String,
        cause: String,
    ) -> Result<u64, StoreError> {
        let limit = self.state.borrow().config.value.event_history_limit();
        let seq_key = self.keys.event_seq();
        for _ in 0..RECORD_ATTEMPTS {
            let current = self.store.get(&seq_key).await?;
            let (last, revision) = match &current {
                Some(kv) => (
                    keys::decode::<u64>(&kv.key, &kv.value)
                        .map_err(|e| StoreError::Rejected(e.to_string()))?,
                    kv.mod_revision,
                ),
                None => (0, 0),
            };
            let seq = last + 1;
            let event = Event {
                seq,
                at: SystemTime::now(),
                kind,
                subject: subject.clone(),
                message: message.clone(),
                cause: cause.clone(),
            };
            let mut txn = Txn::new()
                .when(Compare::ModRevision {
                    key: seq_key.clone(),
                    revision,
                })
                .put(seq_key.clone(), keys::encode(&seq))
                .put(self.keys.event(seq), keys::encode(&event));
            if seq > limit {
                txn = txn.delete_range(self.keys.event(0), self.keys.event(seq - limit + 1));
            }
            if self.store.txn(txn).await?.succeeded {
                metrics::counter!("meridian_control_events_total", "kind" => kind.as_str())
                    .increment(1);
                return Ok(seq);
            }
        }
        Err(StoreError::Rejected(format!(
            "gave up recording an event after {RECORD_ATTEMPTS} concurrent-write conflicts"
        )))
    }

    /// Stored events with `seq >= since`, oldest first, and the revision they were read at.
    pub async fn since(&self, since: u64) -> Result<(Vec<Event>, Revision), EventReadError> {
        let listing = self.store.list(&self.keys.dir(keys::Kind::Event)).await?;
        let mut events = Vec::with_capacity(listing.kvs.len());
        for kv in &listing.kvs {
            let event: Event = keys::decode(&kv.key, &kv.value)?;
            if event.seq >= since {
                events.push(event);
            }
        }
        Ok((events, listing.revision))
    }

    /// Decodes an event put seen by a watch of the events directory.
    pub fn decode(&self, key: &str, value: &[u8]) -> Result<Event, DecodeError> {
        keys::decode(key, value)
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

#[derive(Debug, thiserror::Error)]
pub enum EventReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}
