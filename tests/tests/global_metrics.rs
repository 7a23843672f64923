//! Global metrics from load reports, on real etcd with two real control planes: two fake
//! proxies stream `ReportLoad` to one replica; `GetGlobalMetrics` (and `meridianctl
//! metrics`) there shows the calls/s they sent summed and the p99 of all their calls
//! merged (not the average of each proxy's p99); the other replica shows the same
//! through the store; a malformed report ends its stream with INVALID_ARGUMENT.

use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_shared::latency_histogram::LatencyHistogram;
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, PROXY_TOKEN, VIEWER_TOKEN,
    authorized, bearer, channel,
};
use meridian_tests::process::run_to_completion;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const SERVICE: &str = "demo.v1.Echo";
const DEADLINE: Duration = Duration::from_secs(30);
/// How often the fake proxies report (and the control plane asks them to).
const INTERVAL: Duration = Duration::from_secs(1);

async fn start_cp(etcd: &EtcdCluster, replica: &str, dir: &std::path::Path) -> ControlPlaneProcess {
    ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix: "/metrics-test/",
        replica,
        election_ttl_seconds: 5,
        dir,
    })
    .await
}

/// Federation prod, region eu-west, nodes n1 and n2 serving [`SERVICE`], reports every
/// [`INTERVAL`].
async fn seed(cp: &ControlPlaneProcess) {
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    let mut admin = cp.admin().await;
    for (id, port) in [("n1", 1), ("n2", 2)] {
        let node = pb::Node {
            id: id.into(),
            address: format!("127.0.0.1:{port}"),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            services: vec![SERVICE.into()],
            capacity: 10,
            ..Default::default()
        };
        let request = pb::RegisterNodeRequest {
            node: Some(node),
            replace: true,
        };
        admin
            .register_node(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("registering a node");
    }
    cp.change_config(|c| c.load_report_interval_ms = INTERVAL.as_millis() as u32)
        .await;
}

/// One interval's endpoint figures: `calls` per latency (µs).
fn endpoint(node: &str, calls: &[(u64, u64)]) -> pb::EndpointLoad {
    let mut histogram = LatencyHistogram::new();
    for &(count, micros) in calls {
        for _ in 0..count {
            histogram.record(micros);
        }
    }
    let (latency_bucket_index, latency_bucket_count) = histogram.to_sparse();
    pb::EndpointLoad {
        node_id: node.into(),
        service: SERVICE.into(),
        requests: histogram.count(),
        in_flight_mean_milli: 2_000,
        in_flight_max: 4,
        latency_bucket_index,
        latency_bucket_count,
        ..Default::default()
    }
}

fn report(proxy: &str, endpoints: Vec<pb::EndpointLoad>) -> pb::LoadReport {
    pb::LoadReport {
        proxy_id: proxy.into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        interval_ms: INTERVAL.as_millis() as u32,
        endpoints,
        tier_demand: Vec::new(),
    }
}

/// A fake proxy sending `each` every [`INTERVAL`] until dropped; the first answer says
/// the interval the control plane wants.
struct FakeProxy {
    _task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    async fn start(cp: &ControlPlaneProcess, each: pb::LoadReport) -> Self {
        let mut client =
            RoutingDiscoveryClient::with_interceptor(channel(&cp.url()).await, bearer(PROXY_TOKEN));
        let (tx, rx) = mpsc::channel(4);
        tx.send(each.clone()).await.unwrap();
        let mut answers = client
            .report_load(ReceiverStream::new(rx))
            .await
            .expect("opening a load report stream")
            .into_inner();
        let first = answers
            .message()
            .await
            .expect("an answer")
            .expect("an answer");
        assert_eq!(first.report_interval_ms, INTERVAL.as_millis() as u32);
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if tx.send(each.clone()).await.is_err() {
                    return;
                }
                if answers.message().await.ok().flatten().is_none() {
                    return;
                }
            }
        });
        FakeProxy { _task: task }
    }
}

async fn global_metrics(cp: &ControlPlaneProcess) -> pb::GlobalMetrics {
    cp.admin()
        .await
        .get_global_metrics(authorized(
            pb::GetGlobalMetricsRequest::default(),
            VIEWER_TOKEN,
        ))
        .await
        .expect("GetGlobalMetrics")
        .into_inner()
}

