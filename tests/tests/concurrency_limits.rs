//! Concurrency limits across real processes: a proxy in front of demo nodes whose
//! `--workers` give them a real capacity (calls beyond it wait inside the node, so latency
//! grows with load). Calls beyond the limit and its queue are refused with
//! RESOURCE_EXHAUSTED and queued calls are served in arrival order; the adaptive limit
//! settles near the node's capacity; under overload, priority-0 RouteMessages are shed
//! before priority-9 ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::control::{OPERATOR_TOKEN, channel};
use meridian_tests::process::run_to_completion;
use meridian_tests::proxy::ProxyProcess;
use tokio::time::Instant;
use tonic::Code;

fn say(text: &str) -> demo::SayRequest {
    demo::SayRequest {
        text: text.into(),
        ..Default::default()
    }
}

/// Waits until the proxy's table shows Echo's concurrency limit with `kind`; returns it.
async fn wait_limit(proxy: &ProxyProcess, kind: &str) -> serde_json::Value {
    let table = proxy
        .wait_table(Duration::from_secs(20), "Echo's concurrency limit", |t| {
            echo_limit(t)["kind"] == kind
        })
        .await;
    echo_limit(&table)
}

fn echo_limit(table: &serde_json::Value) -> serde_json::Value {
    table["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == ECHO)
        .map(|s| s["concurrency"].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_limit_and_queue_are_refused_and_queued_calls_are_served_in_order() {
    let cluster = Cluster::start().await;
    let _node = cluster
        .node("eu-1", "eu-west", "eu-west-a", 0, &["--latency-ms", "300"])
        .await;
    let url = cluster.cp.url();
    let (status, _, stderr) = run_to_completion(
        "meridianctl",
        &[
            "--control-plane",
            &url,
            "--token",
            OPERATOR_TOKEN,
            "services",
            "set",
            ECHO,
            "--federation",
            "prod",
            "--concurrency",
            "static",
            "--concurrency-limit",
            "1",
            "--queue-size",
            "3",
            "--queue-max-wait-ms",
            "5000",
        ],
    );
    assert!(
        status.success(),
        "meridianctl services set failed: {stderr}"
    );
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    let limit = wait_limit(&proxy, "static").await;
    assert_eq!(limit["limit"], 1, "{limit}");
    assert_eq!(limit["max_queue"], 3, "{limit}");

    let client = EchoClient::new(channel(&proxy.url()).await);
    let started = Instant::now();
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut calls = Vec::new();
    // One call takes the slot, three queue behind it, 50 ms apart so their order is known.
    for name in ["holder", "q1", "q2", "q3"] {
        let (mut client, finished) = (client.clone(), Arc::clone(&finished));
        calls.push(tokio::spawn(async move {
            let reply = client.say(say(name)).await;
            finished.lock().unwrap().push((name, started.elapsed()));
            reply.map(|_| ())
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The slot and the queue are full: the next calls are refused without waiting.
    for name in ["over-1", "over-2"] {
        let asked = Instant::now();
        let status = client.clone().say(say(name)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("queue_full"),
            "{}",
            status.message()
        );
        assert!(
            asked.elapsed() < Duration::from_millis(250),
            "refused at once, not after waiting: {:?}",
            asked.elapsed()
        );
    }
    for call in calls {
        call.await.unwrap().expect("admitted calls are served");
    }
    let finished = finished.lock().unwrap().clone();
    println!("completion order: {finished:?}");
    let order: Vec<&str> = finished.iter().map(|(name, _)| *name).collect();
    assert_eq!(order, ["holder", "q1", "q2", "q3"], "{finished:?}");
    // One at a time: each queued call started when the one before it ended.
    for pair in finished.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= Duration::from_millis(250),
            "{} ended {gap:?} after {}: served concurrently",
            pair[1].0,
            pair[0].0
        );
    }
    let refused = proxy
        .metric_with(
            "meridian_proxy_refused_total",
            &["reason=\"queue_full\"", "service=\"demo.v1.Echo\""],
        )
        .await;
    assert_eq!(refused, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_settles_near_the_backends_capacity() {
    const WORKERS: u32 = 10;
    let cluster = Cluster::start().await;
    let workers = WORKERS.to_string();
    let _node = cluster
        .node(
            "eu-1",
            "eu-west",
            "eu-west-a",
            0,
            &["--latency-ms", "50", "--workers", &workers],
        )
        .await;
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            concurrency: Some(pb::ConcurrencyPolicy {
                kind: pb::ConcurrencyLimitKind::Adaptive.into(),
                limit: 60,
                min_limit: 2,
                max_limit: 200,
                max_queue: 200,
                max_queue_wait_ms: 10_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    wait_limit(&proxy, "adaptive").await;

    // 40 callers, four times the node's capacity, each calling again as soon as answered.
    let client = EchoClient::new(channel(&proxy.url()).await);
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs(12);
    let callers: Vec<_> = (0..40)
        .map(|_| {
            let (mut client, errors) = (client.clone(), Arc::clone(&errors));
            tokio::spawn(async move {
                while Instant::now() < stop {
                    if client.say(say("load")).await.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let it converge, then read the limit every half second.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut limits = Vec::new();
    let mut last = serde_json::Value::Null;
    for _ in 0..10 {
        last = echo_limit(&proxy.debug_table().await);
        limits.push(last["limit"].as_u64().expect("a limit"));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let mean = limits.iter().sum::<u64>() as f64 / limits.len() as f64;
    println!(
        "node capacity {WORKERS} (50 ms x {WORKERS} workers), starting limit 60: the adaptive limit settled at {mean:.1} (samples {limits:?}; min RTT {} ms; {} errors)",
        last["min_rtt_ms"],
        errors.load(Ordering::Relaxed)
    );
    let capacity = f64::from(WORKERS);
    assert!(
        (capacity * 0.8..=capacity * 2.5).contains(&mean),
        "the limit settled at {mean:.1}, far from the node's capacity {capacity}: {limits:?}"
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "the queue absorbed the rest"
    );
    let gauge = proxy
        .metric_with(
            "meridian_proxy_concurrency_limit",
            &["service=\"demo.v1.Echo\""],
        )
        .await;
    assert!(gauge > 0.0, "the limit gauge is exported");
}

/// What the callers of one priority got.
#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_low_priority_messages_are_shed_before_high_ones() {
    let cluster = Cluster::start().await;
    let _node = cluster
        .node(
            "eu-1",
            "eu-west",
            "eu-west-a",
            0,
            &["--latency-ms", "50", "--workers", "4"],
        )
        .await;
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            concurrency: Some(pb::ConcurrencyPolicy {
                kind: pb::ConcurrencyLimitKind::Static.into(),
                limit: 4,
                max_queue: 8,
                max_queue_wait_ms: 1_000,
                target_queue_wait_ms: 100,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    wait_limit(&proxy, "static").await;

    // 16 LOW (0) and 16 CRITICAL (9) callers against 4 slots of 50 ms: 80 calls/s.
    let router = MessageRouterClient::new(channel(&proxy.url()).await);
    let (low, high) = (Arc::new(Outcomes::default()), Arc::new(Outcomes::default()));
    let stop = Instant::now() + Duration::from_secs(6);
    let mut callers = Vec::new();
    for (priority, outcomes) in [(pb::Priority::Low, &low), (pb::Priority::Critical, &high)] {
        for i in 0..16 {
            let (mut router, outcomes) = (router.clone(), Arc::clone(outcomes));
            callers.push(tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < stop {
                    n += 1;
                    let message = pb::FederationMessage {
                        id: format!("{}-{i}-{n}", priority.as_str_name()),
                        target_service: ECHO.into(),
                        priority: priority.into(),
                        ..Default::default()
                    };
                    let request = pb::RouteMessageRequest {
                        message: Some(message),
                    };
                    match router.route_message(request).await {
                        Ok(_) => outcomes.ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) if s.code() == Code::ResourceExhausted => {
                            // Back off a little, as a client should.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            outcomes.refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => outcomes.other.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
    }
    for caller in callers {
        caller.await.unwrap();
    }
    let counts = |o: &Outcomes| {
        (
            o.ok.load(Ordering::Relaxed),
            o.refused.load(Ordering::Relaxed),
            o.other.load(Ordering::Relaxed),
        )
    };
    let ((low_ok, low_refused, low_other), (high_ok, high_refused, high_other)) =
        (counts(&low), counts(&high));
    let shed_low = proxy
        .metric_with(
            "meridian_proxy_refused_total",
            &["reason=\"shed_priority\"", "priority=\"0\""],
        )
        .await;
    let shed_high = proxy
        .metric_with(
            "meridian_proxy_refused_total",
            &["reason=\"shed_priority\"", "priority=\"9\""],
        )
        .await;
    println!(
        "priority 0: {low_ok} served, {low_refused} refused ({shed_low} shed for priority); priority 9: {high_ok} served, {high_refused} refused ({shed_high} shed for priority)"
    );
    assert_eq!(
        (low_other, high_other),
        (0, 0),
        "only RESOURCE_EXHAUSTED refusals"
    );
    assert!(
        low_refused > 0 && shed_low > 0.0,
        "overloaded: low priority must be shed"
    );
    assert!(
        high_ok > low_ok * 3,
        "priority 9 gets most of the capacity: {high_ok} vs {low_ok}"
    );
    assert!(
        low_refused > high_refused * 3,
        "priority 0 is refused first: {low_refused} vs {high_refused}"
    );
    assert_eq!(shed_high, 0.0, "no call outranks priority 9");
}
