//! A node's state in the proxy survives routing-table updates that leave its address
//! alone: an operator relabelling or reweighting a node, or the control plane writing a
//! health verdict, must not readmit a node the proxy's breaker ejected (nor drop its
//! connection or latency estimate, which share the same fate in the proxy).

use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, route_to_echo, wait_steady};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::ProxyProcess;

/// Long enough that an opened breaker cannot half-open while the test runs.
const PENALTY_MS: u32 = 120_000;

async fn error_rate(node: &DemoNodeProcess, rate: f64) {
    DemoControlClient::new(node.channel().await)
        .set_error_rate(demo::SetErrorRateRequest { rate })
        .await
        .unwrap();
}

/// eu-1's entry in the proxy's `/debug/table`.
async fn eu1(proxy: &ProxyProcess) -> serde_json::Value {
    let table = proxy.debug_table().await;
    table["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "eu-1")
        .cloned()
        .expect("eu-1 is in the table")
}

#[tokio::test]
async fn an_ejected_node_stays_ejected_across_a_relabel_and_a_health_write() {
    let cluster = Cluster::start().await;
    let bad = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _good = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            outlier: Some(pb::OutlierPolicy {
                base_ejection_ms: PENALTY_MS,
                max_ejection_ms: PENALTY_MS,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    proxy
        .wait_table(Duration::from_secs(20), "the outlier policy", |t| {
            t["services"][0]["has_policy"] == true
        })
        .await;
    wait_steady(&proxy, 2).await;

    // Eject eu-1: it fails every call until its breaker opens.
    error_rate(&bad, 1.0).await;
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);
    let started = Instant::now();
    while eu1(&proxy).await["breaker_open"] != true {
        route_to_echo(&mut router)
            .await
            .expect("RouteMessage retries around the failing node");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "eu-1's breaker never opened"
        );
    }
    error_rate(&bad, 0.0).await;
    let version = proxy.debug_table().await["version"].as_u64().unwrap();

    // The operator changes eu-1's labels and weight (the registration also resets its
    // health status, which the control plane's checker then writes again).
    cluster
        .register(pb::Node {
            id: "eu-1".into(),
            address: bad.addr.to_string(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            services: vec![ECHO.into()],
            weight: 250,
            labels: [("rack".to_owned(), "r7".to_owned())].into(),
            ..Default::default()
        })
        .await;
    let table = proxy
        .wait_table(Duration::from_secs(20), "eu-1's new weight", |t| {
            t["services"][0]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["node"] == "eu-1" && e["weight"] == 250)
        })
        .await;
    assert!(table["version"].as_u64().unwrap() > version);
    let endpoint = eu1(&proxy).await;
    assert_eq!(
        endpoint["breaker_open"], true,
        "a relabelled node was readmitted: {endpoint:#}"
    );

    // The health checker's next verdict for eu-1 is another change of the node.
    proxy
        .wait_table(Duration::from_secs(30), "eu-1's health verdict", |t| {
            t["services"][0]["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["node"] == "eu-1" && e["status"] == "healthy")
        })
        .await;
    let endpoint = eu1(&proxy).await;
    assert_eq!(
        endpoint["breaker_open"], true,
        "a health write readmitted an ejected node: {endpoint:#}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(u64::from(PENALTY_MS / 2)),
        "the test outlasted the ejection it relies on"
    );
}
