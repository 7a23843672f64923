//! One behavioural suite for both store backends: every check runs against the embedded
//! store (`embedded_<check>`) and against a real etcd (`etcd_<check>`), so the embedded
//! store used by `--dev` and unit tests is held to etcd's semantics by etcd itself.
//! Then what only one backend has: the embedded store's file (persistence, corruption,
//! bounded history) and the etcd store's recovery from an etcd restart.
//!
//! Waits are bounded by deadlines (`tokio::time::timeout`), never fixed sleeps; the only
//! sleeps are in the keep-alive check, where letting time pass is the point.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use meridian_control_plane::store::embedded::{EmbeddedError, EmbeddedStore, HISTORY_EVENTS};
use meridian_control_plane::store::etcd::EtcdStore;
use meridian_control_plane::store::{
    Compare, KeyValue, LeaseId, Revision, Store, StoreError, Txn, WatchEvent, WatchStream,
    prefix_end,
};
use meridian_tests::EtcdCluster;

/// The longest a watch event (including a lease expiry) may take before a test fails.
const EVENT_DEADLINE: Duration = Duration::from_secs(15);
/// How long to keep retrying after etcd restarts.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// A store under test and what must outlive it.
struct Backend {
    store: Arc<dyn Store>,
    _etcd: Option<EtcdCluster>,
}

impl Backend {
    fn embedded() -> Self {
        Backend {
            store: Arc::new(EmbeddedStore::in_memory()),
            _etcd: None,
        }
    }

    async fn etcd() -> Self {
        let etcd = EtcdCluster::single().await.expect("starting etcd");
        let store = EtcdStore::connect(&etcd.endpoints(), DIAL_TIMEOUT)
            .await
            .expect("connecting to etcd");
        Backend {
            store: Arc::new(store),
            _etcd: Some(etcd),
        }
    }
}

/// `embedded_<check>` and `etcd_<check>` for each check.
macro_rules! on_both_backends {
    ($($check:ident: $embedded:ident, $etcd:ident;)*) => {$(
        #[tokio::test]
        async fn $embedded() {
            let backend = Backend::embedded();
            $check(backend.store.as_ref()).await;
        }

        #[tokio::test]
        async fn $etcd() {
            let backend = Backend::etcd().await;
            $check(backend.store.as_ref()).await;
        }
    )*};
}

on_both_backends! {
    put_get_list_track_revisions:
        embedded_put_get_list_track_revisions, etcd_put_get_list_track_revisions;
    txn_compares_mod_revision:
        embedded_txn_compares_mod_revision, etcd_txn_compares_mod_revision;
    txn_compares_value:
        embedded_txn_compares_value, etcd_txn_compares_value;
    delete_range_removes_exactly_the_range:
        embedded_delete_range_removes_exactly_the_range, etcd_delete_range_removes_exactly_the_range;
    watch_replays_history_then_follows_live:
        embedded_watch_replays_history_then_follows_live, etcd_watch_replays_history_then_follows_live;
    watch_from_before_compaction_is_compacted:
        embedded_watch_from_before_compaction_is_compacted, etcd_watch_from_before_compaction_is_compacted;
    lease_expiry_deletes_keys:
        embedded_lease_expiry_deletes_keys, etcd_lease_expiry_deletes_keys;
    keep_alive_extends_lease_until_revoked:
        embedded_keep_alive_extends_lease_until_revoked, etcd_keep_alive_extends_lease_until_revoked;
    revoke_deletes_keys_at_once:
        embedded_revoke_deletes_keys_at_once, etcd_revoke_deletes_keys_at_once;
    put_with_unknown_lease_fails:
        embedded_put_with_unknown_lease_fails, etcd_put_with_unknown_lease_fails;
}

// === Helpers ===

async fn put(store: &dyn Store, key: &str, value: &str) -> Revision {
    let result = store.txn(Txn::new().put(key, value)).await.expect("put");
    assert!(result.succeeded, "an unconditional put failed");
    result.revision
}

async fn value(store: &dyn Store, key: &str) -> Option<String> {
    let kv = store.get(key).await.expect("get")?;
    Some(String::from_utf8(kv.value).expect("test values are UTF-8"))
}

async fn keys(store: &dyn Store, prefix: &str) -> Vec<String> {
    let listing = store.list(prefix).await.expect("list");
    listing.kvs.into_iter().map(|kv| kv.key).collect()
}

