//! A draining proxy leaves load-balancer rotation first: from SIGTERM on, `/ready`
//! answers 503 while in-flight calls finish (the admin port stays up for the drain), so
//! a Kubernetes readiness probe or a load balancer stops sending it new work before its
//! listener closes.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::http;

#[tokio::test]
async fn ready_answers_503_from_the_moment_draining_starts() {
    let cluster = Cluster::start().await;
    let _node = cluster
        .node(
            "eu-1",
            "eu-west",
            "eu-west-a",
            100,
            &["--latency-ms", "1500"],
        )
        .await;
    let mut proxy = cluster.proxy("proxy-drain", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    assert_eq!(http::get(proxy.admin, "/ready").await.unwrap().0, 200);

    // A call in flight keeps the proxy draining for about 1.5 s (the grace is 2 s).
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    let call = tokio::spawn(async move {
        echo.say(demo::SayRequest {
            text: "slow".into(),
            ..Default::default()
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &proxy.process.pid().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent);

    let started = tokio::time::Instant::now();
    let answer = loop {
        match http::get(proxy.admin, "/ready").await {
            Ok((200, _)) if started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => break other,
        }
    };
    let (code, body) = answer.expect("the admin port answers while the proxy drains");
    assert_eq!((code, body.trim()), (503, "draining"));
    assert_eq!(
        http::get(proxy.admin, "/live").await.unwrap().0,
        200,
        "a draining proxy is still live"
    );
    let reply = call.await.unwrap();
    assert!(reply.is_ok(), "the call in flight was cut: {reply:?}");
    let exit = proxy.process.wait_for_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        proxy.process.output()
    );
}
