//! Manual failover through `meridianctl`: `failover start demo.v1.Echo --to us-east`
//! moves a proxy's traffic (transparent calls and RouteMessage) to us-east; `failover
//! clear` moves it back; both are recorded as events.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, served_by, wait_usable};
use meridian_tests::control::{OPERATOR_TOKEN, channel};
use meridian_tests::process::run_to_completion;
use meridian_tests::proxy::ProxyProcess;

fn ctl(cluster: &Cluster, args: &[&str]) -> String {
    let url = cluster.cp.url();
    let mut argv = vec!["--control-plane", url.as_str(), "--token", OPERATOR_TOKEN];
    argv.extend_from_slice(args);
    let (status, stdout, stderr) = run_to_completion("meridianctl", &argv);
    assert!(status.success(), "meridianctl {args:?} failed: {stderr}");
    stdout
}

/// Which nodes served 30 transparent calls and 30 RouteMessages.
async fn served(proxy: &ProxyProcess) -> BTreeSet<String> {
    let via = channel(&proxy.url()).await;
    let (mut echo, mut router) = (EchoClient::new(via.clone()), MessageRouterClient::new(via));
    let mut nodes = BTreeSet::new();
    for i in 0..30 {
        let reply = echo.say(demo::SayRequest::default()).await.unwrap();
        nodes.insert(served_by(&reply));
        let message = pb::FederationMessage {
            id: format!("m{i}"),
            target_service: "demo.v1.Echo".into(),
            ..Default::default()
        };
        let answer = router
            .route_message(pb::RouteMessageRequest {
                message: Some(message),
            })
            .await
            .unwrap()
            .into_inner();
        nodes.insert(answer.reply.unwrap().node_id);
    }
    nodes
}

async fn served_becomes(proxy: &ProxyProcess, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    loop {
        let got = served(proxy).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "traffic went to {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failover_moves_traffic_and_clearing_moves_it_back() {
    let cluster = Cluster::start().await;
    cluster.echo_policy(pb::Algorithm::Geographic, "").await;
    let _eu = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _us = cluster.node("us-1", "us-east", "us-east-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 2).await;
    served_becomes(&proxy, &["eu-1"]).await;

    let out = ctl(
        &cluster,
        &[
            "failover",
            "start",
            "demo.v1.Echo",
            "--to",
            "us-east",
            "--reason",
            "eu-west maintenance",
        ],
    );
    assert!(out.contains("us-east"), "{out}");
    served_becomes(&proxy, &["us-1"]).await;
    let listed = ctl(&cluster, &["failover", "list", "-o", "json"]);
    assert!(listed.contains("eu-west maintenance"), "{listed}");

    ctl(
        &cluster,
        &["failover", "clear", "demo.v1.Echo", "--reason", "done"],
    );
    served_becomes(&proxy, &["eu-1"]).await;

    let events = ctl(
        &cluster,
        &[
            "events",
            "-o",
            "json",
            "--kind",
            "failoverStarted",
            "--kind",
            "failoverCleared",
        ],
    );
    assert!(
        events.contains("failoverStarted") && events.contains("failoverCleared"),
        "{events}"
    );

    // A target that is neither a tier nor a region is refused.
    let url = cluster.cp.url();
    let (status, _, stderr) = run_to_completion(
        "meridianctl",
        &[
            "--control-plane",
            &url,
            "--token",
            OPERATOR_TOKEN,
            "failover",
            "start",
            "demo.v1.Echo",
            "--to",
            "mars",
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("mars"),
        "{stderr}"
    );
}

#[tokio::test]
async fn with_auto_recovery_a_failover_clears_itself_once_the_primary_has_failed_and_recovered() {
    let cluster = Cluster::start().await;
    let policy = pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        algorithm: pb::Algorithm::Geographic.into(),
        failover: Some(pb::FailoverPolicy {
            auto_recovery: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    cluster.set_policy(policy).await;
    let _eu = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _us = cluster.node("us-1", "us-east", "us-east-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 2).await;

    ctl(
        &cluster,
        &[
            "failover",
            "start",
            "demo.v1.Echo",
            "--to",
            "us-east",
            "--reason",
            "drill",
        ],
    );
    served_becomes(&proxy, &["us-1"]).await;
    // The primary is healthy: the failover stays (planned failovers are not undone).
    assert!(ctl(&cluster, &["failover", "list"]).contains("us-east"));

    ctl(
        &cluster,
        &["nodes", "fail", "eu-1", "--reason", "disk gone"],
    );
    // While the primary has no usable node the failover stays too.
    assert!(ctl(&cluster, &["failover", "list"]).contains("us-east"));
    ctl(&cluster, &["nodes", "recover", "eu-1"]);

    let started = Instant::now();
    loop {
        let listed = ctl(&cluster, &["failover", "list", "-o", "json"]);
        if listed.trim() == "[]" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the failover was not cleared: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served_becomes(&proxy, &["eu-1"]).await;
    let events = ctl(
        &cluster,
        &["events", "-o", "json", "--kind", "failoverCleared"],
    );
    assert!(events.contains("auto recovery"), "{events}");
}