async fn next_item(watch: &mut WatchStream) -> Option<Result<Vec<WatchEvent>, StoreError>> {
    tokio::time::timeout(EVENT_DEADLINE, watch.next())
        .await
        .expect("nothing from the watch before the deadline")
}

async fn next_batch(watch: &mut WatchStream) -> Vec<WatchEvent> {
    next_item(watch)
        .await
        .expect("the watch ended")
        .expect("the watch failed")
}

fn put_event(
    key: &str,
    value: &str,
    create: Revision,
    modified: Revision,
    lease: LeaseId,
) -> WatchEvent {
    WatchEvent::Put(KeyValue {
        key: key.to_owned(),
        value: value.as_bytes().to_vec(),
        create_revision: create,
        mod_revision: modified,
        lease,
    })
}

fn delete_event(key: &str, revision: Revision) -> WatchEvent {
    WatchEvent::Delete {
        key: key.to_owned(),
        mod_revision: revision,
    }
}

// === Checks on both backends ===

async fn put_get_list_track_revisions(store: &dyn Store) {
    assert_eq!(
        store.revision().await.unwrap(),
        1,
        "an empty store is at revision 1"
    );
    assert_eq!(store.get("/k/b").await.unwrap(), None);

    let b_created = put(store, "/k/b", "b1").await;
    assert_eq!(b_created, 2, "the first write makes revision 2");
    let a_created = put(store, "/k/a", "a1").await;
    assert_eq!(a_created, 3);
    let b_modified = put(store, "/k/b", "b2").await;
    assert_eq!(b_modified, 4);
    assert_eq!(
        store.get("/k/b").await.unwrap(),
        Some(KeyValue {
            key: "/k/b".to_owned(),
            value: b"b2".to_vec(),
            create_revision: b_created,
            mod_revision: b_modified,
            lease: 0,
        })
    );

    // Outside the prefix: not listed, but it moves the revision the listing reports.
    put(store, "/k", "not under /k/").await;
    let latest = put(store, "/other/x", "x").await;
    let listing = store.list("/k/").await.unwrap();
    assert_eq!(listing.revision, latest);
    assert_eq!(
        listing.kvs,
        vec![
            KeyValue {
                key: "/k/a".to_owned(),
                value: b"a1".to_vec(),
                create_revision: a_created,
                mod_revision: a_created,
                lease: 0,
            },
            KeyValue {
                key: "/k/b".to_owned(),
                value: b"b2".to_vec(),
                create_revision: b_created,
                mod_revision: b_modified,
                lease: 0,
            },
        ],
        "sorted by key"
    );

    // Deleting and re-creating a key starts its create revision afresh.
    let deleted = store.txn(Txn::new().delete("/k/a")).await.unwrap();
    assert!(deleted.succeeded);
    assert_eq!(deleted.revision, latest + 1);
    let recreated = put(store, "/k/a", "a2").await;
    let kv = store.get("/k/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision),
        (recreated, recreated)
    );

    // Deleting an absent key changes nothing, not even the revision; nor does no op.
    let noop = store.txn(Txn::new().delete("/k/absent")).await.unwrap();
    assert!(noop.succeeded);
    assert_eq!(noop.revision, recreated);
    let empty = store.txn(Txn::new()).await.unwrap();
    assert!(empty.succeeded);
    assert_eq!(empty.revision, recreated);
    assert_eq!(store.revision().await.unwrap(), recreated);
}