/// Polls `cp` until its eu-west row for [`SERVICE`] satisfies `good`.
async fn wait_for_traffic(
    cp: &ControlPlaneProcess,
    good: impl Fn(&pb::ServiceRegionMetrics) -> bool,
) -> pb::ServiceRegionMetrics {
    let start = Instant::now();
    loop {
        let metrics = global_metrics(cp).await;
        let row = metrics
            .traffic
            .iter()
            .find(|r| r.service == SERVICE && r.region == "eu-west")
            .cloned();
        if let Some(row) = row.filter(&good) {
            return row;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} never showed the expected traffic; last answer: {metrics:?}",
            cp.replica
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn within(value: f64, expected: f64, tolerance: f64) -> bool {
    (value - expected).abs() <= expected * tolerance
}

#[tokio::test]
async fn two_proxies_reports_sum_up_and_merge_on_both_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp_a = start_cp(&etcd, "cp-a", dir.path()).await;
    let cp_b = start_cp(&etcd, "cp-b", dir.path()).await;
    seed(&cp_a).await;

    // Per second: proxy A 200 fast calls (1 ms); proxy B 300, of which 20 slow (80 ms).
    // Of all 500 calls 4 % are slow, so the p99 is 80 ms; the mean of the proxies' own
    // p99s (1 ms and 80 ms) would be about 40 ms.
    let _a = FakeProxy::start(
        &cp_a,
        report(
            "proxy-a",
            vec![
                endpoint("n1", &[(100, 1_000)]),
                endpoint("n2", &[(100, 1_000)]),
            ],
        ),
    )
    .await;
    let _b = FakeProxy::start(
        &cp_a,
        report(
            "proxy-b",
            vec![
                endpoint("n1", &[(140, 2_000), (10, 80_000)]),
                endpoint("n2", &[(140, 2_000), (10, 80_000)]),
            ],
        ),
    )
    .await;
    // Let a few reports in, so the rate is over several intervals.
    tokio::time::sleep(INTERVAL * 4).await;

    let row = wait_for_traffic(&cp_a, |r| r.nodes_reporting == 2).await;
    assert!(within(row.calls_per_second, 500.0, 0.10), "calls/s {row:?}");
    assert!(within(row.latency_p99_ms, 80.0, 0.07), "merged p99 {row:?}");
    assert!(within(row.latency_p50_ms, 2.0, 0.07), "merged p50 {row:?}");
    assert_eq!(row.error_rate, 0.0);
    assert_eq!(row.nodes_routable, 2);
    // Each node: 2 in flight from each proxy, capacity 10: 40 %.
    assert!(within(row.in_flight_per_node, 4.0, 0.10), "{row:?}");
    let utilization = row.utilization_percent.expect("capacity is known");
    assert!(within(utilization, 40.0, 0.10), "{row:?}");

    let metrics = global_metrics(&cp_a).await;
    assert_eq!((metrics.federations, metrics.regions), (1, 1));
    assert_eq!(metrics.nodes_active, 2);
    assert_eq!(metrics.window_ms, 60_000);

    // The other replica holds no stream: it sees the reports through the store.
    let row = wait_for_traffic(&cp_b, |r| within(r.calls_per_second, 500.0, 0.10)).await;
    assert!(
        within(row.latency_p99_ms, 80.0, 0.07),
        "merged p99 on cp-b {row:?}"
    );
    assert_eq!(row.nodes_reporting, 2);

    // What an operator reads.
    let url = cp_b.url();
    let (status, stdout, stderr) = run_to_completion(
        "meridianctl",
        &[
            "--control-plane",
            &url,
            "--token",
            VIEWER_TOKEN,
            "-o",
            "json",
            "metrics",
            "--federation",
            "prod",
        ],
    );
    assert!(status.success(), "meridianctl metrics failed: {stderr}");
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let calls = printed["traffic"][0]["calls_per_second"].as_f64().unwrap();
    assert!(within(calls, 500.0, 0.10), "{stdout}");
    assert_eq!(printed["nodes"]["active"], 2, "{stdout}");
}

#[tokio::test]
async fn a_malformed_report_ends_its_stream_and_an_unknown_federation_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = start_cp(&etcd, "cp-a", dir.path()).await;
    seed(&cp).await;

    let mut bad = report("proxy-a", vec![endpoint("n1", &[(10, 1_000)])]);
    bad.endpoints[0].errors = 11;
    let mut client =
        RoutingDiscoveryClient::with_interceptor(channel(&cp.url()).await, bearer(PROXY_TOKEN));
    let status = match client.report_load(tokio_stream::iter([bad])).await {
        Err(status) => status,
        Ok(answers) => answers
            .into_inner()
            .message()
            .await
            .expect_err("a malformed report is refused"),
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("endpoints[0].errors"),
        "{status:?}"
    );
    // Nothing of it was kept.
    let metrics = global_metrics(&cp).await;
    assert!(
        metrics.traffic.iter().all(|r| r.nodes_reporting == 0),
        "{metrics:?}"
    );

    let status = cp
        .admin()
        .await
        .get_global_metrics(authorized(
            pb::GetGlobalMetricsRequest {
                federation: "nowhere".into(),
            },
            VIEWER_TOKEN,
        ))
        .await
        .expect_err("an unknown federation");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
