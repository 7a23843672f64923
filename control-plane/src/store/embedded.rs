//! The embedded backend: the whole store in this process, for `meridian-control --dev`
//! and unit tests, optionally persisted to one JSON file.
//!
//! It reproduces etcd's observable behaviour rather than approximating it, so code tested
//! against it behaves the same against etcd (`tests/tests/store_suite.rs` runs one suite
//! against both): one global revision (1 when empty, +1 per transaction that changed
//! something), create/mod revisions, compares evaluated before anything is written,
//! watches that replay retained history from a revision and then follow live changes with
//! one batch per transaction, compaction, and leases whose expiry deletes their keys in
//! one transaction.
//!
//! Trade-offs, chosen for simplicity over throughput:
//! - One `std::sync::Mutex` guards all state; it is never held across an `.await`.
//! - Watch history is the last [`HISTORY_EVENTS`] events in memory. Dropping older history
//!   works like a compaction: watching from before it yields [`StoreError::Compacted`].
//!   Live changes reach watchers through a bounded broadcast channel; a watcher that falls
//!   behind it catches up from the history, and only gets `Compacted` once the history
//!   it needs is gone, so it never silently misses events.
//! - When file-backed, every change is applied to a copy of the data, written to a temp
//!   file in the same directory, fsynced and renamed over the snapshot, and only then
//!   made visible: a failed write leaves the store as it was. Rewriting the whole file per
//!   write is fine for a dev store's size. History is not persisted: after reopening,
//!   watching from a revision before the reopen point yields `Compacted`; leases restart
//!   with a full TTL.
//! - Lease deadlines use `tokio::time`, so paused-time tests control expiry. A background
//!   task expires leases at their deadlines (so watchers see the deletions promptly), and
//!   every operation also expires overdue leases first, so nothing can observe a lease
//!   past its deadline.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio::time::{Duration, Instant};

use super::{
    Compare, KeyValue, LeaseId, Listing, Op, Revision, Store, StoreError, Txn, TxnResult,
    WatchEvent, WatchStream,
};

/// How many events of watch history are kept in memory.
pub const HISTORY_EVENTS: usize = 10_000;
/// How many transactions the live broadcast buffers before a slow watcher has to catch up
/// from the history.
const LIVE_BUFFER: usize = 1024;
/// The smallest lease TTL; shorter requests are raised to it, as etcd raises them to its
/// minimum (derived from its election timeout, 1 s with the test harness's settings).
const MIN_LEASE_TTL: i64 = 1;
/// etcd's largest lease TTL (`MaxLeaseTTL`); longer requests are refused, as etcd does.
const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// How long the expiry task waits before retrying an expiry it could not persist.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);
/// The snapshot file format this build writes and reads.
const SNAPSHOT_FORMAT: u32 = 1;

/// Why a store file could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot read the store file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the store file {} is not a valid store snapshot: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the store file {} is inconsistent: {reason}", path.display())]
    Inconsistent { path: PathBuf, reason: String },
    #[error("cannot write the store file {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

// === impl EmbeddedStore ===

/// The in-process store. Wrap it in an `Arc` to share it as `Arc<dyn Store>`.
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    /// Wakes the expiry task when a lease is granted (or the store is dropped).
    expiry_wakeup: Arc<Notify>,
    expiry_task_started: AtomicBool,
}

/// What watchers and the expiry task reach through a `Weak`, so that neither keeps a
/// dropped store alive.
struct Shared {
    state: Mutex<State>,
    /// Every committed transaction's events, for live watchers.
    live: broadcast::Sender<Arc<Batch>>,
}

impl EmbeddedStore {
    /// An empty store that lives only in memory.
    pub fn in_memory() -> Self {
        Self::with_state(State::new(Data::empty(), None))
    }