async fn txn_compares_mod_revision(store: &dyn Store) {
    let first = put(store, "/t/k", "v1").await;

    let current = |revision| Compare::ModRevision {
        key: "/t/k".to_owned(),
        revision,
    };
    let swapped = store
        .txn(Txn::new().when(current(first)).put("/t/k", "v2"))
        .await
        .unwrap();
    assert!(swapped.succeeded);
    assert_eq!(swapped.revision, first + 1);

    // A stale mod revision: nothing of the transaction is written.
    let stale = store
        .txn(
            Txn::new()
                .when(current(first))
                .put("/t/k", "v3")
                .put("/t/other", "x"),
        )
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.revision, swapped.revision);
    assert_eq!(value(store, "/t/k").await.as_deref(), Some("v2"));
    assert_eq!(value(store, "/t/other").await, None);
    assert_eq!(store.revision().await.unwrap(), swapped.revision);

    // Mod revision 0 means "absent": create-only.
    let absent = || Compare::ModRevision {
        key: "/t/new".to_owned(),
        revision: 0,
    };
    let created = store
        .txn(Txn::new().when(absent()).put("/t/new", "first"))
        .await
        .unwrap();
    assert!(created.succeeded);
    let again = store
        .txn(Txn::new().when(absent()).put("/t/new", "second"))
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(value(store, "/t/new").await.as_deref(), Some("first"));
    let exists = store
        .txn(Txn::new().when(current(0)).put("/t/k", "v4"))
        .await
        .unwrap();
    assert!(!exists.succeeded, "mod revision 0 on an existing key");

    // Every compare must hold.
    let one_of_two = store
        .txn(
            Txn::new()
                .when(current(swapped.revision))
                .when(absent())
                .put("/t/k", "v5"),
        )
        .await
        .unwrap();
    assert!(!one_of_two.succeeded);
    assert_eq!(value(store, "/t/k").await.as_deref(), Some("v2"));
}

async fn txn_compares_value(store: &dyn Store) {
    put(store, "/v/k", "blue").await;
    let holds = |value: &str| Compare::Value {
        key: "/v/k".to_owned(),
        value: value.as_bytes().to_vec(),
    };
    let matched = store
        .txn(Txn::new().when(holds("blue")).put("/v/k", "green"))
        .await
        .unwrap();
    assert!(matched.succeeded);
    let mismatched = store
        .txn(Txn::new().when(holds("blue")).put("/v/k", "red"))
        .await
        .unwrap();
    assert!(!mismatched.succeeded);
    assert_eq!(mismatched.revision, matched.revision);
    assert_eq!(value(store, "/v/k").await.as_deref(), Some("green"));

    // A missing key does not hold the empty value; an existing empty one does.
    let missing = store
        .txn(
            Txn::new()
                .when(Compare::Value {
                    key: "/v/missing".to_owned(),
                    value: Vec::new(),
                })
                .put("/v/missing", "x"),
        )
        .await
        .unwrap();
    assert!(!missing.succeeded);
    assert_eq!(value(store, "/v/missing").await, None);
    put(store, "/v/empty", "").await;
    let empty = store
        .txn(
            Txn::new()
                .when(Compare::Value {
                    key: "/v/empty".to_owned(),
                    value: Vec::new(),
                })
                .put("/v/empty", "filled"),
        )
        .await
        .unwrap();
    assert!(empty.succeeded);
}

async fn delete_range_removes_exactly_the_range(store: &dyn Store) {
    let written = store
        .txn(
            Txn::new()
                .put("/d/a", "1")
                .put("/d/b", "2")
                .put("/d/c", "3")
                .put("/d/d", "4")
                .put("/e/a", "5"),
        )
        .await
        .unwrap();

    // [start, end): /d/d is the end, so it stays.
    let ranged = store
        .txn(Txn::new().delete_range("/d/b", "/d/d"))
        .await
        .unwrap();
    assert!(ranged.succeeded);
    assert_eq!(
        ranged.revision,
        written.revision + 1,
        "one revision for the range"
    );
    assert_eq!(keys(store, "/d/").await, ["/d/a", "/d/d"]);

    let prefixed = store
        .txn(Txn::new().delete_range("/d/", prefix_end("/d/")))
        .await
        .unwrap();
    assert_eq!(prefixed.revision, ranged.revision + 1);
    assert!(keys(store, "/d/").await.is_empty());
    assert_eq!(keys(store, "/e/").await, ["/e/a"]);

    // An empty range changes nothing.
    let empty = store
        .txn(Txn::new().delete_range("/d/", prefix_end("/d/")))
        .await
        .unwrap();
    assert_eq!(empty.revision, prefixed.revision);
}

