//! Losing a node under steady load: `kill -9` one of three nodes while calls flow through
//! a proxy. RouteMessage (idempotent by contract) and `demo.v1.Echo/Say` (marked
//! idempotent in the policy) see no errors; `Collect` (not marked) is retried only when it
//! never reached the node, so at most the calls in flight on the dead node fail — the test
//! counts them. The dead node leaves rotation (its breaker opens, or the health check
//! marks it unhealthy).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, wait_steady};
use meridian_tests::control::channel;
use tonic::transport::Channel;

const WORKERS: usize = 4;
/// Pause between one worker's calls: 4 workers × 3 kinds ≈ 300 calls/s in all (fewer on a
/// loaded machine: the test counts calls, not seconds).
const PACE: Duration = Duration::from_millis(40);
/// Calls of each kind before the kill (steady load) and after it (the loss and the dead
/// node leaving rotation).
const CALLS_BEFORE: usize = 100;
const CALLS_AFTER: usize = 200;

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    fn count<T, E: std::fmt::Debug>(&self, kind: &str, result: Result<T, E>) {
        match result {
            Ok(_) => self.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("{kind} failed: {e:?}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn get(&self) -> (usize, usize) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    fn finished(&self) -> usize {
        let (ok, failed) = self.get();
        ok + failed
    }
}

/// Waits until each tally has finished `calls` calls more than `since` (its count then).
async fn wait_calls(tallies: &[&Tally], since: &[usize], calls: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while tallies
        .iter()
        .zip(since)
        .any(|(tally, since)| tally.finished() < since + calls)
    {
        assert!(Instant::now() < deadline, "{what}: too few calls in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn route_message(via: Channel, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut router = MessageRouterClient::new(via);
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let message = pb::FederationMessage {
            id: format!("m{seq}"),
            target_service: "demo.v1.Echo".into(),
            ..Default::default()
        };
        tally.count(
            "RouteMessage",
            router
                .route_message(pb::RouteMessageRequest {
                    message: Some(message),
                })
                .await,
        );
        tokio::time::sleep(PACE).await;
    }
}

async fn say(via: Channel, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut echo = EchoClient::new(via);
    while !stop.load(Ordering::Relaxed) {
        tally.count(
            "idempotent Say",
            echo.say(demo::SayRequest::default()).await,
        );
        tokio::time::sleep(PACE).await;
    }
}

async fn collect(via: Channel, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut echo = EchoClient::new(via);
    while !stop.load(Ordering::Relaxed) {
        let parts = (0..2).map(|i| demo::SayRequest {
            text: format!("part {i}"),
            ..Default::default()
        });
        let result = echo.collect(tokio_stream::iter(parts)).await;
        if result.is_ok() {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(PACE).await;
    }
}

#[tokio::test]
async fn killing_a_node_under_load_loses_no_route_message_or_idempotent_call() {
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
    let policy = pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        retry: Some(pb::RetryPolicy {
            idempotent_methods: vec!["/demo.v1.Echo/Say".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.set_policy(policy).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 3).await;
    proxy
        .wait_table(Duration::from_secs(5), "the retry policy", |t| {
            t["services"][0]["has_policy"] == true
        })
        .await;
    let via = channel(&proxy.url()).await;

    let (routed, idempotent, plain) = (
        Arc::new(Tally::default()),
        Arc::new(Tally::default()),
        Arc::new(Tally::default()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        tasks.push(tokio::spawn(route_message(
            via.clone(),
            Arc::clone(&routed),
            Arc::clone(&stop),
        )));
        tasks.push(tokio::spawn(say(
            via.clone(),
            Arc::clone(&idempotent),
            Arc::clone(&stop),
        )));
        tasks.push(tokio::spawn(collect(
            via.clone(),
            Arc::clone(&plain),
            Arc::clone(&stop),
        )));
    }
    let tallies = [&*routed, &*idempotent, &*plain];
    wait_calls(&tallies, &[0; 3], CALLS_BEFORE, "before the kill").await;
    victim.process.kill();
    let at_kill = tallies.map(Tally::finished);
    wait_calls(&tallies, &at_kill, CALLS_AFTER, "after the kill").await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }

    let ((r_ok, r_failed), (i_ok, i_failed), (p_ok, p_failed)) =
        (routed.get(), idempotent.get(), plain.get());
    eprintln!(
        "RouteMessage {r_ok} ok / {r_failed} failed; idempotent Say {i_ok} ok / {i_failed} failed; \
         Collect {p_ok} ok / {p_failed} failed (in flight on the dead node)"
    );
    assert_eq!(r_failed, 0, "RouteMessage calls failed when a node died");
    assert_eq!(i_failed, 0, "idempotent calls failed when a node died");
    assert!(
        p_failed <= WORKERS,
        "{p_failed} non-idempotent calls failed; only those in flight on the dead node (at most {WORKERS}) may"
    );

    let table = proxy.debug_table().await;
    let dead = table["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "eu-2")
        .cloned()
        .unwrap();
    assert!(
        dead["breaker_open"] == true || dead["usable"] == false,
        "the dead node is still in rotation: {dead}"
    );
}
