//! The proxy keeps routing without its control plane: killed control plane, zero errors;
//! a proxy restarted while the control plane is still down serves from its table file.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::proxy::{ProxyOptions, ProxyProcess};

async fn calls(url: &str, n: usize) -> usize {
    let mut client = EchoClient::new(channel(url).await);
    let mut errors = 0;
    for i in 0..n {
        let request = demo::SayRequest {
            text: format!("m{i}"),
            ..Default::default()
        };
        if client.say(request).await.is_err() {
            errors += 1;
        }
    }
    errors
}

#[tokio::test]
async fn the_proxy_serves_on_without_a_control_plane_and_restarts_from_its_file() {
    let mut cluster = Cluster::start().await;
    let _a = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _b = cluster.node("eu-2", "eu-west", "eu-west-b", 0, &[]).await;
    let mut proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 2).await;
    assert_eq!(calls(&proxy.url(), 50).await, 0);

    cluster.cp.process.kill();
    assert_eq!(
        calls(&proxy.url(), 200).await,
        0,
        "calls failed after the control plane died"
    );

    // Restart the proxy on the same ports while the control plane is still down.
    let ports = (proxy.grpc, proxy.admin);
    let exit = proxy.process.terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the proxy did not stop cleanly: {exit:?}"
    );
    let control_planes = [cluster.cp.url()];
    let restarted = ProxyProcess::start(ProxyOptions {
        id: "proxy-eu",
        federation: "prod",
        region: "eu-west",
        zone: "eu-west-a",
        control_planes: &control_planes,
        dir: cluster.dir.path(),
        ports: Some(ports),
    })
    .await;
    restarted.wait_ready(Duration::from_secs(5)).await;
    let table = restarted.debug_table().await;
    assert_eq!(table["source"], "file", "{table:#}");
    assert_eq!(
        calls(&restarted.url(), 100).await,
        0,
        "the restarted proxy failed calls"
    );
}

#[tokio::test]
async fn sigterm_lets_calls_in_flight_finish_and_refuses_new_ones() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let mut proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;

    // A call that takes 1 s is in flight when the proxy is told to stop.
    let url = proxy.url();
    let slow = tokio::spawn(async move {
        let mut client = EchoClient::new(channel(&url).await);
        client
            .say(demo::SayRequest {
                text: "slow".into(),
                delay_ms: 1_000,
                ..Default::default()
            })
            .await
    });
    let started = std::time::Instant::now();
    proxy
        .wait_table(Duration::from_secs(5), "the call in flight", |t| {
            t["services"][0]["endpoints"][0]["in_flight"] == 1
        })
        .await;
    let pid = proxy.process.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let reply = slow
        .await
        .unwrap()
        .expect("the call in flight must finish during the drain");
    assert_eq!(reply.get_ref().text, "slow");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let exit = proxy.process.wait_for_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the proxy did not exit cleanly: {exit:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(proxy.grpc).await.is_err(),
        "the stopped proxy still accepts connections"
    );
}
