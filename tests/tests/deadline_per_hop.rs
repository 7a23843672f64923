//! `grpc-timeout` is decremented at the proxy: the node gets the caller's budget minus
//! the time the call spent in the proxy, even when that time went into a failed first
//! attempt and a retry. The demo node reports the `grpc-timeout` it received in its
//! `x-node-grpc-timeout` response header.

use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, served_by, wait_steady};
use meridian_tests::control::channel;
use meridian_tests::demo_node::behaviour::ADMITTED_HEADER;
use meridian_tests::demo_node::echo::RECEIVED_TIMEOUT_HEADER;
use meridian_tests::demo_node::process::DemoNodeProcess;

/// The caller's budget.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the failing node takes to answer UNAVAILABLE.
const FAILING_AFTER: Duration = Duration::from_millis(600);

/// A `grpc-timeout` value: up to 8 digits and a unit.
fn parse_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().expect("digits");
    match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        other => panic!("{value:?}: unknown unit {other:?}"),
    }
}

/// The application calls `node` has taken so far (its `x-node-admitted` header, on the
/// answer to a DemoControl call that changes nothing).
async fn admitted(node: &DemoNodeProcess) -> u64 {
    let answer = DemoControlClient::new(node.channel().await)
        .set_error_rate(demo::SetErrorRateRequest { rate: 1.0 })
        .await
        .unwrap();
    answer
        .metadata()
        .get(ADMITTED_HEADER)
        .expect("the node counts the calls it took")
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_node_gets_the_callers_budget_less_the_time_spent_in_the_proxy() {
    let cluster = Cluster::start().await;
    let latency = FAILING_AFTER.as_millis().to_string();
    let failing = cluster
        .node(
            "eu-1",
            "eu-west",
            "eu-west-a",
            0,
            &["--latency-ms", &latency, "--error-rate", "1"],
        )
        .await;
    let _good = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    // Round robin starts every other call on eu-1; Say may be retried on eu-2 after eu-1
    // answers UNAVAILABLE; eu-1's breaker never opens during the test.
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: pb::Algorithm::RoundRobin.into(),
            retry: Some(pb::RetryPolicy {
                idempotent_methods: vec!["/demo.v1.Echo/Say".into()],
                ..Default::default()
            }),
            outlier: Some(pb::OutlierPolicy {
                consecutive_failures: 1_000,
                failure_rate_percent: 100,
                min_requests: 1_000_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    proxy
        .wait_table(Duration::from_secs(20), "the retry policy", |t| {
            t["services"][0]["has_policy"] == true
        })
        .await;
    wait_steady(&proxy, 2).await;
    let mut echo = EchoClient::new(channel(&proxy.url()).await);

    let mut retried = None;
    for _ in 0..10 {
        let mut request = tonic::Request::new(demo::SayRequest {
            text: "deadline".into(),
            ..Default::default()
        });
        request.set_timeout(CLIENT_TIMEOUT);
        let before = admitted(&failing).await;
        let sent = Instant::now();
        let reply = echo.say(request).await.expect("eu-2 answers every call");
        let elapsed = sent.elapsed();
        assert_eq!(served_by(&reply), "eu-2");
        let received = reply
            .metadata()
            .get(RECEIVED_TIMEOUT_HEADER)
            .expect("the node reports the grpc-timeout it received")
            .to_str()
            .unwrap()
            .to_owned();
        let received = parse_timeout(&received);
        assert!(
            received < CLIENT_TIMEOUT,
            "the proxy passed on {received:?} of the caller's {CLIENT_TIMEOUT:?}"
        );
        if admitted(&failing).await > before {
            // eu-1 had the first attempt: the proxy held the call at least FAILING_AFTER
            // before it reached eu-2.
            retried = Some((received, elapsed));
            break;
        }
    }
    let (received, elapsed) = retried.expect("no call had its first attempt on eu-1");
    assert!(
        CLIENT_TIMEOUT - received >= FAILING_AFTER,
        "the retry reached eu-2 with {received:?} of the caller's {CLIENT_TIMEOUT:?}, \
         although the proxy spent at least {FAILING_AFTER:?} on eu-1 first"
    );
    assert!(
        received + Duration::from_millis(5) >= CLIENT_TIMEOUT - elapsed,
        "the proxy passed on {received:?}, less than the {:?} left when the call ended",
        CLIENT_TIMEOUT - elapsed
    );
}