    /// A store persisted to the JSON snapshot at `path`: loaded if the file exists,
    /// created (with its parent directory) if it does not.
    pub fn open(path: &Path) -> Result<Self, EmbeddedError> {
        let data = match fs::read(path) {
            Ok(bytes) => Snapshot::decode(path, &bytes, Instant::now())?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::create_dir_all(dir).map_err(|source| EmbeddedError::Write {
                        path: path.to_owned(),
                        source,
                    })?;
                }
                let data = Data::empty();
                // Writing at once surfaces an unwritable location at startup rather than at
                // the first write.
                write_snapshot(path, &data)?;
                data
            }
            Err(source) => {
                return Err(EmbeddedError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(Self::with_state(State::new(data, Some(path.to_owned()))))
    }

    fn with_state(state: State) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let store = EmbeddedStore {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                live,
            }),
            expiry_wakeup: Arc::new(Notify::new()),
            expiry_task_started: AtomicBool::new(false),
        };
        store.ensure_expiry_task();
        store
    }

    /// The state, with overdue leases expired first.
    fn state(&self) -> MutexGuard<'_, State> {
        self.ensure_expiry_task();
        let mut state = self.shared.lock_state();
        state.expire_due(&self.shared.live, Instant::now());
        state
    }

    /// Starts the expiry task once a tokio runtime is available: at construction when
    /// there is one, else at the first operation (every operation is async, so runs on
    /// one).
    fn ensure_expiry_task(&self) {
        if self.expiry_task_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.expiry_task_started.swap(true, Ordering::AcqRel) {
            runtime.spawn(expire_leases(
                Arc::downgrade(&self.shared),
                self.expiry_wakeup.clone(),
            ));
        }
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Lets the expiry task notice that the store is gone and end.
        self.expiry_wakeup.notify_one();
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Every change validates before it mutates and cannot panic halfway, so the data
        // behind a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Expires leases at their deadlines until the store is dropped.
async fn expire_leases(shared: Weak<Shared>, wakeup: Arc<Notify>) {
    loop {
        let next_deadline = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut state = shared.lock_state();
            let now = Instant::now();
            state.expire_due(&shared.live, now);
            // A deadline still in the past means its expiry could not be persisted.
            state
                .data
                .leases
                .values()
                .map(|lease| lease.deadline)
                .min()
                .map(|deadline| {
                    if deadline <= now {
                        now + EXPIRY_RETRY
                    } else {
                        deadline
                    }
                })
        };
        match next_deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = wakeup.notified() => {}
                }
            }
            None => wakeup.notified().await,
        }
    }
}

