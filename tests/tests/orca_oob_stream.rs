//! ORCA out of band: with the adaptive policy's `oob_report_interval_ms` set, the proxy
//! keeps one `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream per node and
//! feeds its reports to the same estimate as the trailers. Real etcd, control plane, proxy
//! and demo nodes:
//!
//! - with trailers off at every node, the node whose stream says 95 % loses traffic to
//!   the nodes saying 10 %: the stream alone steers it;
//! - a node that serves no ORCA (UNIMPLEMENTED) is not asked again and is routed by
//!   latency, every call answered;
//! - Prequal probes (`probes_per_call`) alone, trailers off and no stream, do the same,
//!   and leave no call open at the node;
//! - one stream per node, kept across table updates (the node's first health verdict
//!   changes its entry), and ended when the node leaves the table: the node itself counts
//!   its open streams (`x-node-orca-streams` on its responses).

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, echo_calls_per_node, share, wait_steady};
use meridian_tests::control::channel;
use meridian_tests::demo_node::behaviour::ORCA_STREAMS_HEADER;
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::ProxyProcess;

/// Echo routed adaptively, asking nodes for ORCA reports every 200 ms.
async fn oob_policy(cluster: &Cluster) {
    adaptive_policy(
        cluster,
        pb::AdaptivePolicy {
            oob_report_interval_ms: 200,
            ..Default::default()
        },
    )
    .await;
}

async fn adaptive_policy(cluster: &Cluster, adaptive: pb::AdaptivePolicy) {
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: pb::Algorithm::Adaptive.into(),
            adaptive: Some(adaptive),
            ..Default::default()
        })
        .await;
}

/// The Echo endpoint of `node` in the proxy's `/debug/table`.
fn endpoint<'t>(table: &'t serde_json::Value, node: &str) -> Option<&'t serde_json::Value> {
    table["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == ECHO)
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .find(|e| e["node"] == node)
}

