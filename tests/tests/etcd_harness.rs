//! The real-etcd harness works as every later test relies on: a member answers puts,
//! delivers watch events and expires leases; a killed member restarts on the same ports
//! with its data; a 3-member cluster survives losing one; a missing binary fails loudly.

use std::path::Path;
use std::time::Duration;

use etcd_client::{EventType, PutOptions};
use meridian_tests::{EtcdCluster, HarnessError};

/// The longest a lease-expiry or watch event may take before the test fails.
const EVENT_DEADLINE: Duration = Duration::from_secs(15);

async fn next_event(stream: &mut etcd_client::WatchStream) -> etcd_client::Event {
    loop {
        let response = tokio::time::timeout(EVENT_DEADLINE, stream.message())
            .await
            .expect("no watch event before the deadline")
            .expect("watch stream failed")
            .expect("watch stream ended");
        if let Some(event) = response.events().first() {
            return event.clone();
        }
    }
}

#[tokio::test]
async fn single_member_serves_puts_watches_and_expires_leases() {
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let mut client = etcd.client().await;

    client.put("/t/greeting", "hello", None).await.unwrap();
    let got = client.get("/t/greeting", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"hello");

    let mut watch = client.watch("/t/watched", None).await.unwrap();
    client.put("/t/watched", "v1", None).await.unwrap();
    let event = next_event(&mut watch).await;
    assert_eq!(event.event_type(), EventType::Put);
    assert_eq!(event.kv().unwrap().value(), b"v1");

    // A key on a 1 s lease that nobody keeps alive is deleted by etcd; the watch sees it.
    let lease = client.lease_grant(1, None).await.unwrap().id();
    let mut watch = client.watch("/t/leased", None).await.unwrap();
    client
        .put(
            "/t/leased",
            "alive",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await.event_type(), EventType::Put);
    assert_eq!(next_event(&mut watch).await.event_type(), EventType::Delete);
    assert!(
        client
            .get("/t/leased", None)
            .await
            .unwrap()
            .kvs()
            .is_empty()
    );
}

#[tokio::test]
async fn killed_member_restarts_on_the_same_ports_with_its_data() {
    let mut etcd = EtcdCluster::single().await.expect("starting etcd");
    let endpoint = etcd.endpoint(0);
    etcd.client()
        .await
        .put("/t/durable", "kept", None)
        .await
        .unwrap();

    etcd.kill_member(0);
    let down = etcd_client::Client::connect([&endpoint], None).await;
    if let Ok(mut client) = down {
        assert!(
            client.get("/t/durable", None).await.is_err(),
            "a killed member still answered"
        );
    }

    etcd.restart_member(0).await.expect("restarting etcd");
    assert_eq!(
        etcd.endpoint(0),
        endpoint,
        "the member moved to another port"
    );
    let got = etcd.client().await.get("/t/durable", None).await.unwrap();
    assert_eq!(
        got.kvs()[0].value(),
        b"kept",
        "acknowledged data was lost across a crash"
    );
}

/// Retries `op` until it succeeds or [`EVENT_DEADLINE`] passes: reads and writes fail while
/// a cluster elects a new leader, and a client is expected to retry them.
async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let started = std::time::Instant::now();
    loop {
        match op().await {
            Ok(value) => return value,
            Err(e) if started.elapsed() > EVENT_DEADLINE => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test]
async fn three_members_keep_serving_without_one() {
    let mut etcd = EtcdCluster::three()
        .await
        .expect("starting a 3-member etcd");
    assert_eq!(etcd.endpoints().len(), 3);

    let first = etcd_client::Client::connect([etcd.endpoint(0)], None)
        .await
        .unwrap();
    until_ok("put on member 0", || {
        let mut c = first.clone();
        async move { c.put("/t/replicated", "everywhere", None).await }
    })
    .await;

    etcd.kill_member(0);
    let third = etcd_client::Client::connect([etcd.endpoint(2)], None)
        .await
        .unwrap();
    let got = until_ok("read after losing member 0", || {
        let mut c = third.clone();
        async move { c.get("/t/replicated", None).await }
    })
    .await;
    assert_eq!(got.kvs()[0].value(), b"everywhere");
    until_ok("2 of 3 members keep quorum for writes", || {
        let mut c = third.clone();
        async move { c.put("/t/after-loss", "quorum", None).await }
    })
    .await;

    etcd.restart_member(0).await.expect("restarting member 0");
    let first = etcd_client::Client::connect([etcd.endpoint(0)], None)
        .await
        .unwrap();
    // A linearizable read on the restarted member sees the write made while it was down.
    let got = until_ok("read on the restarted member", || {
        let mut c = first.clone();
        async move { c.get("/t/after-loss", None).await }
    })
    .await;
    assert_eq!(got.kvs()[0].value(), b"quorum");
}

#[tokio::test]
async fn missing_etcd_fails_with_the_install_hint() {
    let err = EtcdCluster::start(Path::new("etcd-that-is-not-installed"), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, HarnessError::EtcdMissing { .. }), "{err}");
    assert!(
        err.to_string().contains("apt-get install etcd-server"),
        "{err}"
    );
}

#[tokio::test]
async fn data_dir_is_removed_on_drop() {
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let dir = etcd.dir().to_owned();
    assert!(dir.exists());
    drop(etcd);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[tokio::test]
async fn secured_member_serves_tls_clients_as_root_and_refuses_anonymous_ones() {
    let etcd = EtcdCluster::single_secured("harness-root-password")
        .await
        .expect("starting a secured etcd");
    assert!(etcd.endpoint(0).starts_with("https://"));
    let mut root = etcd.client().await;
    root.put("/t/secured", "yes", None).await.unwrap();
    let auth = root.auth_client().user_list().await.unwrap();
    assert_eq!(auth.users(), ["root"]);

    // TLS with the client certificate but no user: etcd knows the certificate's name
    // only, which has no role.
    let tls = etcd.tls_files().unwrap();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let options = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)))
            .identity(etcd_client::Identity::from_pem(
                read(&tls.client.cert),
                read(&tls.client.key),
            )),
    );
    let mut anonymous = etcd_client::Client::connect(etcd.endpoints(), Some(options))
        .await
        .unwrap();
    assert!(anonymous.get("/t/secured", None).await.is_err());
}
