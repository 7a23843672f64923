//! Losing the proxy's whole region: with both eu-west nodes killed under load, traffic
//! goes to the nearest other region (us-east from Dublin, not ap-south) within 2 s, with
//! no errors for RouteMessage and at most the in-flight transparent calls failing; when
//! the eu-west nodes come back, traffic returns to them, ramped (slow start).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, served_by, wait_steady};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;

const WORKERS: usize = 3;
const PACE: Duration = Duration::from_millis(20);

/// One finished call: when, which kind, and the serving node or, on error, why.
type Log = Arc<Mutex<Vec<(Instant, &'static str, Outcome)>>>;

/// The node that served a call, or the status of a failed one ("Unavailable: ...").
type Outcome = Result<String, String>;

fn failure(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn spawn_load(
    via: tonic::transport::Channel,
    log: Log,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (channel, log_r) = (via.clone(), Arc::clone(&log));
        tasks.push(tokio::spawn(async move {
            let mut router = MessageRouterClient::new(channel);
            let mut seq = 0;
            while Instant::now() < until {
                seq += 1;
                let message = pb::FederationMessage {
                    id: format!("w{w}-{seq}"),
                    target_service: "demo.v1.Echo".into(),
                    global_routing: true,
                    ..Default::default()
                };
                let outcome = router
                    .route_message(pb::RouteMessageRequest {
                        message: Some(message),
                    })
                    .await
                    .map_err(failure)
                    .and_then(|r| {
                        r.into_inner()
                            .reply
                            .map(|r| r.node_id)
                            .ok_or_else(|| "a response without a reply".to_owned())
                    });
                log_r
                    .lock()
                    .unwrap()
                    .push((Instant::now(), "route", outcome));
                tokio::time::sleep(PACE).await;
            }
        }));
        let (channel, log_p) = (via.clone(), Arc::clone(&log));
        tasks.push(tokio::spawn(async move {
            let mut echo = EchoClient::new(channel);
            while Instant::now() < until {
                let outcome = echo
                    .say(demo::SayRequest::default())
                    .await
                    .map(|r| served_by(&r))
                    .map_err(failure);
                log_p
                    .lock()
                    .unwrap()
                    .push((Instant::now(), "plain", outcome));
                tokio::time::sleep(PACE).await;
            }
        }));
    }
    tasks
}

#[tokio::test]
async fn losing_the_region_moves_traffic_to_the_nearest_region_and_back() {
    let cluster = Cluster::start().await;
    cluster.echo_policy(pb::Algorithm::Geographic, "").await;
    let mut eu1 = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let mut eu2 = cluster.node("eu-2", "eu-west", "eu-west-b", 0, &[]).await;
    let _us = cluster.node("us-1", "us-east", "us-east-a", 0, &[]).await;
    let _ap = cluster.node("ap-1", "ap-south", "ap-south-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    // The traffic stays in the zone only once every endpoint is warm.
    wait_steady(&proxy, 4).await;
    let via = channel(&proxy.url()).await;

    let log: Log = Arc::default();
    let start = Instant::now();
    let tasks = spawn_load(
        via.clone(),
        Arc::clone(&log),
        start + Duration::from_secs(7),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (eu1_addr, eu2_addr) = (eu1.addr, eu2.addr);
    let killed = Instant::now();
    eu1.process.kill();
    eu2.process.kill();
    for task in tasks {
        task.await.unwrap();
    }

    let calls = log.lock().unwrap().clone();
    // Each failure with when it ended relative to the kill, and its status.
    let failed = |kind: &str| -> Vec<String> {
        calls
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .filter_map(|(t, _, outcome)| {
                let since_kill = t.saturating_duration_since(killed);
                outcome
                    .as_ref()
                    .err()
                    .map(|why| format!("{since_kill:?} after the kill: {why}"))
            })
            .collect()
    };
    let out_of_zone: Vec<_> = calls
        .iter()
        .filter(|(t, _, n)| *t < killed && !n.as_ref().is_ok_and(|n| n == "eu-1"))
        .map(|(t, kind, n)| (killed - *t, kind, n))
        .collect();
    assert!(
        out_of_zone.is_empty(),
        "before the loss traffic stays in the zone; (time before the kill, call, outcome): \
         {out_of_zone:#?}"
    );
    let settled: Vec<_> = calls
        .iter()
        .filter(|(t, _, _)| *t > killed + Duration::from_secs(2))
        .collect();
    assert!(
        settled.len() > 100,
        "too few calls after the loss: {}",
        settled.len()
    );
    let elsewhere: Vec<_> = settled
        .iter()
        .filter(|(_, _, n)| !n.as_ref().is_ok_and(|n| n == "us-1"))
        .collect();
    eprintln!(
        "{} calls; failed: route {} plain {}; after 2 s all on us-1: {}",
        calls.len(),
        failed("route").len(),
        failed("plain").len(),
        elsewhere.is_empty()
    );
    assert!(
        elsewhere.is_empty(),
        "2 s after the loss, calls still went elsewhere than us-east: {elsewhere:?}"
    );
    let route_failures = failed("route");
    assert_eq!(
        route_failures.len(),
        0,
        "RouteMessage calls failed: {route_failures:#?}"
    );
    let plain_failures = failed("plain");
    assert!(
        plain_failures.len() <= WORKERS,
        "more plain calls failed than were in flight: {plain_failures:#?}"
    );

    // The region comes back on the same addresses: once the breakers' probes succeed,
    // traffic returns to eu-west.
    let _eu1 = DemoNodeProcess::start(
        "eu-1",
        &["--listen", &eu1_addr.to_string()],
        &cluster.dir.path().join("eu-1b.log"),
    )
    .await;
    let _eu2 = DemoNodeProcess::start(
        "eu-2",
        &["--listen", &eu2_addr.to_string()],
        &cluster.dir.path().join("eu-2b.log"),
    )
    .await;
    let back = Instant::now();
    let mut echo = EchoClient::new(via);
    loop {
        let node = served_by(
            &echo
                .say(demo::SayRequest::default())
                .await
                .expect("no errors while the region returns"),
        );
        if node == "eu-1" {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(40),
            "traffic did not return to eu-west"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "traffic back on eu-1 {:?} after the nodes restarted",
        back.elapsed()
    );

    // Ramped: just after it returns, the zone takes only part of the traffic (slow
    // start); within the slow-start window (10 s) it takes all of it again.
    let mut in_zone = 0;
    for _ in 0..100 {
        let node = served_by(&echo.say(demo::SayRequest::default()).await.unwrap());
        in_zone += usize::from(node == "eu-1");
    }
    eprintln!("right after returning, eu-1 served {in_zone} of 100 calls");
    assert!(
        in_zone < 90,
        "the returning zone took {in_zone} of 100 calls at once: no ramp"
    );
    let ramp = Instant::now();
    loop {
        let mut all = true;
        for _ in 0..50 {
            all &= served_by(&echo.say(demo::SayRequest::default()).await.unwrap()) == "eu-1";
        }
        if all {
            break;
        }
        assert!(
            ramp.elapsed() < Duration::from_secs(20),
            "the zone never took all its traffic back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("all traffic back in the zone {:?} later", ramp.elapsed());
}