#[tonic::async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let state = self.state();
        Ok(state.data.kvs.get(key).map(|entry| entry.to_key_value(key)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let state = self.state();
        let kvs = state
            .data
            .kvs
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| entry.to_key_value(key))
            .collect();
        Ok(Listing {
            kvs,
            revision: state.data.revision,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut state = self.state();
        let live = &self.shared.live;
        state.commit(live, |data| {
            check_txn_shape(&txn.ops)?;
            if !txn.compares.iter().all(|c| data.holds(c)) {
                let result = TxnResult {
                    succeeded: false,
                    revision: data.revision,
                };
                return Ok((result, Effect::None));
            }
            data.check_leases(&txn.ops)?;
            let events = data.apply(&txn.ops);
            let result = TxnResult {
                succeeded: true,
                revision: data.revision,
            };
            Ok((result, Effect::events(events)))
        })
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let state = self.state();
        // etcd reads a start revision of 0 as "from now on".
        let from = if from <= 0 {
            state.data.revision + 1
        } else {
            from
        };
        let (rx, replay) = state.replay(&self.shared.live, prefix, from)?;
        drop(state);
        let watcher = Watcher {
            shared: Arc::downgrade(&self.shared),
            prefix: prefix.to_owned(),
            next: replay.next,
            pending: replay.batches,
            rx,
            finished: false,
        };
        Ok(Box::pin(futures::stream::unfold(
            watcher,
            |mut watcher| async move {
                let item = watcher.next_batch().await?;
                Some((item, watcher))
            },
        )))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseId, StoreError> {
        if ttl_seconds > MAX_LEASE_TTL {
            return Err(StoreError::Rejected(format!(
                "lease TTL {ttl_seconds}s is over the limit of {MAX_LEASE_TTL}s"
            )));
        }
        let ttl = ttl_seconds.max(MIN_LEASE_TTL);
        let mut state = self.state();
        let deadline = Instant::now() + ttl_duration(ttl);
        let id = state.commit(&self.shared.live, |data| {
            let id = data.new_lease_id();
            data.leases.insert(
                id,
                Lease {
                    ttl,
                    deadline,
                    keys: BTreeSet::new(),
                },
            );
            Ok((id, Effect::Metadata))
        })?;
        drop(state);
        self.expiry_wakeup.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<i64, StoreError> {
        let mut state = self.state();
        // Only the deadline changes, and deadlines are not persisted.
        let entry = state
            .data
            .leases
            .get_mut(&lease)
            .ok_or(StoreError::LeaseNotFound(lease))?;
        entry.deadline = Instant::now() + ttl_duration(entry.ttl);
        Ok(entry.ttl)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.state();
        state.commit(&self.shared.live, |data| Ok(((), data.revoke(lease))))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = self.state();
        if revision > state.data.revision {
            return Err(StoreError::Rejected(format!(
                "cannot compact to revision {revision}: the store is at revision {}",
                state.data.revision
            )));
        }
        if revision <= state.data.compacted {
            return Ok(());
        }
        state.commit(&self.shared.live, |data| {
            data.compacted = revision;
            Ok(((), Effect::Metadata))
        })?;
        state.drop_history_before(revision);
        Ok(())
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.state().data.revision)
    }
}

fn ttl_duration(ttl: i64) -> Duration {
    // Grants clamp TTLs into [MIN_LEASE_TTL, MAX_LEASE_TTL], so the cast cannot wrap.
    Duration::from_secs(ttl.max(0) as u64)
}

// === impl State ===

/// Everything behind the lock: the data and the watch history.
struct State {
    data: Data,
    /// Committed transactions, oldest first, all with revision >= `history_floor`.
    history: VecDeque<Arc<Batch>>,
    /// Events in `history`.
    history_events: usize,
    /// The oldest revision the history still covers.
    history_floor: Revision,
    /// The snapshot file, when persisted.
    file: Option<PathBuf>,
}

/// One committed transaction's events.
#[derive(Debug)]
struct Batch {
    revision: Revision,
    events: Vec<WatchEvent>,
}

/// What a change did, which decides what to persist and publish.
enum Effect {
    /// Nothing changed.
    None,
    /// Only lease or compaction metadata changed: persist, publish nothing.
    Metadata,
    /// Keys changed at a new revision: persist and publish.
    Events(Vec<WatchEvent>),
}

impl Effect {
    fn events(events: Vec<WatchEvent>) -> Self {
        if events.is_empty() {
            Effect::None
        } else {
            Effect::Events(events)
        }
    }
}

/// A watcher's starting point: the history it replays and where live events take over.
struct Replay {
    batches: VecDeque<Vec<WatchEvent>>,
    next: Revision,
}

impl State {
    fn new(data: Data, file: Option<PathBuf>) -> Self {
        // History starts now: nothing before the current revision can be replayed (for a
        // new store there is nothing before anyway).
        let history_floor = data.revision + 1;
        State {
            data,
            history: VecDeque::new(),
            history_events: 0,
            history_floor,
            file,
        }
    }

    /// The oldest revision a watch can start from.
    fn watch_floor(&self) -> Revision {
        self.data.compacted.max(self.history_floor)
    }

    /// Applies `change` to the data and, if it changed anything, persists and publishes
    /// it. When file-backed, `change` runs on a copy that replaces the data only once it
    /// is on disk. In memory, `change` runs on the data itself, so it must return its
    /// errors before mutating anything.
    fn commit<R>(
        &mut self,
        live: &broadcast::Sender<Arc<Batch>>,
        change: impl FnOnce(&mut Data) -> Result<(R, Effect), StoreError>,
    ) -> Result<R, StoreError> {
        let (result, effect) = match &self.file {
            Some(path) => {
                let mut next = self.data.clone();
                let (result, effect) = change(&mut next)?;
                if !matches!(effect, Effect::None) {
                    write_snapshot(path, &next)
                        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                    self.data = next;
                }
                (result, effect)
            }
            None => change(&mut self.data)?,
        };
        if let Effect::Events(events) = effect {
            self.publish(live, events);
        }
        Ok(result)
    }

    fn publish(&mut self, live: &broadcast::Sender<Arc<Batch>>, events: Vec<WatchEvent>) {
        let batch = Arc::new(Batch {
            revision: self.data.revision,
            events,
        });
        self.history_events += batch.events.len();
        self.history.push_back(batch.clone());
        // Whole transactions go, oldest first; the newest stays even if it alone is over
        // the limit.
        while self.history_events > HISTORY_EVENTS && self.history.len() > 1 {
            if let Some(oldest) = self.history.pop_front() {
                self.history_events -= oldest.events.len();
                self.history_floor = oldest.revision + 1;
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = live.send(batch);
    }

    fn drop_history_before(&mut self, revision: Revision) {
        while self.history.front().is_some_and(|b| b.revision < revision) {
            if let Some(oldest) = self.history.pop_front() {
                self.history_events -= oldest.events.len();
            }
        }
    }

    /// Expires every lease whose deadline has passed, each in its own transaction as
    /// etcd does. An expiry that cannot be persisted is retried later.
    fn expire_due(&mut self, live: &broadcast::Sender<Arc<Batch>>, now: Instant) {
        let mut due: Vec<(Instant, LeaseId)> = self
            .data
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, lease)| (lease.deadline, *id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            if let Err(error) = self.commit(live, |data| Ok(((), data.revoke(id)))) {
                tracing::warn!(lease = id, %error, "cannot expire lease; retrying later");
                return;
            }
        }
    }

    /// The retained history under `prefix` from revision `from` on, and a receiver for
    /// everything after it. Called with the lock held, so nothing falls between the two.
    fn replay(
        &self,
        live: &broadcast::Sender<Arc<Batch>>,
        prefix: &str,
        from: Revision,
    ) -> Result<(broadcast::Receiver<Arc<Batch>>, Replay), StoreError> {
        let floor = self.watch_floor();
        if from < floor {
            return Err(StoreError::Compacted {
                requested: from,
                compacted: floor,
            });
        }
        let mut replay = Replay {
            batches: VecDeque::new(),
            next: from,
        };
        for batch in self.history.iter().filter(|b| b.revision >= from) {
            replay.next = batch.revision + 1;
            let events = under_prefix(batch, prefix);
            if !events.is_empty() {
                replay.batches.push_back(events);
            }
        }
        Ok((live.subscribe(), replay))
    }
}

fn under_prefix(batch: &Batch, prefix: &str) -> Vec<WatchEvent> {
    batch
        .events
        .iter()
        .filter(|event| event.key().starts_with(prefix))
        .cloned()
        .collect()
}

// === impl Data ===

/// The keys, leases and revisions: what the snapshot file holds.
#[derive(Clone)]
struct Data {
    revision: Revision,
    /// The last compaction revision; 0 when never compacted.
    compacted: Revision,
    kvs: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
}

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    create_revision: Revision,
    mod_revision: Revision,
    lease: LeaseId,
}

#[derive(Clone)]
struct Lease {
    ttl: i64,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl Entry {
    fn to_key_value(&self, key: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

/// Refuses what etcd refuses before looking at the data: empty keys, and a key written
/// twice (put twice, or put and deleted) in one transaction.
fn check_txn_shape(ops: &[Op]) -> Result<(), StoreError> {
    let mut put_keys = BTreeSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op {
            if key.is_empty() {
                return Err(StoreError::Rejected("a put has an empty key".to_owned()));
            }
            if !put_keys.insert(key.as_str()) {
                return Err(StoreError::Rejected(format!(
                    "key {key:?} is put twice in one transaction"
                )));
            }
        }
    }
    for op in ops {
        let overlaps = match op {
            Op::Put { .. } => continue,
            Op::Delete { key } if key.is_empty() => {
                return Err(StoreError::Rejected("a delete has an empty key".to_owned()));
            }
            Op::DeleteRange { start, .. } if start.is_empty() => {
                return Err(StoreError::Rejected(
                    "a range delete has an empty start key".to_owned(),
                ));
            }
            Op::Delete { key } => put_keys.contains(key.as_str()),
            Op::DeleteRange { start, end } => put_keys.iter().any(|k| in_range(k, start, end)),
        };
        if overlaps {
            return Err(StoreError::Rejected(
                "a key is both put and deleted in one transaction".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Whether `key` is in etcd's range `[start, end)`: an empty `end` means just `start`, and
/// `"\0"` means no upper bound.
fn in_range(key: &str, start: &str, end: &str) -> bool {
    match end {
        "" => key == start,
        "\0" => key >= start,
        _ => key >= start && key < end,
    }
}

impl Data {
    fn empty() -> Self {
        Data {
            revision: 1,
            compacted: 0,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
        }
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::ModRevision { key, revision } => {
                self.kvs.get(key).map_or(0, |e| e.mod_revision) == *revision
            }
            Compare::Value { key, value } => self.kvs.get(key).is_some_and(|e| e.value == *value),
        }
    }

    fn check_leases(&self, ops: &[Op]) -> Result<(), StoreError> {
        for op in ops {
            if let Op::Put {
                lease: Some(lease), ..
            } = op
                && *lease != 0
                && !self.leases.contains_key(lease)
            {
                return Err(StoreError::LeaseNotFound(*lease));
            }
        }
        Ok(())
    }

    /// Applies checked ops at the next revision; the revision moves only if something
    /// changed (deleting absent keys changes nothing, as in etcd).
    fn apply(&mut self, ops: &[Op]) -> Vec<WatchEvent> {
        let revision = self.revision + 1;
        let mut events = Vec::new();
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let kv = self.put(key, value, lease.unwrap_or(0), revision);
                    events.push(WatchEvent::Put(kv));
                }
                Op::Delete { key } => events.extend(self.delete(key, revision)),
                Op::DeleteRange { start, end } => {
                    let keys: Vec<String> = self.keys_in_range(start, end);
                    events.extend(keys.iter().filter_map(|k| self.delete(k, revision)));
                }
            }
        }
        if !events.is_empty() {
            self.revision = revision;
        }
        events
    }

    fn keys_in_range(&self, start: &str, end: &str) -> Vec<String> {
        let upper = match end {
            "" => Bound::Included(start),
            "\0" => Bound::Unbounded,
            // BTreeMap::range panics on an inverted range; etcd's is just empty.
            _ if end <= start => return Vec::new(),
            _ => Bound::Excluded(end),
        };
        self.kvs
            .range::<str, _>((Bound::Included(start), upper))
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn put(&mut self, key: &str, value: &[u8], lease: LeaseId, revision: Revision) -> KeyValue {
        let create_revision = match self.kvs.get(key).map(|e| (e.create_revision, e.lease)) {
            Some((create_revision, old_lease)) => {
                if old_lease != lease {
                    self.detach(key, old_lease);
                }
                create_revision
            }
            None => revision,
        };
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.keys.insert(key.to_owned());
        }
        let entry = Entry {
            value: value.to_vec(),
            create_revision,
            mod_revision: revision,
            lease,
        };
        let kv = entry.to_key_value(key);
        self.kvs.insert(key.to_owned(), entry);
        kv
    }

    fn delete(&mut self, key: &str, revision: Revision) -> Option<WatchEvent> {
        let entry = self.kvs.remove(key)?;
        self.detach(key, entry.lease);
        Some(WatchEvent::Delete {
            key: key.to_owned(),
            mod_revision: revision,
        })
    }

    fn detach(&mut self, key: &str, lease: LeaseId) {
        if let Some(entry) = self.leases.get_mut(&lease) {
            entry.keys.remove(key);
        }
    }

    /// Ends a lease and deletes its keys in one transaction.
    fn revoke(&mut self, lease: LeaseId) -> Effect {
        let Some(entry) = self.leases.remove(&lease) else {
            return Effect::None;
        };
        let revision = self.revision + 1;
        let events: Vec<WatchEvent> = entry
            .keys
            .iter()
            .filter_map(|key| self.delete(key, revision))
            .collect();
        if events.is_empty() {
            return Effect::Metadata;
        }
        self.revision = revision;
        Effect::Events(events)
    }

    /// A positive id not in use (etcd's ids are positive too).
    fn new_lease_id(&self) -> LeaseId {
        loop {
            let id = (rand::random::<u64>() >> 1) as LeaseId;
            if id != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }
}

// === impl Watcher ===

/// One watch: replayed batches first, then live ones, catching up from the history
/// whenever it falls behind the live broadcast.
struct Watcher {
    shared: Weak<Shared>,
    prefix: String,
    /// The next revision this watcher has not seen.
    next: Revision,
    pending: VecDeque<Vec<WatchEvent>>,
    rx: broadcast::Receiver<Arc<Batch>>,
    finished: bool,
}

impl Watcher {
    async fn next_batch(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Some(Ok(batch));
            }
            if self.finished {
                return None;
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    if batch.revision < self.next {
                        continue;
                    }
                    self.next = batch.revision + 1;
                    let events = under_prefix(&batch, &self.prefix);
                    if !events.is_empty() {
                        return Some(Ok(events));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if let Err(error) = self.catch_up() {
                        self.finished = true;
                        return Some(Err(error));
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.finished = true;
                    return Some(Err(StoreError::Unavailable(
                        "the embedded store was closed".to_owned(),
                    )));
                }
            }
        }
    }

    /// Refills `pending` from the history and resubscribes, after missing live batches.
    fn catch_up(&mut self) -> Result<(), StoreError> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| StoreError::Unavailable("the embedded store was closed".to_owned()))?;
        let state = shared.lock_state();
        let (rx, replay) = state.replay(&shared.live, &self.prefix, self.next)?;
        self.rx = rx;
        self.next = replay.next;
        self.pending = replay.batches;
        Ok(())
    }
}

// === Snapshot file ===

/// The snapshot file's layout. Values that are UTF-8 (the usual JSON) are stored as text,
/// so the file stays readable; others as byte arrays.
#[derive(Serialize, Deserialize)]
struct Snapshot {
    format: u32,
    revision: Revision,
    compacted: Revision,
    kvs: Vec<SnapshotKv>,
    leases: Vec<SnapshotLease>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotKv {
    key: String,
    value: SnapshotValue,
    create_revision: Revision,
    mod_revision: Revision,
    #[serde(default)]
    lease: LeaseId,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SnapshotValue {
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Serialize, Deserialize)]
struct SnapshotLease {
    id: LeaseId,
    ttl: i64,
}

impl Snapshot {
    fn encode(data: &Data) -> Snapshot {
        let mut leases: Vec<SnapshotLease> = data
            .leases
            .iter()
            .map(|(id, lease)| SnapshotLease {
                id: *id,
                ttl: lease.ttl,
            })
            .collect();
        leases.sort_unstable_by_key(|lease| lease.id);
        Snapshot {
            format: SNAPSHOT_FORMAT,
            revision: data.revision,
            compacted: data.compacted,
            kvs: data
                .kvs
                .iter()
                .map(|(key, entry)| SnapshotKv {
                    key: key.clone(),
                    value: match String::from_utf8(entry.value.clone()) {
                        Ok(text) => SnapshotValue::Text(text),
                        Err(e) => SnapshotValue::Bytes(e.into_bytes()),
                    },
                    create_revision: entry.create_revision,
                    mod_revision: entry.mod_revision,
                    lease: entry.lease,
                })
                .collect(),
            leases,
        }
    }

    /// Reads and checks a snapshot; leases restart with a full TTL from `now`.
    fn decode(path: &Path, bytes: &[u8], now: Instant) -> Result<Data, EmbeddedError> {
        let snapshot: Snapshot =
            serde_json::from_slice(bytes).map_err(|source| EmbeddedError::Corrupt {
                path: path.to_owned(),
                source,
            })?;
        let inconsistent = |reason: String| EmbeddedError::Inconsistent {
            path: path.to_owned(),
            reason,
        };
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(inconsistent(format!(
                "format {} is not supported (this build reads format {SNAPSHOT_FORMAT})",
                snapshot.format
            )));
        }
        if snapshot.revision < 1 || !(0..=snapshot.revision).contains(&snapshot.compacted) {
            return Err(inconsistent(format!(
                "revision {} with compaction revision {}",
                snapshot.revision, snapshot.compacted
            )));
        }
        let mut data = Data {
            revision: snapshot.revision,
            compacted: snapshot.compacted,
            kvs: BTreeMap::new(),
            leases: HashMap::new(),
        };
        for lease in snapshot.leases {
            if lease.id <= 0 || !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease.ttl) {
                return Err(inconsistent(format!(
                    "lease {} has TTL {}",
                    lease.id, lease.ttl
                )));
            }
            let entry = Lease {
                ttl: lease.ttl,
                deadline: now + ttl_duration(lease.ttl),
                keys: BTreeSet::new(),
            };
            if data.leases.insert(lease.id, entry).is_some() {
                return Err(inconsistent(format!("lease {} appears twice", lease.id)));
            }
        }
        for kv in snapshot.kvs {
            let revisions_ok = 1 <= kv.create_revision
                && kv.create_revision <= kv.mod_revision
                && kv.mod_revision <= data.revision;
            if kv.key.is_empty() || !revisions_ok {
                return Err(inconsistent(format!(
                    "key {:?} has create revision {} and mod revision {} at store revision {}",
                    kv.key, kv.create_revision, kv.mod_revision, data.revision
                )));
            }
            if kv.lease != 0 {
                let lease = data.leases.get_mut(&kv.lease).ok_or_else(|| {
                    inconsistent(format!(
                        "key {:?} is attached to lease {}, which is not in the file",
                        kv.key, kv.lease
                    ))
                })?;
                lease.keys.insert(kv.key.clone());
            }
            let entry = Entry {
                value: match kv.value {
                    SnapshotValue::Text(text) => text.into_bytes(),
                    SnapshotValue::Bytes(bytes) => bytes,
                },
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                lease: kv.lease,
            };
            if data.kvs.insert(kv.key.clone(), entry).is_some() {
                return Err(inconsistent(format!("key {:?} appears twice", kv.key)));
            }
        }
        Ok(data)
    }
}

/// Replaces the snapshot at `path` atomically: temp file in the same directory, fsync,
/// rename, fsync of the directory.
fn write_snapshot(path: &Path, data: &Data) -> Result<(), EmbeddedError> {
    let write_error = |source| EmbeddedError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(&Snapshot::encode(data))
        .map_err(|e| write_error(io::Error::other(e)))?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).map_err(write_error)?;
    file.write_all(&bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    fs::rename(&tmp, path).map_err(write_error)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Makes the rename itself durable. Some filesystems refuse to fsync a directory; the
    // data is already safe in the renamed file, so that is not worth failing the write.
    if let Err(error) = File::open(dir).and_then(|d| d.sync_all()) {
        tracing::debug!(dir = %dir.display(), %error, "cannot fsync the store directory");
    }
    Ok(())
}
