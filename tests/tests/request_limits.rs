//! A service's request limits through a real proxy: messages over `max_message_bytes` end
//! the call with RESOURCE_EXHAUSTED, unary and inside a stream, both ways, and never reach
//! the node; idempotent calls over the retry buffer's caps are forwarded (not refused)
//! and the proxy-wide cap holds under concurrent large calls; RouteMessages with the same
//! idempotency key reach the node once, retries within the TTL get the kept answer, and
//! what is kept stays within its bounds.
//!
//! Whether a call reached the node is read from the demo node's own counters, sent on
//! every response (`x-node-received-bytes`, `x-node-admitted`).

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::demo_node::behaviour::{ADMITTED_HEADER, RECEIVED_BYTES_HEADER};
use meridian_tests::proxy::ProxyProcess;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const LIMIT: u32 = 65_536;
const MIB: usize = 1024 * 1024;

fn policy(limits: pb::RequestLimits, idempotent: &[&str]) -> pb::ServicePolicy {
    pb::ServicePolicy {
        name: ECHO.into(),
        federation: "prod".into(),
        retry: Some(pb::RetryPolicy {
            idempotent_methods: idempotent.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }),
        limits: Some(limits),
        ..Default::default()
    }
}

/// Waits until the proxy's table carries Echo's limits with `field` = `value`.
async fn wait_limits(proxy: &ProxyProcess, field: &str, value: u64) {
    proxy
        .wait_table(Duration::from_secs(20), "Echo's request limits", |t| {
            t["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == ECHO)
                .is_some_and(|s| s["limits"][field] == value)
        })
        .await;
}

fn echo(channel: Channel) -> EchoClient<Channel> {
    EchoClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

fn say(payload_bytes: usize) -> demo::SayRequest {
    demo::SayRequest {
        payload: vec![7; payload_bytes],
        ..Default::default()
    }
}

fn counter(metadata: &tonic::metadata::MetadataMap, name: &str) -> u64 {
    metadata
        .get(name)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} header in {metadata:?}"))
}

/// The node's received-bytes and admitted counters, read with an empty call.
async fn node_counters(client: &mut EchoClient<Channel>) -> (u64, u64) {
    let reply = client.say(say(0)).await.expect("a probe call");
    (
        counter(reply.metadata(), RECEIVED_BYTES_HEADER),
        counter(reply.metadata(), ADMITTED_HEADER),
    )
}

fn assert_refused(status: &tonic::Status, direction: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("{direction} message"))
            && status.message().contains(&LIMIT.to_string()),
        "{status:?}"
    );
}

/// A request of exactly the limit (1 + 3 + 65532 bytes) whose echo, which adds the node
/// id, is over it.
const AT_THE_LIMIT: usize = 65_532;

#[tokio::test]
async fn messages_over_the_limit_end_the_call_both_ways_and_never_reach_the_node() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    cluster
        .set_policy(policy(
            pb::RequestLimits {
                max_message_bytes: LIMIT,
                ..Default::default()
            },
            &[],
        ))
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    wait_limits(&proxy, "max_message_bytes", LIMIT.into()).await;
    let mut client = echo(channel(&proxy.url()).await);

    // Unary, request over: refused, and the node saw none of it.
    let (received, _) = node_counters(&mut client).await;
    let status = client.say(say(100_000)).await.expect_err("over the limit");
    assert_refused(&status, "request");
    assert_eq!(node_counters(&mut client).await.0, received);

    // Unary, response over.
    // Its echo adds the node id (6 bytes): at the limit both ways.
    client
        .say(say(AT_THE_LIMIT - 6))
        .await
        .expect("at the limit both ways");
    let status = client
        .say(say(AT_THE_LIMIT))
        .await
        .expect_err("the echo is over the limit");
    assert_refused(&status, "response");

    // Inside a bidi stream, request over: the first message passes, the second ends the
    // call before the node sees it.
    let (received, _) = node_counters(&mut client).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(say(100)).await.unwrap();
    let mut replies = client
        .chat(ReceiverStream::new(receiver))
        .await
        .expect("the stream opens")
        .into_inner();
    let first = replies.message().await.expect("the first echo").unwrap();
    assert_eq!(first.payload.len(), 100);
    sender.send(say(100_000)).await.unwrap();
    let status = replies.message().await.expect_err("over the limit");
    assert_refused(&status, "request");
    drop(sender);
    assert_eq!(
        node_counters(&mut client).await.0,
        received + 100,
        "the node got the first message only"
    );

    // Inside a bidi stream, response over.
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    sender.send(say(100)).await.unwrap();
    let mut replies = client
        .chat(ReceiverStream::new(receiver))
        .await
        .expect("the stream opens")
        .into_inner();
    replies.message().await.expect("the first echo").unwrap();
    sender.send(say(AT_THE_LIMIT)).await.unwrap();
    let status = replies.message().await.expect_err("the echo is over");
    assert_refused(&status, "response");

    let refused = proxy.metric("meridian_proxy_refused_total").await;
    assert_eq!(refused, 4.0, "each refusal counted once");
}

