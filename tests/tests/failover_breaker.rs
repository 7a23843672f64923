//! Passive failure handling in the proxy: a node answering UNAVAILABLE to everything is
//! ejected by its breaker, probed after the penalty and readmitted once it answers again;
//! with every node failing, retries stay within the retry budget (measured from the
//! proxy's own counters).
//!
//! These tests run beside others on loaded machines, so none assumes how many calls fit
//! in a stretch of time: they check what happens within windows the proxy guarantees
//! (the ejection penalty's lower bound) and measure until they have enough calls.

use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, wait_steady, wait_usable};
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

/// A RouteMessage call that every node fails.
async fn route_failing(router: &mut MessageRouterClient<tonic::transport::Channel>) {
    assert!(
        route(router).await.is_err(),
        "every node fails: so must the call"
    );
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

/// The ejection penalty the breaker test sets, as both base and maximum so it never
/// doubles. The breaker jitters it down to half, so an ejected node gets no call for at
/// least `PENALTY / 2` after its breaker opened; after that a call may be the half-open
/// probe. (The default penalty, 1 s, leaves 0.5 s: too few calls on a loaded machine.)
const PENALTY: Duration = Duration::from_secs(8);

#[tokio::test]
async fn a_node_failing_everything_is_ejected_probed_and_readmitted() {
    let cluster = Cluster::start().await;
    let bad = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _good = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    let penalty_ms = u32::try_from(PENALTY.as_millis()).unwrap();
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            outlier: Some(pb::OutlierPolicy {
                base_ejection_ms: penalty_ms,
                max_ejection_ms: penalty_ms,
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
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);

    error_rate(&bad, 1.0).await;
    let started = Instant::now();
    // When the breaker was last seen closed: it opened after that.
    let mut seen_closed = Instant::now();
    loop {
        let asked = Instant::now();
        if breaker_open(&proxy, "eu-1").await {
            break;
        }
        seen_closed = asked;
        // Until eu-1's breaker opens, calls may reach it; each must still succeed, on eu-2.
        let answer = route(&mut router)
            .await
            .expect("RouteMessage retries around the failing node");
        assert_eq!(answer.reply.unwrap().node_id, "eu-2");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the breaker never opened"
        );
    }
    // Ejected: while the penalty surely runs, every call goes to eu-2 without even trying
    // eu-1. A call answered before this instant was routed before it.
    let surely_ejected_until = seen_closed + PENALTY / 2;
    let mut checked = 0;
    while checked < 50 {
        let answer = route(&mut router).await.unwrap();
        if Instant::now() >= surely_ejected_until {
            break;
        }
        assert_eq!(
            answer.decision.unwrap().attempts,
            1,
            "an ejected node was still tried during its penalty"
        );
        checked += 1;
    }
    eprintln!("{checked} calls checked within the ejection penalty");
    assert!(
        checked >= 10,
        "only {checked} calls were answered within {:?} of the breaker opening",
        PENALTY / 2
    );

    // Healthy again: after the penalty a probe goes through and eu-1 is readmitted.
    error_rate(&bad, 0.0).await;
    let healed = Instant::now();
    loop {
        let answer = route(&mut router).await.unwrap();
        if answer.reply.unwrap().node_id == "eu-1" {
            break;
        }
        assert!(
            healed.elapsed() < PENALTY + Duration::from_secs(30),
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
    wait_steady(&proxy, 3).await;
    for node in [&a, &b, &c] {
        error_rate(node, 1.0).await;
    }
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);
    // Spend what the budget saved since the proxy built its table (10 tokens a second
    // from then): once a retry is refused, the budget is empty and the measurement below
    // starts from nothing.
    let draining = Instant::now();
    // The refusal happened after the last check that saw none.
    let mut started = Instant::now();
    loop {
        let asked = Instant::now();
        if metric(&proxy, "meridian_proxy_retries_refused_total").await > 0.0 {
            break;
        }
        started = asked;
        route_failing(&mut router).await;
        assert!(
            draining.elapsed() < Duration::from_secs(60),
            "no retry was ever refused"
        );
    }
    let retries_before = metric(&proxy, "meridian_proxy_retries_total").await;
    let mut calls = 0u32;
    while calls < 150 {
        route_failing(&mut router).await;
        calls += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "too few calls to measure: {calls} in 120 s"
        );
    }
    let retries = metric(&proxy, "meridian_proxy_retries_total").await - retries_before;
    let elapsed = started.elapsed().as_secs_f64();
    // Budget: 20 % of calls plus 10 per second (the defaults, granted in whole seconds),
    // plus less than a token left from draining.
    let allowed = 0.2 * f64::from(calls) + 10.0 * (elapsed + 1.0) + 1.0;
    // Without a budget every call would be retried twice (three attempts).
    let unbudgeted = 2.0 * f64::from(calls);
    eprintln!(
        "{calls} calls in {elapsed:.1} s, {retries} retries ({:.1} %), allowed {allowed:.0}, \
         {unbudgeted} without a budget",
        100.0 * retries / f64::from(calls)
    );
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
