//! Losing a node under steady load: `kill -9` one of three nodes while calls flow through
//! a proxy. RouteMessage (idempotent by contract) and `demo.v1.Echo/Say` (marked
//! idempotent in the policy) see no errors; `Collect` (not marked) is retried only when it
//! never reached the node, so at most the calls in flight on the dead node fail — the test
//! counts them. The dead node leaves rotation (its breaker opens, or the health check
//! marks it unhealthy).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::channel;
use tonic::transport::Channel;

const WORKERS: usize = 4;
const RUN: Duration = Duration::from_secs(8);
/// Pause between one worker's calls: 4 workers × 3 kinds ≈ 300 calls/s in all.
const PACE: Duration = Duration::from_millis(40);

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
}

async fn route_message(via: Channel, tally: Arc<Tally>, until: Instant) {
    let mut router = MessageRouterClient::new(via);
    let mut seq = 0;
    while Instant::now() < until {
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

async fn say(via: Channel, tally: Arc<Tally>, until: Instant) {
    let mut echo = EchoClient::new(via);
    while Instant::now() < until {
        tally.count(
            "idempotent Say",
            echo.say(demo::SayRequest::default()).await,
        );
        tokio::time::sleep(PACE).await;
    }
}

async fn collect(via: Channel, tally: Arc<Tally>, until: Instant) {
    let mut echo = EchoClient::new(via);
    while Instant::now() < until {
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
    wait_usable(&proxy, 3).await;
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
    let until = Instant::now() + RUN;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        tasks.push(tokio::spawn(route_message(
            via.clone(),
            Arc::clone(&routed),
            until,
        )));
        tasks.push(tokio::spawn(say(
            via.clone(),
            Arc::clone(&idempotent),
            until,
        )));
        tasks.push(tokio::spawn(collect(
            via.clone(),
            Arc::clone(&plain),
            until,
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    victim.process.kill();
    for task in tasks {
        task.await.unwrap();
    }

    let ((r_ok, r_failed), (i_ok, i_failed), (p_ok, p_failed)) =
        (routed.get(), idempotent.get(), plain.get());
    eprintln!(
        "RouteMessage {r_ok} ok / {r_failed} failed; idempotent Say {i_ok} ok / {i_failed} failed; \
         Collect {p_ok} ok / {p_failed} failed (in flight on the dead node)"
    );
    assert!(
        r_ok > 300 && i_ok > 300 && p_ok > 300,
        "too little load to mean anything"
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
