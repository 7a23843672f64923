//! Control-plane resilience on real etcd with real processes: two replicas elect exactly
//! one leader and the survivor of a `kill -9` leads within the lease TTL while a proxy
//! subscribed to it sees no version regression and ends with the store's table; a watch
//! whose revision etcd compacted away is recovered from; an etcd restart under a running
//! control plane loses nothing.

use std::time::{Duration, Instant};

use meridian_control_plane::keys::{self, Keys, Kind};
use meridian_proto::v1 as pb;
use meridian_shared::domain::Node;
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized,
};
use meridian_tests::subscriber::{Subscriber, SubscriberView};

const DEADLINE: Duration = Duration::from_secs(30);

async fn start_cp(
    etcd: &EtcdCluster,
    prefix: &str,
    replica: &str,
    ttl: u32,
    dir: &std::path::Path,
) -> ControlPlaneProcess {
    ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix,
        replica,
        election_ttl_seconds: ttl,
        dir,
    })
    .await
}

async fn seed(cp: &ControlPlaneProcess) {
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
}

fn node(id: &str, port: u16) -> pb::Node {
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

/// Registers `node`, retrying while the control plane cannot reach the store.
async fn register(cp: &ControlPlaneProcess, node: pb::Node) {
    let started = Instant::now();
    loop {
        let request = pb::RegisterNodeRequest {
            node: Some(node.clone()),
            replace: false,
        };
        match cp
            .admin()
            .await
            .register_node(authorized(request, OPERATOR_TOKEN))
            .await
        {
            Ok(_) => return,
            Err(status)
                if status.code() == tonic::Code::Unavailable && started.elapsed() < DEADLINE =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("registering {}: {status}", node.id),
        }
    }
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

fn assert_versions_increase(view: &SubscriberView) {
    let versions: Vec<u64> = view.received.iter().map(|(v, _)| *v).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "version regression: {versions:?}"
    );
}

async fn leaders(cps: &[&ControlPlaneProcess]) -> Vec<String> {
    let mut leaders = Vec::new();
    for cp in cps {
        if cp.is_leader().await {
            leaders.push(cp.replica.clone());
        }
    }
    leaders
}

#[tokio::test]
async fn killing_the_leader_hands_over_within_the_ttl_without_version_regression() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let ttl = 3;
    let mut cps = [
        start_cp(&etcd, "/failover/", "cp-a", ttl, dir.path()).await,
        start_cp(&etcd, "/failover/", "cp-b", ttl, dir.path()).await,
    ];
    seed(&cps[0]).await;

    let started = Instant::now();
    let mut current = leaders(&[&cps[0], &cps[1]]).await;
    while current.len() != 1 {
        assert!(
            started.elapsed() < DEADLINE,
            "expected exactly one leader, got {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        current = leaders(&[&cps[0], &cps[1]]).await;
    }
    let leader = cps.iter().position(|cp| cp.replica == current[0]).unwrap();
    let survivor = 1 - leader;

    let proxy = Subscriber::start(&cps[survivor].url(), "proxy-eu", "prod", 0).await;
    register(&cps[survivor], node("before", 9001)).await;
    proxy
        .wait_until(DEADLINE, "node 'before'", |v| {
            v.nodes.contains_key("before")
        })
        .await;

    cps[leader].process.kill();
    let killed_at = Instant::now();
    let survivor = &cps[survivor];
    while !survivor.is_leader().await {
        assert!(
            killed_at.elapsed() < Duration::from_secs(u64::from(ttl) + 5),
            "no new leader after {:?}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let handover = killed_at.elapsed();
    eprintln!("leadership moved {handover:?} after kill -9 (TTL {ttl}s)");
    assert!(
        // etcd checks lease expiry about every 500 ms; the lease itself was last refreshed
        // up to a third of the TTL before the kill.
        handover <= Duration::from_secs(u64::from(ttl) + 1),
        "handover took {handover:?}, more than the {ttl}s lease TTL"
    );

    register(survivor, node("after", 9002)).await;
    let view = proxy
        .wait_until(DEADLINE, "node 'after'", |v| v.nodes.contains_key("after"))
        .await;
    assert_versions_increase(&view);
    let held: Vec<pb::Node> = view.nodes.into_values().collect();
    let mut stored = store_nodes(survivor).await;
    stored.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(held, stored, "the survivor's table differs from the store");
}

/// Sends SIGSTOP or SIGCONT to a process.
fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

#[tokio::test]
async fn a_watch_compacted_away_is_recovered_and_the_table_stays_right() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = start_cp(&etcd, "/compact/", "cp-a", 5, dir.path()).await;
    seed(&cp).await;
    let proxy = Subscriber::start(&cp.url(), "proxy-eu", "prod", 0).await;
    proxy
        .wait_until(DEADLINE, "initial snapshot", |v| !v.received.is_empty())
        .await;

    // Freeze the control plane and restart etcd under it, so its watch connection dies
    // at a known revision; write past that revision and compact it away; then let the
    // control plane run again: it can only resume its watch from a compacted revision.
    signal(cp.process.pid(), "-STOP");
    etcd.kill_member(0);
    etcd.restart_member(0).await.expect("restarting etcd");
    let keys = Keys::new("/compact/");
    let mut client = etcd.client().await;
    const WRITES: u16 = 200;
    for i in 0..WRITES {
        let n = Node::try_from(node(&format!("bulk-{i:04}"), 20_000 + i)).unwrap();
        client
            .put(keys.key(Kind::Node, &n.id), keys::encode(&n), None)
            .await
            .unwrap();
    }
    let revision = client
        .get("/compact/", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(revision, None)
        .await
        .expect("compacting etcd");
    signal(cp.process.pid(), "-CONT");

    let view = proxy
        .wait_until(
            Duration::from_secs(60),
            "all bulk nodes in the table",
            |v| v.nodes.keys().filter(|id| id.starts_with("bulk-")).count() == usize::from(WRITES),
        )
        .await;
    assert_versions_increase(&view);
    let reloads = cp.metric("meridian_control_state_reloads_total").await;
    assert!(
        reloads >= 1.0,
        "the control plane never hit the compaction (reloads: {reloads}); its log:\n{}",
        cp.process.output()
    );

    register(&cp, node("after-compaction", 9003)).await;
    let view = proxy
        .wait_until(DEADLINE, "node after compaction", |v| {
            v.nodes.contains_key("after-compaction")
        })
        .await;
    let held: Vec<pb::Node> = view.nodes.into_values().collect();
    let mut stored = store_nodes(&cp).await;
    stored.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(held, stored);
}

#[tokio::test]
async fn restarting_etcd_under_a_running_control_plane_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = start_cp(&etcd, "/restart/", "cp-a", 5, dir.path()).await;
    seed(&cp).await;
    let proxy = Subscriber::start(&cp.url(), "proxy-eu", "prod", 0).await;
    register(&cp, node("before", 9001)).await;
    proxy
        .wait_until(DEADLINE, "node 'before'", |v| {
            v.nodes.contains_key("before")
        })
        .await;

    etcd.kill_member(0);
    etcd.restart_member(0).await.expect("restarting etcd");

    register(&cp, node("after", 9002)).await;
    let view = proxy
        .wait_until(DEADLINE, "node 'after'", |v| v.nodes.contains_key("after"))
        .await;
    assert!(
        view.nodes.contains_key("before"),
        "a node registered before the restart was lost"
    );
    assert_versions_increase(&view);
    let held: Vec<pb::Node> = view.nodes.into_values().collect();
    let mut stored = store_nodes(&cp).await;
    stored.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(held, stored);

    let events = cp
        .admin()
        .await
        .watch_events(authorized(
            pb::WatchEventsRequest::default(),
            OPERATOR_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut events = events;
    let mut subjects = Vec::new();
    while let Some(event) = events.message().await.unwrap() {
        subjects.push(event.subject);
    }
    for wanted in ["node/before", "node/after"] {
        assert!(
            subjects.iter().any(|s| s == wanted),
            "event for {wanted} missing: {subjects:?}"
        );
    }
}
