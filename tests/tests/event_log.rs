//! The event log under concurrent writers and at its bound, on both store backends
//! (`embedded_<check>` and `etcd_<check>`, the etcd one against a real etcd):
//! - 200 writers recording at once all get their event stored: `since(0)` finds every one,
//!   with distinct sequence numbers, in order, and the numbers `record` returned;
//! - the history is trimmed oldest first to the configured limit, exceeding it by at most
//!   the documented slack in between, also when trims run while writers record;
//! - events stored by earlier builds (`events/{seq:020}` keys and the `event-seq` counter)
//!   are still read, before the newer ones, and trimmed first.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meridian_control_plane::dynconfig::DynamicConfig;
use meridian_control_plane::events::EventLog;
use meridian_control_plane::keys::{self, Keys, Kind};
use meridian_control_plane::store::embedded::EmbeddedStore;
use meridian_control_plane::store::etcd::EtcdStore;
use meridian_control_plane::store::{Store, Txn};
use meridian_control_plane::topology::{StateFollower, StateHandle};
use meridian_shared::Shutdown;
use meridian_shared::domain::{Event, EventKind};
use meridian_tests::EtcdCluster;

/// Writers recording at the same moment.
const WRITERS: usize = 200;
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the followed state may take to see the configuration written.
const STATE_DEADLINE: Duration = Duration::from_secs(10);

/// An event log over a store under test, with what must outlive it.
struct Harness {
    log: EventLog,
    store: Arc<dyn Store>,
    keys: Keys,
    state: StateHandle,
    shutdown: Shutdown,
    _etcd: Option<EtcdCluster>,
}

impl Harness {
    async fn embedded() -> Self {
        Self::on(Arc::new(EmbeddedStore::in_memory()), None).await
    }

    async fn etcd() -> Self {
        let etcd = EtcdCluster::single().await.expect("starting etcd");
        let store = EtcdStore::connect(&etcd.endpoints(), DIAL_TIMEOUT)
            .await
            .expect("connecting to etcd");
        Self::on(Arc::new(store), Some(etcd)).await
    }