async fn watch_replays_history_then_follows_live(store: &dyn Store) {
    let a_put = put(store, "/w/a", "1").await;
    let pair = store
        .txn(Txn::new().put("/w/b", "2").put("/w/c", "3"))
        .await
        .unwrap()
        .revision;
    put(store, "/x/outside", "x").await;
    let a_deleted = store.txn(Txn::new().delete("/w/a")).await.unwrap().revision;
    assert!(a_put < pair);

    // From `pair` (inclusive): the put of /w/a is before it, /x/outside is not watched.
    let mut watch = store.watch("/w/", pair).await.unwrap();
    assert_eq!(
        next_batch(&mut watch).await,
        [
            put_event("/w/b", "2", pair, pair, 0),
            put_event("/w/c", "3", pair, pair, 0)
        ],
        "one batch per transaction"
    );
    assert_eq!(
        next_batch(&mut watch).await,
        [delete_event("/w/a", a_deleted)]
    );

    // Live: one transaction of a put and a range delete is one batch, in op order.
    let live = store
        .txn(Txn::new().put("/w/d", "4").delete_range("/w/b", "/w/d"))
        .await
        .unwrap()
        .revision;
    assert_eq!(
        next_batch(&mut watch).await,
        [
            put_event("/w/d", "4", live, live, 0),
            delete_event("/w/b", live),
            delete_event("/w/c", live),
        ]
    );

    // A change outside the prefix produces no batch: the next one is /w/e.
    put(store, "/x/y", "y").await;
    let e_put = put(store, "/w/e", "5").await;
    assert_eq!(
        next_batch(&mut watch).await,
        [put_event("/w/e", "5", e_put, e_put, 0)]
    );
}

async fn watch_from_before_compaction_is_compacted(store: &dyn Store) {
    let first = put(store, "/c/a", "1").await;
    let second = put(store, "/c/b", "2").await;
    let third = put(store, "/c/c", "3").await;
    let fourth = put(store, "/c/d", "4").await;
    store.compact(third).await.unwrap();

    let expected = StoreError::Compacted {
        requested: first,
        compacted: third,
    };
    match store.watch("/c/", first).await {
        Err(error) => assert_eq!(error, expected),
        Ok(mut watch) => {
            assert_eq!(next_item(&mut watch).await, Some(Err(expected)));
            assert_eq!(
                next_item(&mut watch).await,
                None,
                "the stream ends after it"
            );
        }
    }

    // From the compaction revision on, history is still there.
    let mut watch = store.watch("/c/", third).await.unwrap();
    assert_eq!(
        next_batch(&mut watch).await,
        [put_event("/c/c", "3", third, third, 0)]
    );
    assert_eq!(
        next_batch(&mut watch).await,
        [put_event("/c/d", "4", fourth, fourth, 0)]
    );

    // Compacting to where it already is, or before, is done already; the future is not.
    store.compact(second).await.unwrap();
    store.compact(third).await.unwrap();
    assert!(matches!(
        store.compact(fourth + 10).await,
        Err(StoreError::Rejected(_))
    ));
}

async fn lease_expiry_deletes_keys(store: &dyn Store) {
    let lease = store.grant_lease(1).await.unwrap();
    assert!(lease > 0, "lease ids are positive");
    let written = store
        .txn(
            Txn::new()
                .put_with_lease("/l/a", "a", lease)
                .put_with_lease("/l/b", "b", lease)
                .put("/l/keep", "k"),
        )
        .await
        .unwrap()
        .revision;
    assert_eq!(store.get("/l/a").await.unwrap().unwrap().lease, lease);

    // Nobody keeps it alive: both keys go in one transaction, which the watch sees.
    let mut watch = store.watch("/l/", written + 1).await.unwrap();
    let expired = next_batch(&mut watch).await;
    assert_eq!(
        expired,
        [
            delete_event("/l/a", written + 1),
            delete_event("/l/b", written + 1)
        ]
    );
    assert_eq!(store.get("/l/a").await.unwrap(), None);
    assert_eq!(value(store, "/l/keep").await.as_deref(), Some("k"));
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
}

async fn keep_alive_extends_lease_until_revoked(store: &dyn Store) {
    let lease = store.grant_lease(2).await.unwrap();
    store
        .txn(Txn::new().put_with_lease("/ka/k", "v", lease))
        .await
        .unwrap();

    // Kept alive for well past its 2 s TTL, the key stays.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(3500) {
        assert_eq!(store.keep_alive(lease).await, Ok(2));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(value(store, "/ka/k").await.as_deref(), Some("v"));

    store.revoke_lease(lease).await.unwrap();
    assert_eq!(value(store, "/ka/k").await, None, "revoke deletes at once");
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
    // Revoking what is gone is not an error.
    store.revoke_lease(lease).await.unwrap();
}