#[tokio::test]
async fn idempotent_calls_over_the_buffer_caps_are_forwarded_and_the_proxy_wide_cap_holds() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    cluster
        .set_policy(policy(
            pb::RequestLimits {
                max_message_bytes: 16 * MIB as u32,
                ..Default::default()
            },
            &["demo.v1.Echo/*"],
        ))
        .await;
    let total_cap = 4 * MIB;
    let proxy = cluster
        .proxy_with_args(
            "proxy-eu",
            "eu-west",
            "eu-west-a",
            &[
                "--retry-buffer-call-bytes",
                &(2 * MIB).to_string(),
                "--retry-buffer-total-bytes",
                &total_cap.to_string(),
            ],
        )
        .await;
    wait_usable(&proxy, 1).await;
    wait_limits(&proxy, "max_message_bytes", 16 * MIB as u64).await;
    let mut client = echo(channel(&proxy.url()).await);

    // 6 MiB: over the per-call cap (and the old fixed 4 MiB), forwarded as it streams.
    let reply = client
        .say(say(6 * MIB))
        .await
        .expect("forwarded, not refused");
    assert_eq!(reply.get_ref().payload.len(), 6 * MIB);
    let unbuffered = proxy.metric("meridian_proxy_retry_unbuffered_total").await;
    assert_eq!(unbuffered, 1.0, "forwarded without retry, counted");

    // Eight calls of 1.5 MiB, 40 ms apart, each held 300 ms by the node while its body
    // is kept: at most two fit under the 4 MiB cap at a time.
    let sampling = tokio::spawn({
        let admin = proxy.admin;
        async move {
            let mut most: f64 = 0.0;
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            while tokio::time::Instant::now() < until {
                if let Ok((200, body)) = meridian_tests::http::get(admin, "/metrics").await {
                    let value = body
                        .lines()
                        .find(|l| l.starts_with("meridian_proxy_retry_buffer_bytes "))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .unwrap_or(0.0);
                    most = most.max(value);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        }
    });
    let calls: Vec<_> = (0..8u64)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(40 * i)).await;
                let request = demo::SayRequest {
                    delay_ms: 300,
                    ..say(3 * MIB / 2)
                };
                client
                    .say(request)
                    .await
                    .map(|r| r.into_inner().payload.len())
            })
        })
        .collect();
    for call in calls {
        assert_eq!(
            call.await.unwrap().expect("every call is served"),
            3 * MIB / 2
        );
    }
    let most = sampling.await.unwrap();
    assert!(
        most > 0.0 && most <= total_cap as f64,
        "retry buffer gauge peaked at {most} bytes; the cap is {total_cap}"
    );
    let unbuffered = proxy.metric("meridian_proxy_retry_unbuffered_total").await;
    assert!(
        unbuffered >= 2.0,
        "some calls went over the proxy-wide cap: {unbuffered}"
    );
    let in_use = proxy.metric("meridian_proxy_retry_buffer_bytes").await;
    assert_eq!(in_use, 0.0, "every reservation given back");
}

async fn route(router: &mut MessageRouterClient<Channel>, key: &str) -> pb::RouteMessageResponse {
    let message = pb::FederationMessage {
        id: format!("id-{key}"),
        target_service: ECHO.into(),
        idempotency_key: key.into(),
        payload: key.as_bytes().to_vec(),
        ..Default::default()
    };
    router
        .route_message(pb::RouteMessageRequest {
            message: Some(message),
        })
        .await
        .unwrap_or_else(|e| panic!("routing {key}: {e}"))
        .into_inner()
}

#[tokio::test]
async fn route_messages_with_the_same_key_reach_the_node_once() {
    let cluster = Cluster::start().await;
    // Every call takes 300 ms at the node, so calls sent together overlap.
    let _node = cluster
        .node("eu-1", "eu-west", "eu-west-a", 0, &["--latency-ms", "300"])
        .await;
    cluster
        .set_policy(policy(
            pb::RequestLimits {
                dedup_ttl_ms: 60_000,
                dedup_max_entries: 3,
                ..Default::default()
            },
            &[],
        ))
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    wait_limits(&proxy, "dedup_max_entries", 3).await;
    let mut client = echo(channel(&proxy.url()).await);
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);
    let admitted = |client: &mut EchoClient<Channel>| {
        let mut client = client.clone();
        async move { node_counters(&mut client).await.1 }
    };

    // Two at once: one reaches the node, both get its answer.
    let before = admitted(&mut client).await;
    let mut other = router.clone();
    let (a, b) = tokio::join!(route(&mut other, "k1"), route(&mut router, "k1"));
    assert_eq!(a.reply, b.reply);
    assert_eq!(a.reply.as_ref().unwrap().payload, b"k1");
    assert_eq!(
        admitted(&mut client).await,
        before + 2,
        "one HandleMessage and the probe"
    );

    // A retry within the TTL gets the kept answer; another key reaches the node.
    let retried = route(&mut router, "k1").await;
    assert_eq!(retried.reply, a.reply);
    route(&mut router, "k2").await;
    assert_eq!(
        admitted(&mut client).await,
        before + 2 + 1 + 1,
        "k1 replayed, k2 reached the node, and the probe"
    );

    // At most 3 answers are kept: k3, k4 and k5 push out k1 and k2.
    for key in ["k3", "k4", "k5"] {
        route(&mut router, key).await;
    }
    let table = proxy.debug_table().await;
    let limits = &table["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == ECHO)
        .unwrap()["limits"];
    assert_eq!(limits["dedup_kept"], 3, "{limits}");
    let before = admitted(&mut client).await;
    route(&mut router, "k5").await;
    route(&mut router, "k1").await;
    assert_eq!(
        admitted(&mut client).await,
        before + 2,
        "k5 kept, k1 evicted (reaches the node again), and the probe"
    );
    assert!(proxy.metric("meridian_proxy_dedup_total").await >= 5.0);
}