    /// An event log as the control plane builds it: over a followed state, so it reads
    /// its history limit from the stored dynamic configuration.
    async fn on(store: Arc<dyn Store>, etcd: Option<EtcdCluster>) -> Self {
        let keys = Keys::new("/meridian/");
        let shutdown = Shutdown::new();
        let (follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
        tokio::spawn(follower.run(shutdown.clone()));
        let log = EventLog::new(Arc::clone(&store), keys.clone(), state.clone());
        Harness {
            log,
            store,
            keys,
            state,
            shutdown,
            _etcd: etcd,
        }
    }

    /// Stores a dynamic configuration with this history limit and waits until the log
    /// sees it.
    async fn set_history_limit(&self, limit: u32) {
        let config = DynamicConfig {
            event_history_limit: limit,
            ..Default::default()
        };
        let txn = Txn::new().put(self.keys.config(), keys::encode(&config));
        let written = self
            .store
            .txn(txn)
            .await
            .expect("writing the configuration");
        assert!(
            self.state.wait_for(written.revision, STATE_DEADLINE).await,
            "the followed state did not reach the configuration write"
        );
        assert_eq!(
            self.state.borrow().config.value.event_history_limit(),
            u64::from(limit)
        );
    }

    async fn record(&self, message: String) -> Option<u64> {
        self.log
            .record(
                EventKind::ConfigUpdated,
                "config".into(),
                message,
                "test".into(),
            )
            .await
    }

    async fn history(&self) -> Vec<Event> {
        self.log.since(0).await.expect("reading the events").0
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

macro_rules! on_both_backends {
    ($($check:ident: $embedded:ident, $etcd:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $embedded() {
            $check(Harness::embedded().await).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $etcd() {
            $check(Harness::etcd().await).await;
        }
    )*};
}

on_both_backends! {
    concurrent_writers_lose_no_event:
        embedded_concurrent_writers_lose_no_event, etcd_concurrent_writers_lose_no_event;
    history_is_trimmed_oldest_first:
        embedded_history_is_trimmed_oldest_first, etcd_history_is_trimmed_oldest_first;
    concurrent_trims_keep_the_newest:
        embedded_concurrent_trims_keep_the_newest, etcd_concurrent_trims_keep_the_newest;
    events_of_earlier_builds_are_read_and_trimmed_first:
        embedded_events_of_earlier_builds_are_read_and_trimmed_first,
        etcd_events_of_earlier_builds_are_read_and_trimmed_first;
}

/// Records one event from each of [`WRITERS`] tasks at once; returns the seqs `record`
/// returned, sorted, after checking that every one was stored.
async fn record_concurrently(h: &Arc<Harness>) -> Vec<u64> {
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let h = Arc::clone(h);
            tokio::spawn(async move { h.record(format!("writer {i}")).await })
        })
        .collect();
    let mut returned = Vec::with_capacity(WRITERS);
    let mut lost = 0;
    for writer in writers {
        match writer.await.expect("a writer panicked") {
            Some(seq) => returned.push(seq),
            None => lost += 1,
        }
    }
    assert_eq!(lost, 0, "{lost} of {WRITERS} events were not stored");
    returned.sort_unstable();
    returned
}

async fn concurrent_writers_lose_no_event(h: Harness) {
    let h = Arc::new(h);
    let returned = record_concurrently(&h).await;

    let events = h.history().await;
    let messages: HashSet<&str> = events.iter().map(|e| e.message.as_str()).collect();
    let missing: Vec<usize> = (0..WRITERS)
        .filter(|i| !messages.contains(format!("writer {i}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "events of writers {missing:?} are missing"
    );
    assert_eq!(events.len(), WRITERS, "events were stored twice");

    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "events are not in increasing seq order: {seqs:?}"
    );
    assert_eq!(returned, seqs, "record returned other seqs than are stored");

    // Resuming from the middle gives exactly the rest.
    let middle = seqs[WRITERS / 2];
    let (rest, _) = h.log.since(middle).await.expect("reading the events");
    assert_eq!(rest, events[WRITERS / 2..]);
}

async fn history_is_trimmed_oldest_first(h: Harness) {
    const LIMIT: usize = 20;
    // The slack documented in `events.rs`: a trim every tenth of the limit, so up to a
    // tenth minus one events above it from one writer.
    const SLACK: usize = LIMIT / 10 - 1;
    h.set_history_limit(LIMIT as u32).await;
    let total = 3 * LIMIT;
    for i in 0..total {
        h.record(format!("event {i}"))
            .await
            .expect("the event is stored");
        let kept = h.history().await;
        assert!(
            kept.len() <= LIMIT + SLACK,
            "{} events kept after {} recorded, limit {LIMIT} + {SLACK}",
            kept.len(),
            i + 1
        );
        assert!(
            kept.len() >= LIMIT.min(i + 1),
            "only {} events kept after {} recorded",
            kept.len(),
            i + 1
        );
        let newest: Vec<String> = (i + 1 - kept.len()..=i)
            .map(|n| format!("event {n}"))
            .collect();
        let messages: Vec<&String> = kept.iter().map(|e| &e.message).collect();
        assert_eq!(
            messages,
            newest.iter().collect::<Vec<_>>(),
            "not the newest"
        );
    }
}

async fn concurrent_trims_keep_the_newest(h: Harness) {
    const LIMIT: usize = 100;
    h.set_history_limit(LIMIT as u32).await;
    let h = Arc::new(h);
    // A trim every ten appends, so about twenty run while writers record.
    let mut returned = record_concurrently(&h).await;
    let kept = h.history().await;
    assert!(
        (LIMIT..WRITERS).contains(&kept.len()),
        "{} events kept of {WRITERS}, limit {LIMIT}",
        kept.len()
    );
    // The log's 201st append trims again, to exactly the newest hundred.
    returned.push(h.record("last".into()).await.expect("stored"));
    let kept: Vec<u64> = h.history().await.iter().map(|e| e.seq).collect();
    assert_eq!(kept, returned[returned.len() - LIMIT..], "not the newest");
}

async fn events_of_earlier_builds_are_read_and_trimmed_first(h: Harness) {
    const LIMIT: usize = 10;
    const OLD: u64 = 5;
    h.set_history_limit(LIMIT as u32).await;
    // As builds before the append-only log stored them: one transaction per event,
    // bumping the counter key and putting `events/{seq:020}`.
    for seq in 1..=OLD {
        let event = Event {
            seq,
            at: SystemTime::now(),
            kind: EventKind::NodeRegistered,
            subject: format!("node/old-{seq}"),
            message: format!("old {seq}"),
            cause: "earlier build".into(),
        };
        let txn = Txn::new()
            .put(format!("{}event-seq", h.keys.root()), keys::encode(&seq))
            .put(
                format!("{}{seq:020}", h.keys.dir(Kind::Event)),
                keys::encode(&event),
            );
        h.store.txn(txn).await.expect("storing an old event");
    }

    for i in 0..3 {
        h.record(format!("new {i}")).await.expect("stored");
    }
    let events = h.history().await;
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "old 1", "old 2", "old 3", "old 4", "old 5", "new 0", "new 1", "new 2"
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "{events:?}");

    // Four more reach the limit of ten; each further one pushes out the oldest.
    for i in 3..9 {
        h.record(format!("new {i}")).await.expect("stored");
    }
    let messages: Vec<String> = h.history().await.into_iter().map(|e| e.message).collect();
    assert_eq!(
        messages,
        [
            "old 5", "new 0", "new 1", "new 2", "new 3", "new 4", "new 5", "new 6", "new 7",
            "new 8"
        ]
    );
    h.record("new 9".into()).await.expect("stored");
    let messages: Vec<String> = h.history().await.into_iter().map(|e| e.message).collect();
    assert_eq!(messages.first().map(String::as_str), Some("new 0"));
    assert_eq!(messages.len(), LIMIT);
}