async fn revoke_deletes_keys_at_once(store: &dyn Store) {
    let lease = store.grant_lease(60).await.unwrap();
    store
        .txn(
            Txn::new()
                .put_with_lease("/rv/a", "a", lease)
                .put_with_lease("/rv/b", "b", lease)
                .put_with_lease("/rv/detached", "d", lease),
        )
        .await
        .unwrap();
    // Putting a key again without a lease detaches it from the lease.
    let detached = put(store, "/rv/detached", "d2").await;
    assert_eq!(store.get("/rv/detached").await.unwrap().unwrap().lease, 0);

    let mut watch = store.watch("/rv/", detached + 1).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(keys(store, "/rv/").await, ["/rv/detached"]);
    assert_eq!(store.revision().await.unwrap(), detached + 1);
    assert_eq!(
        next_batch(&mut watch).await,
        [
            delete_event("/rv/a", detached + 1),
            delete_event("/rv/b", detached + 1)
        ]
    );
}

async fn put_with_unknown_lease_fails(store: &dyn Store) {
    let before = store.revision().await.unwrap();
    let unknown: LeaseId = 7_777_777;
    assert_eq!(
        store
            .txn(
                Txn::new()
                    .put("/u/plain", "p")
                    .put_with_lease("/u/k", "v", unknown)
            )
            .await,
        Err(StoreError::LeaseNotFound(unknown))
    );
    assert_eq!(store.get("/u/k").await.unwrap(), None);
    assert_eq!(
        store.get("/u/plain").await.unwrap(),
        None,
        "nothing is written"
    );
    assert_eq!(store.revision().await.unwrap(), before);

    let revoked = store.grant_lease(60).await.unwrap();
    store.revoke_lease(revoked).await.unwrap();
    assert_eq!(
        store
            .txn(Txn::new().put_with_lease("/u/k", "v", revoked))
            .await,
        Err(StoreError::LeaseNotFound(revoked))
    );

    // Only the branch taken is checked: failed compares make it a plain failed txn.
    let not_taken = store
        .txn(
            Txn::new()
                .when(Compare::Value {
                    key: "/u/missing".to_owned(),
                    value: b"x".to_vec(),
                })
                .put_with_lease("/u/k", "v", unknown),
        )
        .await
        .unwrap();
    assert!(!not_taken.succeeded);
}

// === Embedded only ===

#[tokio::test]
async fn embedded_persistence_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store").join("store.json");

    let (lease, before) = {
        let store = EmbeddedStore::open(&path).expect("creating the store file");
        put(&store, "/p/a", "a1").await;
        put(&store, "/p/b", "b").await;
        put(&store, "/p/a", "a2").await;
        store.compact(3).await.unwrap();
        let lease = store.grant_lease(60).await.unwrap();
        store
            .txn(
                Txn::new()
                    .put_with_lease("/p/leased", "l", lease)
                    .put("/p/bin", vec![0xff, 0]),
            )
            .await
            .unwrap();
        (lease, store.list("/p/").await.unwrap())
    };

    let store = EmbeddedStore::open(&path).expect("reopening the store file");
    assert_eq!(
        store.list("/p/").await.unwrap(),
        before,
        "keys, revisions, leases"
    );
    assert_eq!(store.revision().await.unwrap(), before.revision);
    assert_eq!(store.keep_alive(lease).await, Ok(60), "the lease is alive");

    // History is not persisted: watching from before the reopen is compacted; from
    // after it works.
    match store.watch("/p/", before.revision).await {
        Err(StoreError::Compacted { requested, .. }) => assert_eq!(requested, before.revision),
        other => panic!("expected Compacted, got {:?}", other.map(|_| "a stream")),
    }
    let mut watch = store.watch("/p/", before.revision + 1).await.unwrap();

    // The lease still owns its key: revoking it deletes the key at the next revision.
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(
        next_batch(&mut watch).await,
        [delete_event("/p/leased", before.revision + 1)]
    );
    drop(store);

    let files: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(files, ["store.json"], "no temp file is left behind");
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.revision().await.unwrap(), before.revision + 1);
    assert_eq!(store.get("/p/leased").await.unwrap(), None);
    assert_eq!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(lease))
    );
}

