//! Passive failure handling in the proxy: a node answering UNAVAILABLE to everything is
//! ejected by its breaker, probed after the penalty and readmitted once it answers again;
//! with every node failing, retries stay within the retry budget (measured from the
//! proxy's own counters).

use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::http;
use meridian_tests::proxy::ProxyProcess;

async fn error_rate(node: &DemoNodeProcess, rate: f64) {
    DemoControlClient::new(node.channel().await)
        .set_error_rate(demo::SetErrorRateRequest { rate })
        .await
        .unwrap();
}

async fn route(
    router: &mut MessageRouterClient<tonic::transport::Channel>,
) -> Result<pb::RouteMessageResponse, tonic::Status> {
    let message = pb::FederationMessage {
        id: "m".into(),
        target_service: "demo.v1.Echo".into(),
        ..Default::default()
    };
    router
        .route_message(pb::RouteMessageRequest {
            message: Some(message),
        })
        .await
        .map(|r| r.into_inner())
}

async fn breaker_open(proxy: &ProxyProcess, node: &str) -> bool {
    let table = proxy.debug_table().await;
    table["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["node"] == node && e["breaker_open"] == true)
}

async fn metric(proxy: &ProxyProcess, name: &str) -> f64 {
    let (_, body) = http::get(proxy.admin, "/metrics").await.unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_node_failing_everything_is_ejected_probed_and_readmitted() {
    let cluster = Cluster::start().await;
    let bad = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _good = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 2).await;
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);

    error_rate(&bad, 1.0).await;
    let started = Instant::now();
    while !breaker_open(&proxy, "eu-1").await {
        let answer = route(&mut router)
            .await
            .expect("RouteMessage retries around the failing node");
        assert_eq!(answer.reply.unwrap().node_id, "eu-2");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the breaker never opened"
        );
    }
    // Ejected: every call goes to eu-2 without even trying eu-1.
    for _ in 0..50 {
        let answer = route(&mut router).await.unwrap();
        assert_eq!(
            answer.decision.unwrap().attempts,
            1,
            "an ejected node was still tried"
        );
    }

    // Healthy again: after the penalty a probe goes through and eu-1 is readmitted.
    error_rate(&bad, 0.0).await;
    let healed = Instant::now();
    loop {
        let answer = route(&mut router).await.unwrap();
        if answer.reply.unwrap().node_id == "eu-1" {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(40),
            "eu-1 was never readmitted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !breaker_open(&proxy, "eu-1").await,
        "a successful probe must close the breaker"
    );
    eprintln!("eu-1 readmitted {:?} after it recovered", healed.elapsed());
}

#[tokio::test]
async fn with_every_node_failing_retries_stay_within_the_budget() {
    let cluster = Cluster::start().await;
    let a = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let b = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    let c = cluster.node("eu-3", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 3).await;
    for node in [&a, &b, &c] {
        error_rate(node, 1.0).await;
    }
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);
    let started = Instant::now();
    let mut calls = 0u32;
    while started.elapsed() < Duration::from_secs(3) {
        assert!(
            route(&mut router).await.is_err(),
            "every node fails: so must the call"
        );
        calls += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let retries = metric(&proxy, "meridian_proxy_retries_total").await;
    // Budget: 20 % of calls plus 10 per second (the defaults), plus the initial floor.
    let allowed = 0.2 * f64::from(calls) + 10.0 * (elapsed + 1.0) + 10.0;
    eprintln!(
        "{calls} calls, {retries} retries ({:.1} %), allowed {allowed:.0}",
        100.0 * retries / f64::from(calls)
    );
    assert!(calls > 100, "too few calls to measure: {calls}");
    assert!(
        retries <= allowed,
        "{retries} retries for {calls} calls exceed the budget ({allowed:.0})"
    );
}

async fn set_idempotent(cluster: &Cluster, methods: &[&str]) {
    let policy = pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        retry: Some(pb::RetryPolicy {
            idempotent_methods: methods.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.set_policy(policy).await;
}

/// Errors among 40 Say calls.
async fn say_errors(proxy: &ProxyProcess) -> usize {
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    let mut errors = 0;
    for _ in 0..40 {
        if echo.say(demo::SayRequest::default()).await.is_err() {
            errors += 1;
        }
    }
    errors
}

#[tokio::test]
async fn only_methods_marked_idempotent_are_retried_after_reaching_a_node() {
    let cluster = Cluster::start().await;
    let bad = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _good = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 2).await;
    error_rate(&bad, 1.0).await;

    // Not marked: an UNAVAILABLE answer is the call's answer (until the breaker ejects
    // the node, some calls fail).
    let unmarked = say_errors(&proxy).await;
    assert!(
        unmarked > 0,
        "without the idempotent marking, the failing node's answers must pass through"
    );

    // Marked idempotent: replayed on the other node, no errors, even before ejection.
    set_idempotent(&cluster, &["demo.v1.Echo/*"]).await;
    proxy
        .wait_table(Duration::from_secs(5), "the retry policy", |t| {
            t["services"][0]["has_policy"] == true
        })
        .await;
    // Readmit eu-1 first (its breaker may be open from the unmarked calls).
    error_rate(&bad, 0.0).await;
    let started = Instant::now();
    while breaker_open(&proxy, "eu-1").await {
        say_errors(&proxy).await;
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "eu-1 was never readmitted"
        );
    }
    error_rate(&bad, 1.0).await;
    assert_eq!(
        say_errors(&proxy).await,
        0,
        "idempotent calls failed although another node was healthy"
    );
    eprintln!("unmarked: {unmarked} of 40 failed; marked idempotent: 0 of 40");
}
