//! Proxies report the load they see to the control plane (`RoutingDiscovery/ReportLoad`).
//!
//! - With a real control plane: after calls through a proxy, the control plane has
//!   received load reports (its `meridian_control_load_reports_total`), at the interval it
//!   asked for.
//! - With a scripted `RoutingDiscovery` server in the test (it serves the routing table
//!   and records every report): the reports of a real proxy carry, per node and service,
//!   exactly the calls made, their errors, a latency histogram holding every call, and
//!   the utilisation the demo nodes put in their ORCA trailers, including one changed at
//!   run time with DemoControl/SetUtilization. The control plane's own aggregation of
//!   reports is tested with it; this file checks what the proxy sends.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_proto::v1::routing_discovery_server::{RoutingDiscovery, RoutingDiscoveryServer};
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::{ProxyOptions, ProxyProcess};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

const HANDLER: &str = "meridian.v1.MessageHandler";

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after
/// `deadline`.
async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "{what}: not within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_real_control_plane_receives_the_proxys_load_reports_at_its_interval() {
    let cluster = Cluster::start().await;
    cluster
        .cp
        .change_config(|c| c.load_report_interval_ms = 200)
        .await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;

    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    for i in 0..20 {
        echo.say(demo::SayRequest {
            text: format!("call {i}"),
            ..Default::default()
        })
        .await
        .expect("a call through the proxy");
    }
    // The first report goes out when the stream opens; the answer sets 200 ms, so a
    // dozen more follow within a few seconds (at the 5 s default there would be one).
    let before = cluster
        .cp
        .metric("meridian_control_load_reports_total")
        .await;
    // At the 5 s default two reports at most would come in the deadline.
    eventually(Duration::from_secs(10), "ten more load reports", || async {
        let now = cluster
            .cp
            .metric("meridian_control_load_reports_total")
            .await;
        (now >= before + 10.0).then_some(())
    })
    .await;
}

/// A routing-discovery server that serves one table and records the load reports.
#[derive(Clone)]
struct ScriptedDiscovery {
    table: pb::RoutingTable,
    reports: Arc<Mutex<Vec<pb::LoadReport>>>,
    interval_ms: u32,
}