#[tokio::test]
async fn embedded_corrupt_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");

    std::fs::write(&path, "{ not json").unwrap();
    let error = EmbeddedStore::open(&path)
        .err()
        .expect("a corrupt file must not open");
    assert!(matches!(error, EmbeddedError::Corrupt { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");

    std::fs::write(
        &path,
        r#"{"format": 1, "revision": 2, "compacted": 0, "leases": [],
            "kvs": [{"key": "/a", "value": "x", "create_revision": 2, "mod_revision": 2, "lease": 5}]}"#,
    )
    .unwrap();
    let error = EmbeddedStore::open(&path)
        .err()
        .expect("a dangling lease must not open");
    let message = error.to_string();
    assert!(
        matches!(error, EmbeddedError::Inconsistent { .. }),
        "{error:?}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("lease 5"), "{message}");
}

#[tokio::test]
async fn embedded_slow_watcher_catches_up_from_history() {
    let store = EmbeddedStore::in_memory();
    let from = store.revision().await.unwrap() + 1;
    let mut watch = store.watch("/s/", from).await.unwrap();
    // Far more transactions than the live buffer holds, none read meanwhile.
    let writes = 3_000;
    for i in 0..writes {
        put(&store, &format!("/s/{i}"), "v").await;
    }
    for i in 0..writes {
        let batch = next_batch(&mut watch).await;
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].revision(), from + i);
    }
}

#[tokio::test]
async fn embedded_watcher_behind_history_is_compacted() {
    let store = EmbeddedStore::in_memory();
    let from = store.revision().await.unwrap() + 1;
    let mut watch = store.watch("/h/", from).await.unwrap();
    let overflow: i64 = 10;
    for i in 0..HISTORY_EVENTS as i64 + overflow {
        put(&store, &format!("/h/{i}"), "v").await;
    }
    let expected = StoreError::Compacted {
        requested: from,
        compacted: from + overflow,
    };
    assert_eq!(next_item(&mut watch).await, Some(Err(expected.clone())));
    assert_eq!(next_item(&mut watch).await, None);
    assert_eq!(store.watch("/h/", from).await.err(), Some(expected));
    assert!(store.watch("/h/", from + overflow).await.is_ok());
}

// === etcd only ===

#[tokio::test]
async fn etcd_connect_to_nothing_is_unavailable() {
    let endpoint = format!("http://127.0.0.1:{}", meridian_tests::ports::free_port());
    match EtcdStore::connect(std::slice::from_ref(&endpoint), Duration::from_millis(500)).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(&endpoint), "{message}")
        }
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn etcd_store_recovers_after_etcd_restarts() {
    let mut etcd = EtcdCluster::single().await.expect("starting etcd");
    let store = EtcdStore::connect(&etcd.endpoints(), DIAL_TIMEOUT)
        .await
        .expect("connecting to etcd");
    let written = put(&store, "/r/a", "1").await;
    let mut watch = store.watch("/r/", written + 1).await.unwrap();

    etcd.kill_member(0);
    match next_item(&mut watch).await {
        Some(Err(StoreError::Unavailable(_))) => {}
        other => panic!("expected the watch to end with Unavailable, got {other:?}"),
    }
    assert_eq!(next_item(&mut watch).await, None);
    match store.get("/r/a").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains(&etcd.endpoint(0)), "{message}")
        }
        other => panic!("expected Unavailable while etcd is down, got {other:?}"),
    }

    etcd.restart_member(0).await.expect("restarting etcd");
    let deadline = tokio::time::Instant::now() + RECOVERY_DEADLINE;
    let recovered = loop {
        match store.get("/r/a").await {
            Ok(kv) => break kv,
            Err(StoreError::Unavailable(message)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still unavailable after the restart: {message}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("unexpected error after the restart: {other:?}"),
        }
    };
    assert_eq!(recovered.map(|kv| kv.value), Some(b"1".to_vec()));

    // Writes and watches work again and pick up where the data left off.
    let mut watch = store.watch("/r/", written + 1).await.unwrap();
    let next = put(&store, "/r/b", "2").await;
    assert_eq!(next, written + 1);
    assert_eq!(
        next_batch(&mut watch).await,
        [put_event("/r/b", "2", next, next, 0)]
    );
}
