//! The routing-table stream against a real `meridian-control` on real etcd: a node
//! registered with `meridianctl` reaches a subscribed proxy as a delta and its ACK shows in
//! `meridianctl proxies`; a self-registered node that stops its keep-alives leaves the
//! table within TTL + debounce and `meridianctl events` shows it lost; a burst of 1,000
//! writes is coalesced into far fewer pushes and the final table equals the store.

use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use meridian_proto::v1::node_registry_client::NodeRegistryClient;
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized, channel,
};
use meridian_tests::process::run_to_completion;
use meridian_tests::subscriber::Subscriber;

const DEADLINE: Duration = Duration::from_secs(20);

struct Setup {
    _etcd: EtcdCluster,
    cp: ControlPlaneProcess,
    _dir: tempfile::TempDir,
}

/// etcd, one control plane, federation `prod` with region `eu-west` (zones a, b).
async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix: "/stream-test/",
        replica: "cp-a",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    seed(&cp).await;
    Setup {
        _etcd: etcd,
        cp,
        _dir: dir,
    }
}

async fn seed(cp: &ControlPlaneProcess) {
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a", "eu-west-b"])
        .await;
}

pub fn node(id: &str, port: u16) -> pb::Node {
    pb::Node {
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        ..Default::default()
    }
}

fn ctl(cp: &ControlPlaneProcess, args: &[&str]) -> String {
    let url = cp.url();
    let mut argv = vec!["--control-plane", url.as_str(), "--token", OPERATOR_TOKEN];
    argv.extend_from_slice(args);
    let (status, stdout, stderr) = run_to_completion("meridianctl", &argv);
    assert!(status.success(), "meridianctl {args:?} failed: {stderr}");
    stdout
}

async fn store_nodes(cp: &ControlPlaneProcess) -> Vec<pb::Node> {
    let request = authorized(pb::ListNodesRequest::default(), OPERATOR_TOKEN);
    cp.admin()
        .await
        .list_nodes(request)
        .await
        .unwrap()
        .into_inner()
        .nodes
}

#[tokio::test]
async fn a_node_registered_with_meridianctl_arrives_as_a_delta_and_its_ack_is_listed() {
    let s = setup().await;
    let proxy = Subscriber::start(&s.cp.url(), "proxy-eu", "prod", 0).await;
    let first = proxy
        .wait_until(DEADLINE, "initial snapshot", |v| !v.received.is_empty())
        .await;
    assert_eq!(first.received[0].1, "snapshot");

    ctl(
        &s.cp,
        &[
            "nodes",
            "register",
            "eu-1",
            "--address",
            "127.0.0.1:9001",
            "--federation",
            "prod",
            "--region",
            "eu-west",
            "--zone",
            "eu-west-a",
            "--services",
            "demo.v1.Echo",
        ],
    );
    let view = proxy
        .wait_until(DEADLINE, "eu-1 in the table", |v| {
            v.nodes.contains_key("eu-1")
        })
        .await;
    let (version, kind) = *view.received.last().unwrap();
    assert_eq!(
        kind, "delta",
        "a single registration must arrive as a delta: {:?}",
        view.received
    );
    assert!(
        version > first.version,
        "versions must increase: {:?}",
        view.received
    );

    let started = Instant::now();
    loop {
        let listed: serde_json::Value =
            serde_json::from_str(&ctl(&s.cp, &["proxies", "-o", "json"])).unwrap();
        let acked = listed
            .as_array()
            .into_iter()
            .flatten()
            .chain(
                listed
                    .get("proxies")
                    .and_then(|p| p.as_array())
                    .into_iter()
                    .flatten(),
            )
            .find(|p| p["proxy_id"] == "proxy-eu")
            .map(|p| p["acked_version"].as_u64().unwrap_or_default());
        if acked == Some(version) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "ACK of version {version} never listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_node_that_stops_its_keep_alives_leaves_the_table_and_is_reported_lost() {
    let s = setup().await;
    let proxy = Subscriber::start(&s.cp.url(), "proxy-eu", "prod", 0).await;
    let mut registry = NodeRegistryClient::with_interceptor(
        channel(&s.cp.url()).await,
        meridian_tests::control::bearer(meridian_tests::control::NODE_TOKEN),
    );
    let ttl = 5;
    let registered = registry
        .register(pb::RegisterRequest {
            node: Some(node("eu-self", 9100)),
            ttl_seconds: ttl,
        })
        .await
        .expect("self-registration")
        .into_inner();
    assert_eq!(registered.ttl_seconds, ttl);
    proxy
        .wait_until(DEADLINE, "eu-self in the table", |v| {
            v.nodes.contains_key("eu-self")
        })
        .await;
    let silent_since = Instant::now();

    // No keep-alives: the lease lapses after the TTL; debounce (1 s max) and the store's
    // lease-expiry sweep add a little.
    let bound =
        Duration::from_secs(u64::from(ttl)) + Duration::from_secs(1) + Duration::from_secs(2);
    proxy
        .wait_until(
            bound + Duration::from_secs(10),
            "eu-self out of the table",
            |v| !v.nodes.contains_key("eu-self"),
        )
        .await;
    let gone_after = silent_since.elapsed();
    eprintln!("left the table {gone_after:?} after its last keep-alive (TTL {ttl}s)");
    assert!(
        gone_after <= bound,
        "left the table after {gone_after:?}, more than TTL + debounce ({bound:?})"
    );

    let started = Instant::now();
    loop {
        let events = ctl(&s.cp, &["events", "--kind", "nodeLost", "-o", "json"]);
        if events.lines().any(|l| l.contains("node/eu-self")) {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no nodeLost event for eu-self: {events}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost = store_nodes(&s.cp).await;
    let lost = lost
        .iter()
        .find(|n| n.id == "eu-self")
        .expect("lost nodes stay listed");
    assert_eq!(lost.status(), pb::NodeStatus::Lost);
}

#[tokio::test]
async fn a_burst_of_writes_is_coalesced_and_the_final_table_equals_the_store() {
    let s = setup().await;
    let proxy = Subscriber::start(&s.cp.url(), "proxy-eu", "prod", 0).await;
    proxy
        .wait_until(DEADLINE, "initial snapshot", |v| !v.received.is_empty())
        .await;

    const WRITES: u16 = 1_000;
    let writers: Vec<_> = (0..8u16)
        .map(|w| {
            let url = s.cp.url();
            tokio::spawn(async move {
                let mut admin =
                    meridian_proto::v1::admin_client::AdminClient::new(channel(&url).await);
                for i in (w..WRITES).step_by(8) {
                    let request = pb::RegisterNodeRequest {
                        node: Some(node(&format!("n{i:04}"), 10_000 + i)),
                        replace: false,
                    };
                    admin
                        .register_node(authorized(request, OPERATOR_TOKEN))
                        .await
                        .expect("register");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let view = proxy
        .wait_until(Duration::from_secs(60), "all nodes in the table", |v| {
            v.nodes.len() == usize::from(WRITES)
        })
        .await;
    let pushes = view.received.len() - 1;
    eprintln!("{WRITES} writes → {pushes} pushes");
    assert!(
        pushes * 10 < usize::from(WRITES),
        "{WRITES} writes caused {pushes} pushes; debouncing should coalesce them: {:?}",
        view.received
    );
    let versions: Vec<u64> = view.received.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions went backwards: {versions:?}"
    );

    let mut stored = store_nodes(&s.cp).await;
    stored.sort_by(|a, b| a.id.cmp(&b.id));
    let held: Vec<pb::Node> = view.nodes.into_values().collect();
    assert_eq!(held, stored, "the proxy's table differs from the store");
}