type Outbound<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl RoutingDiscovery for ScriptedDiscovery {
    type StreamRoutesStream = Outbound<pb::StreamRoutesResponse>;

    async fn stream_routes(
        &self,
        request: Request<Streaming<pb::StreamRoutesRequest>>,
    ) -> Result<Response<Self::StreamRoutesStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let snapshot = pb::StreamRoutesResponse {
            nonce: "n1".into(),
            update: Some(pb::stream_routes_response::Update::Snapshot(
                self.table.clone(),
            )),
        };
        tokio::spawn(async move {
            // The Hello, then acks until the proxy goes; the stream stays open meanwhile.
            let _ = inbound.message().await;
            let _ = tx.send(Ok(snapshot)).await;
            while let Ok(Some(_)) = inbound.message().await {}
            drop(tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ReportLoadStream = Outbound<pb::LoadReportResponse>;

    async fn report_load(
        &self,
        request: Request<Streaming<pb::LoadReport>>,
    ) -> Result<Response<Self::ReportLoadStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (reports, interval_ms) = (Arc::clone(&self.reports), self.interval_ms);
        tokio::spawn(async move {
            while let Ok(Some(report)) = inbound.message().await {
                reports.lock().unwrap().push(report);
                let answer = pb::LoadReportResponse {
                    report_interval_ms: interval_ms,
                    ..Default::default()
                };
                if tx.send(Ok(answer)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn table(nodes: &[(&str, &DemoNodeProcess)]) -> pb::RoutingTable {
    pb::RoutingTable {
        version: 1,
        federation: "prod".into(),
        regions: vec![pb::Region {
            name: "eu-west".into(),
            federation: "prod".into(),
            zones: vec!["eu-west-a".into()],
            location: Some(pb::GeoPoint {
                latitude: 53.35,
                longitude: -6.26,
            }),
            ..Default::default()
        }],
        services: vec![pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: pb::Algorithm::RoundRobin.into(),
            ..Default::default()
        }],
        nodes: nodes
            .iter()
            .map(|(id, process)| pb::Node {
                id: (*id).into(),
                address: process.addr.to_string(),
                federation: "prod".into(),
                region: "eu-west".into(),
                zone: "eu-west-a".into(),
                services: vec![ECHO.into(), HANDLER.into()],
                status: pb::NodeStatus::Healthy.into(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// One (node, service)'s entries summed over reports.
#[derive(Debug, Default, PartialEq)]
struct Totals {
    requests: u64,
    errors: u64,
    /// Calls in the latency histograms.
    histogram: u64,
    /// The latest ORCA cpu utilisation.
    cpu: Option<f64>,
}

fn totals(reports: &[pb::LoadReport]) -> BTreeMap<(String, String), Totals> {
    let mut totals: BTreeMap<_, Totals> = BTreeMap::new();
    for entry in reports.iter().flat_map(|r| &r.endpoints) {
        assert_eq!(
            entry.latency_bucket_index.len(),
            entry.latency_bucket_count.len(),
            "sparse histogram lists of one length"
        );
        let total = totals
            .entry((entry.node_id.clone(), entry.service.clone()))
            .or_default();
        total.requests += entry.requests;
        total.errors += entry.errors;
        total.histogram += entry.latency_bucket_count.iter().sum::<u64>();
        if let Some(orca) = &entry.orca {
            total.cpu = Some(orca.cpu_utilization);
        }
    }
    totals
}

fn expected(requests: u64, errors: u64, cpu: f64) -> Totals {
    Totals {
        requests,
        errors,
        histogram: requests,
        cpu: Some(cpu),
    }
}

#[tokio::test]
async fn reports_carry_each_nodes_calls_errors_latency_and_orca_utilisation() {
    let dir = tempfile::tempdir().unwrap();
    let log = |id: &str| dir.path().join(format!("{id}.log"));
    // eu-1 starts reporting 0.42 and is changed to 0.73 at run time; eu-2 derives its
    // utilisation from its calls in flight (none wait here: 0).
    let eu1 = DemoNodeProcess::start("eu-1", &["--utilization", "0.42"], &log("eu-1")).await;
    let eu2 = DemoNodeProcess::start("eu-2", &[], &log("eu-2")).await;
    DemoControlClient::new(eu1.channel().await)
        .set_utilization(demo::SetUtilizationRequest {
            utilization: Some(0.73),
        })
        .await
        .expect("SetUtilization");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let discovery_url = format!("http://{}", listener.local_addr().unwrap());
    let discovery = ScriptedDiscovery {
        table: table(&[("eu-1", &eu1), ("eu-2", &eu2)]),
        reports: Arc::default(),
        interval_ms: 200,
    };
    let reports = Arc::clone(&discovery.reports);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RoutingDiscoveryServer::new(discovery))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let proxy = ProxyProcess::start(ProxyOptions {
        id: "proxy-eu",
        federation: "prod",
        region: "eu-west",
        zone: "eu-west-a",
        control_planes: &[discovery_url],
        dir: dir.path(),
        ports: None,
    })
    .await;
    proxy.wait_ready(Duration::from_secs(20)).await;
    wait_usable(&proxy, 2).await;

    // Round robin: 30 Say calls and 10 Fail(NOT_FOUND) calls, 20 calls per node, 5
    // errors each; then 7 RouteMessage calls to eu-2's MessageHandler.
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    for i in 0..40 {
        // Calls alternate between the nodes; failing two in a row fails one on each.
        if i % 8 >= 6 {
            let status = echo
                .fail(demo::FailRequest {
                    code: tonic::Code::NotFound as u32,
                    message: "on purpose".into(),
                    ..Default::default()
                })
                .await
                .expect_err("Fail fails");
            assert_eq!(status.code(), tonic::Code::NotFound);
        } else {
            echo.say(demo::SayRequest {
                text: format!("call {i}"),
                ..Default::default()
            })
            .await
            .expect("Say through the proxy");
        }
    }
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);
    for i in 0..7 {
        router
            .route_message(pb::RouteMessageRequest {
                message: Some(pb::FederationMessage {
                    id: format!("m{i}"),
                    target_service: HANDLER.into(),
                    target_node: "eu-2".into(),
                    ..Default::default()
                }),
            })
            .await
            .expect("RouteMessage to eu-2");
    }

    let key = |node: &str, service: &str| (node.to_owned(), service.to_owned());
    let totals = eventually(Duration::from_secs(10), "reports of all 47 calls", || {
        let reports = reports.lock().unwrap().clone();
        async move {
            let totals = totals(&reports);
            let calls: u64 = totals.values().map(|t| t.requests).sum();
            (calls == 47).then_some(totals)
        }
    })
    .await;
    assert_eq!(totals.len(), 3, "{totals:?}");
    assert_eq!(
        totals[&key("eu-1", ECHO)],
        expected(20, 5, 0.73),
        "{totals:?}"
    );
    assert_eq!(
        totals[&key("eu-2", ECHO)],
        expected(20, 5, 0.0),
        "{totals:?}"
    );
    assert_eq!(
        totals[&key("eu-2", HANDLER)],
        expected(7, 0, 0.0),
        "RouteMessage calls are reported under MessageHandler, with the ORCA report from the reply's metadata: {totals:?}"
    );

    // Reports follow the 200 ms the server asked for: three within 2 s (at the 5 s
    // default at most one more would come).
    let reports_handle = reports;
    eventually(Duration::from_secs(2), "three reports", || async {
        (reports_handle.lock().unwrap().len() >= 3).then_some(())
    })
    .await;
    let reports = reports_handle.lock().unwrap().clone();
    let first = &reports[0];
    assert_eq!(
        (
            first.proxy_id.as_str(),
            first.federation.as_str(),
            first.region.as_str()
        ),
        ("proxy-eu", "prod", "eu-west")
    );
    let with_calls = reports
        .iter()
        .flat_map(|r| &r.endpoints)
        .find(|e| e.requests > 0)
        .unwrap();
    assert!(
        with_calls.latency_p50_us > 0 && with_calls.latency_p99_us >= with_calls.latency_p50_us
    );
    assert!(with_calls.ewma_us > 0);

    // Once the calls are over and reported, reports go on with nothing in them: nothing
    // is left in flight, and delivered figures are not sent again.
    let reported = reports.len();
    eventually(Duration::from_secs(5), "an empty report", || {
        let reports = reports_after(&reports_handle, reported);
        async move { reports.iter().any(|r| r.endpoints.is_empty()).then_some(()) }
    })
    .await;
}

fn reports_after(reports: &Arc<Mutex<Vec<pb::LoadReport>>>, skip: usize) -> Vec<pb::LoadReport> {
    reports.lock().unwrap().iter().skip(skip).cloned().collect()
}
