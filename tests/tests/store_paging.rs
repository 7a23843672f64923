//! The etcd store reads large prefixes in pages: a listing returns every key of a prefix
//! however many pages it takes, as one snapshot at one revision even while other writes
//! land between pages, and a listing larger than a gRPC client's default 4 MiB decode
//! limit still loads (a federation at its limits is far larger than that).

use std::sync::Arc;
use std::time::Duration;

use meridian_control_plane::store::etcd::EtcdStore;
use meridian_control_plane::store::{Store, Txn};
use meridian_tests::EtcdCluster;

const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

async fn store(etcd: &EtcdCluster, page_keys: i64) -> EtcdStore {
    EtcdStore::connect(&etcd.endpoints(), DIAL_TIMEOUT)
        .await
        .expect("connecting to etcd")
        .with_page_keys(page_keys)
}

async fn put(store: &dyn Store, key: &str, value: impl Into<Vec<u8>>) {
    let result = store.txn(Txn::new().put(key, value)).await.expect("put");
    assert!(result.succeeded);
}

#[tokio::test]
async fn a_listing_returns_every_key_across_pages_and_nothing_outside_the_prefix() {
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let store = store(&etcd, 3).await;
    put(&store, "/p/a", "before the prefix").await;
    for i in 0..10 {
        put(&store, &format!("/p/b/{i:02}"), format!("v{i}")).await;
    }
    put(&store, "/p/c", "after the prefix").await;

    let listing = store.list("/p/b/").await.expect("list");
    let keys: Vec<_> = listing.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("/p/b/{i:02}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(listing.revision, store.revision().await.expect("revision"));
    assert_eq!(listing.kvs[7].value, b"v7");

    // A page size that divides the count evenly, and one key per page, agree.
    for page_keys in [5, 1] {
        let other = self::store(&etcd, page_keys).await;
        assert_eq!(other.list("/p/b/").await.expect("list"), listing);
    }
    assert!(store.list("/p/none/").await.expect("list").kvs.is_empty());
}

#[tokio::test]
async fn a_paged_listing_is_one_snapshot_while_writes_continue() {
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let store = Arc::new(store(&etcd, 2).await);
    for i in 0..60 {
        put(store.as_ref(), &format!("/s/{i:02}"), "0").await;
    }
    // Rewrites the last keys and adds new ones while the listing pages through.
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for round in 1.. {
                put(
                    store.as_ref(),
                    &format!("/s/{:02}", 50 + round % 10),
                    round.to_string(),
                )
                .await;
                put(store.as_ref(), &format!("/s/new-{round:04}"), "x").await;
            }
        })
    };
    for _ in 0..5 {
        let listing = store.list("/s/").await.expect("list");
        let newest = listing
            .kvs
            .iter()
            .map(|kv| kv.mod_revision)
            .max()
            .unwrap_or(0);
        assert!(
            newest <= listing.revision,
            "a page saw revision {newest}, after the listing's revision {}",
            listing.revision
        );
        let news = listing
            .kvs
            .iter()
            .filter(|kv| kv.key.starts_with("/s/new-"))
            .count();
        assert_eq!(
            listing.kvs.len(),
            60 + news,
            "keys went missing from the listing"
        );
    }
    writer.abort();
}

#[tokio::test]
async fn a_listing_larger_than_the_default_grpc_decode_limit_loads() {
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    // The default page size: the whole listing (12 MiB) would be one response.
    let store = EtcdStore::connect(&etcd.endpoints(), DIAL_TIMEOUT)
        .await
        .expect("connecting to etcd");
    let value = vec![b'x'; 512 * 1024];
    for i in 0..24 {
        put(&store, &format!("/big/{i:02}"), value.clone()).await;
    }
    let listing = store.list("/big/").await.expect("list over 4 MiB");
    assert_eq!(listing.kvs.len(), 24);
    assert!(listing.kvs.iter().all(|kv| kv.value.len() == value.len()));
}
