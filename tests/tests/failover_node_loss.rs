//! Losing a node under steady load: `kill -9` one of three nodes while calls flow through
//! a proxy. RouteMessage (idempotent by contract, retried on UNAVAILABLE) sees no errors;
//! plain unary calls are retried only when they never reached the node, so at most the
//! calls in flight on the dead node fail — the test counts them. The dead node leaves
//! rotation (its breaker opens, or the health check marks it unhealthy).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::channel;

const WORKERS: usize = 4;
const RUN: Duration = Duration::from_secs(8);
/// Pause between one worker's calls: 4 workers × 2 kinds ≈ 200 calls/s in all.
const PACE: Duration = Duration::from_millis(40);

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

#[tokio::test]
async fn killing_a_node_under_load_loses_no_route_message_and_only_in_flight_calls() {
    let cluster = Cluster::start().await;
    let _a = cluster
        .node("eu-1", "eu-west", "eu-west-a", 0, &["--latency-ms", "5"])
        .await;
    let mut victim = cluster
        .node("eu-2", "eu-west", "eu-west-a", 0, &["--latency-ms", "5"])
        .await;
    let _c = cluster
        .node("eu-3", "eu-west", "eu-west-b", 0, &["--latency-ms", "5"])
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 3).await;
    let via = channel(&proxy.url()).await;

    let routed = Arc::new(Tally::default());
    let plain = Arc::new(Tally::default());
    let until = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (router_channel, routed) = (via.clone(), Arc::clone(&routed));
        tasks.push(tokio::spawn(async move {
            let mut router = MessageRouterClient::new(router_channel);
            let mut seq = 0;
            while Instant::now() < until {
                seq += 1;
                let message = pb::FederationMessage {
                    id: format!("w{w}-{seq}"),
                    target_service: "demo.v1.Echo".into(),
                    ..Default::default()
                };
                match router
                    .route_message(pb::RouteMessageRequest {
                        message: Some(message),
                    })
                    .await
                {
                    Ok(_) => routed.ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        eprintln!("RouteMessage failed: {status:?}");
                        routed.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(PACE).await;
            }
        }));
        let (echo_channel, plain) = (via.clone(), Arc::clone(&plain));
        tasks.push(tokio::spawn(async move {
            let mut echo = EchoClient::new(echo_channel);
            while Instant::now() < until {
                let request = demo::SayRequest {
                    text: "hi".into(),
                    ..Default::default()
                };
                match echo.say(request).await {
                    Ok(_) => plain.ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => plain.failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(PACE).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    victim.process.kill();
    for task in tasks {
        task.await.unwrap();
    }

    let (r_ok, r_failed) = (
        routed.ok.load(Ordering::Relaxed),
        routed.failed.load(Ordering::Relaxed),
    );
    let (p_ok, p_failed) = (
        plain.ok.load(Ordering::Relaxed),
        plain.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "RouteMessage: {r_ok} ok, {r_failed} failed; unary: {p_ok} ok, {p_failed} failed (in flight on the dead node)"
    );
    assert!(
        r_ok > 300 && p_ok > 300,
        "too little load to mean anything: {r_ok}, {p_ok}"
    );
    assert_eq!(r_failed, 0, "RouteMessage calls failed when a node died");
    assert!(
        p_failed <= WORKERS,
        "{p_failed} unary calls failed; only those in flight on the dead node (at most {WORKERS}) may"
    );

    let table = proxy.debug_table().await;
    let dead = table["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "eu-2")
        .cloned()
        .unwrap();
    // Out of rotation either way: its breaker opened, or the leader's health check
    // already marked it unhealthy (then it is no longer a usable endpoint at all).
    assert!(
        dead["breaker_open"] == true || dead["usable"] == false,
        "the dead node is still in rotation: {dead}"
    );
}
