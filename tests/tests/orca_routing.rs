//! Server-reported load steers the adaptive algorithm: three equally fast nodes behind a
//! real proxy, one reporting 95 % utilisation in its ORCA trailers
//! (`endpoint-load-metrics-bin`) and two reporting 10 %. The busy one loses traffic; when
//! the reports swap, so do the shares. With reports ignored (the policy's
//! `ignore_node_reports`), the three share alike: the reports, not latency, made the
//! difference.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, echo_calls_per_node, share, wait_steady};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;

async fn report(node: &DemoNodeProcess, utilization: f64) {
    DemoControlClient::new(node.channel().await)
        .set_utilization(demo::SetUtilizationRequest {
            utilization: Some(utilization),
        })
        .await
        .expect("setting the reported utilisation");
}

async fn adaptive_policy(cluster: &Cluster, ignore_node_reports: bool) {
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: pb::Algorithm::Adaptive.into(),
            adaptive: Some(pb::AdaptivePolicy {
                ignore_node_reports,
                // A node reporting 95 % is hot: avoided while a cooler one is there, by
                // the report alone. (At the default 1.5 it only costs more, and one
                // latency outlier on a calm node can hide that for seconds.)
                hot_utilization: 0.9,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
}

#[tokio::test]
async fn a_node_reporting_95_percent_loses_traffic_to_nodes_reporting_10() {
    let cluster = Cluster::start().await;
    adaptive_policy(&cluster, false).await;
    let args = |u: &'static str| ["--latency-ms", "5", "--utilization", u];
    let busy = cluster
        .node("busy", "eu-west", "eu-west-a", 0, &args("0.95"))
        .await;
    let calm = [
        cluster
            .node("calm-1", "eu-west", "eu-west-a", 0, &args("0.1"))
            .await,
        cluster
            .node("calm-2", "eu-west", "eu-west-a", 0, &args("0.1"))
            .await,
    ];
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 3).await;
    let via = channel(&proxy.url()).await;

    // Every node answers a few calls first, so each has a report and a latency estimate.
    echo_calls_per_node(&via, 4, 60).await;
    let counts = echo_calls_per_node(&via, 4, 300).await;
    eprintln!("busy reports 0.95, the others 0.1: {counts:?}");
    // A fair share is a third; the busy node should get well under half the share of
    // either calm one.
    for calm in ["calm-1", "calm-2"] {
        assert!(
            share(&counts, "busy") < 0.5 * share(&counts, calm),
            "busy got {:.1} %, {calm} {:.1} %: {counts:?}",
            100.0 * share(&counts, "busy"),
            100.0 * share(&counts, calm)
        );
    }

    // The reports swap: calm-1 is now the busy one, and loses the traffic.
    report(&busy, 0.1).await;
    report(&calm[0], 0.95).await;
    // Reports reach the proxy with responses; a node that got no calls keeps its old
    // report until it ages out (2 s), then is tried again. Load until the proxy holds
    // both new reports.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        echo_calls_per_node(&via, 4, 20).await;
        let table = proxy.debug_table().await;
        let reported = |node: &str| {
            table["services"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|s| s["name"] == ECHO)
                .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                .find(|e| e["node"] == node)
                .and_then(|e| e["reported_utilization"].as_f64())
        };
        if reported("busy") == Some(0.1) && reported("calm-1") == Some(0.95) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy never held the swapped reports: {table:#}"
        );
    }
    let swapped = echo_calls_per_node(&via, 4, 300).await;
    eprintln!("calm-1 reports 0.95, the others 0.1: {swapped:?}");
    for cool in ["busy", "calm-2"] {
        assert!(
            share(&swapped, "calm-1") < 0.5 * share(&swapped, cool),
            "calm-1 got {:.1} %, {cool} {:.1} %: {swapped:?}",
            100.0 * share(&swapped, "calm-1"),
            100.0 * share(&swapped, cool)
        );
    }

    // The policy ignores reports: the three nodes, equally fast, share alike again.
    adaptive_policy(&cluster, true).await;
    proxy
        .wait_table(Duration::from_secs(20), "adaptive ignoring reports", |t| {
            t["services"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == ECHO && s["adaptive"]["ignore_node_reports"] == true)
        })
        .await;
    let blind = echo_calls_per_node(&via, 4, 300).await;
    eprintln!("reports ignored: {blind:?}");
    assert!(
        share(&blind, "calm-1") > 0.15,
        "with reports ignored calm-1 should get about a third: {blind:?}"
    );
}
