//! Active health checks by the control-plane leader, end to end with real processes: a new
//! node goes from unknown to healthy; one that stops SERVING (or dies) turns unhealthy
//! within its policy's thresholds, with a `nodeFailed` event, and proxies stop routing to
//! it; it comes back healthy with a `nodeRecovered` event; a node that flaps is
//! quarantined until an operator recovers it. Echo's policy checks every 200 ms, two
//! failures or passes in a row, so each transition takes well under a second.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, served_by};
use meridian_tests::control::{OPERATOR_TOKEN, authorized, channel};
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::ProxyProcess;
use tokio::time::Instant;

const INTERVAL_MS: u32 = 200;
const UNHEALTHY_THRESHOLD: u32 = 2;
const HEALTHY_THRESHOLD: u32 = 2;
/// Room on top of the thresholds for the store, the follower and a busy machine.
const SLACK: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(20);

/// Echo's policy with fast health checks.
async fn fast_health_checks(cluster: &Cluster) {
    let policy = pb::ServicePolicy {
        name: ECHO.into(),
        federation: "prod".into(),
        health_check: Some(pb::HealthCheckPolicy {
            interval_ms: INTERVAL_MS,
            timeout_ms: 200,
            unhealthy_threshold: UNHEALTHY_THRESHOLD,
            healthy_threshold: HEALTHY_THRESHOLD,
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.set_policy(policy).await;
}

/// Starts a demo node and registers it in eu-west; returns it and the node as registered.
async fn start_node(cluster: &Cluster, id: &str, zone: &str) -> (DemoNodeProcess, pb::Node) {
    let process =
        DemoNodeProcess::start(id, &[], &cluster.dir.path().join(format!("{id}.log"))).await;
    let node = pb::Node {
        id: id.into(),
        address: process.addr.to_string(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: zone.into(),
        services: vec![ECHO.into()],
        ..Default::default()
    };
    let registered = cluster
        .cp
        .admin()
        .await
        .register_node(authorized(
            pb::RegisterNodeRequest {
                node: Some(node),
                replace: true,
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("registering a node")
        .into_inner();
    (process, registered)
}

async fn set_serving(node: &DemoNodeProcess, serving: bool) {
    DemoControlClient::new(node.channel().await)
        .set_health(demo::SetHealthRequest { serving })
        .await
        .expect("DemoControl/SetHealth");
}

async fn node(cluster: &Cluster, id: &str) -> pb::Node {
    let request = authorized(
        pb::ListNodesRequest {
            federation: "prod".into(),
            ..Default::default()
        },
        OPERATOR_TOKEN,
    );
    let nodes = cluster
        .cp
        .admin()
        .await
        .list_nodes(request)
        .await
        .expect("ListNodes")
        .into_inner()
        .nodes;
    nodes
        .into_iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("node {id} is not listed"))
}

fn status_of(node: &pb::Node) -> pb::NodeStatus {
    pb::NodeStatus::try_from(node.status).expect("a known status")
}

/// Polls until node `id` has `status`; returns the node and how long it took from `since`.
async fn wait_status(
    cluster: &Cluster,
    id: &str,
    status: pb::NodeStatus,
    since: Instant,
) -> (pb::Node, Duration) {
    loop {
        let current = node(cluster, id).await;
        if status_of(&current) == status {
            return (current, since.elapsed());
        }
        assert!(
            since.elapsed() < DEADLINE,
            "node {id} not {status:?} within {DEADLINE:?}: {current:?}; control plane output:\n{}",
            cluster.cp.process.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The recorded events of `kind` about node `id`.
async fn events(cluster: &Cluster, kind: &str, id: &str) -> Vec<pb::Event> {
    let request = pb::WatchEventsRequest {
        kinds: vec![kind.into()],
        follow: false,
        ..Default::default()
    };
    let mut stream = cluster
        .cp
        .admin()
        .await
        .watch_events(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("WatchEvents")
        .into_inner();
    let subject = format!("node/{id}");
    let mut found = Vec::new();
    while let Some(event) = stream.message().await.expect("an event") {
        if event.subject == subject {
            found.push(event);
        }
    }
    found
}

/// Polls until `count` events of `kind` name node `id`; returns them.
async fn wait_events(cluster: &Cluster, kind: &str, id: &str, count: usize) -> Vec<pb::Event> {
    let started = Instant::now();
    loop {
        let found = events(cluster, kind, id).await;
        if found.len() >= count {
            return found;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{count} {kind} event(s) for {id} not recorded within {DEADLINE:?}; got {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The proxy's view of `node` in Echo's entry: (status, usable).
fn endpoint(table: &serde_json::Value, node: &str) -> Option<(String, bool)> {
    let echo = table["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == ECHO)?;
    let endpoint = echo["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == node)?;
    Some((
        endpoint["status"].as_str()?.to_owned(),
        endpoint["usable"].as_bool()?,
    ))
}

async fn wait_endpoint(proxy: &ProxyProcess, node: &str, status: &str, usable: bool) {
    proxy
        .wait_table(DEADLINE, &format!("{node} {status}"), |t| {
            endpoint(t, node) == Some((status.to_owned(), usable))
        })
        .await;
}

/// Which nodes served `n` Echo calls through the proxy.
async fn served(proxy: &ProxyProcess, n: usize) -> Vec<String> {
    let mut client = EchoClient::new(channel(&proxy.url()).await);
    let mut nodes = Vec::new();
    for i in 0..n {
        let request = demo::SayRequest {
            text: format!("m{i}"),
            ..Default::default()
        };
        let response = client.say(request).await.expect("Echo/Say via the proxy");
        nodes.push(served_by(&response));
    }
    nodes
}

fn threshold_time(threshold: u32) -> Duration {
    Duration::from_millis(u64::from(threshold * INTERVAL_MS))
}

#[tokio::test]
async fn a_node_that_stops_serving_turns_unhealthy_leaves_routing_and_comes_back() {
    let cluster = Cluster::start().await;
    fast_health_checks(&cluster).await;
    let started = Instant::now();
    let (eu1, registered) = start_node(&cluster, "eu-1", "eu-west-a").await;
    assert_eq!(
        status_of(&registered),
        pb::NodeStatus::Unspecified,
        "a new node starts unknown"
    );
    let (_eu2, _) = start_node(&cluster, "eu-2", "eu-west-b").await;

    // (a) Unknown → healthy, without an event.
    let (healthy, took) = wait_status(&cluster, "eu-1", pb::NodeStatus::Healthy, started).await;
    println!("eu-1 unknown → healthy after {took:?}");
    assert_eq!(
        healthy.status_reason,
        format!("health check passed {HEALTHY_THRESHOLD} times in a row")
    );
    wait_status(&cluster, "eu-2", pb::NodeStatus::Healthy, started).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_endpoint(&proxy, "eu-1", "healthy", true).await;

    // (b) NOT_SERVING → unhealthy after the threshold of failed checks, with an event.
    let stopped = Instant::now();
    set_serving(&eu1, false).await;
    let (unhealthy, took) = wait_status(&cluster, "eu-1", pb::NodeStatus::Unhealthy, stopped).await;
    println!(
        "eu-1 healthy → unhealthy {took:?} after it stopped serving \
         ({UNHEALTHY_THRESHOLD} checks × {INTERVAL_MS} ms)"
    );
    // Two failures in a row are at least one interval apart (less a little for a check
    // that was under way when the node stopped serving).
    let least = threshold_time(UNHEALTHY_THRESHOLD - 1) - Duration::from_millis(50);
    assert!(
        took >= least,
        "unhealthy after {took:?}, sooner than {UNHEALTHY_THRESHOLD} checks allow"
    );
    assert!(
        took <= threshold_time(UNHEALTHY_THRESHOLD) + SLACK,
        "unhealthy only after {took:?}"
    );
    assert_eq!(
        unhealthy.status_reason,
        format!("health check failed {UNHEALTHY_THRESHOLD} times in a row: NOT_SERVING")
    );
    let failed = wait_events(&cluster, "nodeFailed", "eu-1", 1).await;
    assert_eq!(failed[0].cause, "health check", "{failed:?}");
    assert!(failed[0].message.contains("NOT_SERVING"), "{failed:?}");

    // (d) The proxy stops routing to it.
    wait_endpoint(&proxy, "eu-1", "unhealthy", false).await;
    let nodes = served(&proxy, 30).await;
    assert!(
        nodes.iter().all(|n| n == "eu-2"),
        "calls reached the unhealthy node: {nodes:?}"
    );

    // (c) SERVING again → healthy after the threshold of passed checks, with an event.
    let restarted = Instant::now();
    set_serving(&eu1, true).await;
    let (recovered, took) = wait_status(&cluster, "eu-1", pb::NodeStatus::Healthy, restarted).await;
    println!(
        "eu-1 unhealthy → healthy {took:?} after it served again \
         ({HEALTHY_THRESHOLD} checks × {INTERVAL_MS} ms)"
    );
    assert!(
        took >= threshold_time(HEALTHY_THRESHOLD - 1) - Duration::from_millis(50),
        "healthy after {took:?}, sooner than {HEALTHY_THRESHOLD} checks allow"
    );
    assert!(
        took <= threshold_time(HEALTHY_THRESHOLD) + SLACK,
        "{took:?}"
    );
    assert_eq!(
        recovered.status_reason,
        format!("health check passed {HEALTHY_THRESHOLD} times in a row")
    );
    let back = wait_events(&cluster, "nodeRecovered", "eu-1", 1).await;
    assert_eq!(
        back.len(),
        1,
        "only unhealthy → healthy records one: {back:?}"
    );
    assert_eq!(back[0].cause, "health check");

    // (d) ... and routes to it again. It comes back warming up (slow start, 10 s by
    // default: a tenth of its share at first), so keep calling until one reaches it.
    wait_endpoint(&proxy, "eu-1", "healthy", true).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut nodes = Vec::new();
    while !nodes.iter().any(|n| n == "eu-1") {
        assert!(
            Instant::now() < deadline,
            "no call reached the recovered node in 20 s: {nodes:?}"
        );
        nodes = served(&proxy, 20).await;
    }
}

#[tokio::test]
async fn a_killed_node_turns_unhealthy() {
    let cluster = Cluster::start().await;
    fast_health_checks(&cluster).await;
    let (mut eu1, _) = start_node(&cluster, "eu-1", "eu-west-a").await;
    wait_status(&cluster, "eu-1", pb::NodeStatus::Healthy, Instant::now()).await;

    let killed = Instant::now();
    eu1.process.kill();
    let (unhealthy, took) = wait_status(&cluster, "eu-1", pb::NodeStatus::Unhealthy, killed).await;
    println!(
        "eu-1 unhealthy {took:?} after it was killed: {}",
        unhealthy.status_reason
    );
    assert!(
        took <= threshold_time(UNHEALTHY_THRESHOLD) + SLACK,
        "{took:?}"
    );
    assert!(
        unhealthy.status_reason.starts_with(&format!(
            "health check failed {UNHEALTHY_THRESHOLD} times in a row: "
        )),
        "{unhealthy:?}"
    );
    assert!(
        unhealthy.status_reason.contains("connection refused"),
        "{unhealthy:?}"
    );
    wait_events(&cluster, "nodeFailed", "eu-1", 1).await;

    // Two passes and two failures at least; an unhealthy node is still checked.
    let checks = cluster
        .cp
        .metric("meridian_control_health_checks_total")
        .await;
    assert!(checks >= 4.0, "{checks} checks counted");
    let checked = cluster
        .cp
        .metric("meridian_control_health_checked_nodes")
        .await;
    assert_eq!(checked, 1.0);
}

#[tokio::test]
async fn a_flapping_node_is_quarantined_until_an_operator_recovers_it() {
    let cluster = Cluster::start().await;
    fast_health_checks(&cluster).await;
    // Two flaps within a minute quarantine a node.
    cluster
        .cp
        .change_config(|c| {
            c.flap_threshold = 2;
            c.flap_window_ms = 60_000;
        })
        .await;

    let (eu1, _) = start_node(&cluster, "eu-1", "eu-west-a").await;
    wait_status(&cluster, "eu-1", pb::NodeStatus::Healthy, Instant::now()).await;

    // Flap 1: healthy → unhealthy. Flap 2 would be unhealthy → healthy: quarantined instead.
    set_serving(&eu1, false).await;
    wait_status(&cluster, "eu-1", pb::NodeStatus::Unhealthy, Instant::now()).await;
    let serving_again = Instant::now();
    set_serving(&eu1, true).await;
    let (quarantined, took) =
        wait_status(&cluster, "eu-1", pb::NodeStatus::Quarantined, serving_again).await;
    println!(
        "eu-1 quarantined {took:?} after its second flap: {}",
        quarantined.status_reason
    );
    assert_eq!(
        quarantined.status_reason,
        "flapped 2 times in 60s; recover it with meridianctl nodes recover"
    );
    let quarantines = wait_events(&cluster, "nodeQuarantined", "eu-1", 1).await;
    assert_eq!(quarantines[0].cause, "health check");

    // It passes every check now, yet stays out: ten intervals and more.
    let watched = Instant::now();
    while watched.elapsed() < threshold_time(10) {
        let current = node(&cluster, "eu-1").await;
        assert_eq!(
            status_of(&current),
            pb::NodeStatus::Quarantined,
            "a quarantined node came back by itself: {current:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An operator recovers it with `meridianctl nodes recover`: unknown, then healthy on
    // its checks.
    let url = cluster.cp.url();
    let (status, stdout, stderr) = meridian_tests::process::run_to_completion(
        "meridianctl",
        &[
            "--control-plane",
            &url,
            "--token",
            OPERATOR_TOKEN,
            "-o",
            "json",
            "nodes",
            "recover",
            "eu-1",
            "--reason",
            "flapping fixed",
        ],
    );
    assert!(
        status.success(),
        "meridianctl nodes recover failed: {stderr}"
    );
    assert!(
        stdout.contains("unknown"),
        "recovered node should be unknown until checked: {stdout}"
    );
    wait_status(&cluster, "eu-1", pb::NodeStatus::Healthy, Instant::now()).await;

    // With a clean history: one failure episode is one flap, not a second quarantine.
    set_serving(&eu1, false).await;
    let (after, _) = wait_status(&cluster, "eu-1", pb::NodeStatus::Unhealthy, Instant::now()).await;
    assert!(
        after.status_reason.starts_with("health check failed"),
        "{after:?}"
    );
    assert_eq!(
        events(&cluster, "nodeQuarantined", "eu-1").await.len(),
        1,
        "quarantined again after recovery"
    );
}