/// How many ORCA streams `node` has open, as it says on a direct call.
async fn streams_at(node: &DemoNodeProcess) -> u64 {
    let reply = EchoClient::new(node.channel().await)
        .say(demo::SayRequest {
            text: "count".into(),
            ..Default::default()
        })
        .await
        .expect("direct call to the node");
    reply
        .metadata()
        .get(ORCA_STREAMS_HEADER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("the node counts its ORCA streams")
}

/// Polls until `node` has `expected` ORCA streams open, for at most `deadline`.
async fn wait_streams(node: &DemoNodeProcess, expected: u64, deadline: Duration) {
    let started = tokio::time::Instant::now();
    loop {
        let open = streams_at(node).await;
        if open == expected {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "the node has {open} ORCA streams open, not {expected}, after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three equally fast nodes sending no trailers, one saying 95 % and two 10 % over
/// whatever out-of-band path `adaptive` turns on (`via_what` names it in messages): the
/// proxy holds their reports before any call went through it, and the busy node loses
/// traffic. Returns the running cluster, nodes (busy first) and proxy.
async fn busy_node_loses_traffic(
    adaptive: pb::AdaptivePolicy,
    via_what: &str,
) -> (Cluster, Vec<DemoNodeProcess>, ProxyProcess) {
    let cluster = Cluster::start().await;
    adaptive_policy(&cluster, adaptive).await;
    let args = |u: &'static str| {
        [
            "--latency-ms",
            "5",
            "--utilization",
            u,
            "--no-orca-trailers",
        ]
    };
    let mut nodes = Vec::new();
    for (id, u) in [("busy", "0.95"), ("calm-1", "0.1"), ("calm-2", "0.1")] {
        nodes.push(cluster.node(id, "eu-west", "eu-west-a", 0, &args(u)).await);
    }
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 3).await;
    // No call has gone through the proxy yet, and the nodes send no trailers: what the
    // proxy holds of their load came out of band.
    proxy
        .wait_table(Duration::from_secs(20), via_what, |t| {
            let reported = |n| endpoint(t, n).and_then(|e| e["reported_utilization"].as_f64());
            reported("busy") == Some(0.95)
                && reported("calm-1") == Some(0.1)
                && reported("calm-2") == Some(0.1)
        })
        .await;
    let via = channel(&proxy.url()).await;
    echo_calls_per_node(&via, 4, 60).await;
    let counts = echo_calls_per_node(&via, 4, 300).await;
    eprintln!("{via_what}: busy says 0.95, the others 0.1: {counts:?}");
    // A fair share is a third; the busy node should get well under half of what the
    // busier calm one gets (which calm one that is, is latency noise on a loaded machine:
    // a few slow responses raise a node's latency estimate for a second or two).
    let calm = share(&counts, "calm-1").max(share(&counts, "calm-2"));
    assert!(
        share(&counts, "busy") < 0.5 * calm,
        "{via_what}: busy got {:.1} %, the busier calm one {:.1} %: {counts:?}",
        100.0 * share(&counts, "busy"),
        100.0 * calm
    );
    (cluster, nodes, proxy)
}

#[tokio::test]
async fn with_trailers_off_the_stream_alone_steers_traffic_from_a_node_at_95_percent() {
    let stream = pb::AdaptivePolicy {
        oob_report_interval_ms: 200,
        ..Default::default()
    };
    let (_cluster, nodes, proxy) =
        busy_node_loses_traffic(stream, "reports over the ORCA stream").await;
    assert_eq!(proxy.metric("meridian_proxy_orca_streams").await, 3.0);
    assert_eq!(streams_at(&nodes[0]).await, 1, "one stream per node");
}

#[tokio::test]
async fn with_trailers_off_probes_alone_steer_traffic_from_a_node_at_95_percent() {
    let probes = pb::AdaptivePolicy {
        probes_per_call: 0.25,
        probe_idle_interval_ms: 200,
        ..Default::default()
    };
    let (_cluster, nodes, proxy) = busy_node_loses_traffic(probes, "reports from probes").await;
    assert!(proxy.metric("meridian_proxy_probes_total").await > 0.0);
    // Probes end their calls: none stays open at the node (one may be in progress at any
    // instant, so poll for a moment with none).
    wait_streams(&nodes[0], 0, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_node_without_orca_is_asked_once_and_routed_by_latency() {
    let cluster = Cluster::start().await;
    oob_policy(&cluster).await;
    let plain = |ms: &'static str| {
        [
            "--latency-ms",
            ms,
            "--no-orca-service",
            "--no-orca-trailers",
        ]
    };
    let _fast = cluster
        .node("fast", "eu-west", "eu-west-a", 0, &plain("2"))
        .await;
    let _slow = cluster
        .node("slow", "eu-west", "eu-west-a", 0, &plain("200"))
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 2).await;
    proxy
        .wait_table(
            Duration::from_secs(20),
            "both nodes marked as serving no ORCA",
            |t| {
                ["fast", "slow"].iter().all(|n| {
                    endpoint(t, n).is_some_and(|e| {
                        e["orca_stream"]["unsupported"] == true
                            && e["orca_stream"]["running"] == false
                    })
                })
            },
        )
        .await;
    let via = channel(&proxy.url()).await;
    // Every call is answered (`load` panics otherwise), and by latency the fast node takes
    // most (blind, two callers would split the calls about evenly).
    echo_calls_per_node(&via, 2, 40).await;
    let counts = echo_calls_per_node(&via, 2, 200).await;
    eprintln!("no ORCA anywhere, 2 ms against 200 ms: {counts:?}");
    assert!(
        share(&counts, "fast") > 0.75,
        "the fast node should take most calls: {counts:?}"
    );
    assert_eq!(proxy.metric("meridian_proxy_orca_streams").await, 0.0);
    let table = proxy.debug_table().await;
    assert!(
        endpoint(&table, "fast").is_some_and(|e| e["reported_utilization"].is_null()),
        "{table:#}"
    );
}

/// The Echo endpoints' count in the proxy's table is `count`.
async fn wait_endpoints(proxy: &ProxyProcess, count: usize) {
    proxy
        .wait_table(Duration::from_secs(20), "Echo endpoints", |t| {
            t["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == ECHO)
                .and_then(|s| s["endpoints"].as_array())
                .is_some_and(|e| e.len() == count)
        })
        .await;
}

#[tokio::test]
async fn one_stream_per_node_kept_across_tables_and_ended_when_the_node_leaves() {
    let cluster = Cluster::start().await;
    oob_policy(&cluster).await;
    let leaving = cluster
        .node("leaving", "eu-west", "eu-west-a", 0, &[])
        .await;
    let staying = cluster
        .node("staying", "eu-west", "eu-west-a", 0, &[])
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    // Registered with status unknown, then marked healthy: the nodes' entries changed
    // under the streams, which carry on, one each.
    wait_steady(&proxy, 2).await;
    for node in [&leaving, &staying] {
        wait_streams(node, 1, Duration::from_secs(20)).await;
    }
    assert_eq!(proxy.metric("meridian_proxy_orca_streams").await, 2.0);

    cluster.deregister("leaving").await;
    wait_endpoints(&proxy, 1).await;
    // The proxy cancelled the stream; the node sees it end.
    wait_streams(&leaving, 0, Duration::from_secs(20)).await;
    assert_eq!(
        streams_at(&staying).await,
        1,
        "the other node's stream stays"
    );

    // The policy stops asking: the remaining stream ends too.
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: pb::Algorithm::Adaptive.into(),
            ..Default::default()
        })
        .await;
    wait_streams(&staying, 0, Duration::from_secs(20)).await;
}
