//! Per-node limits through a real proxy, real demo nodes and a real control plane (issue
//! 13, item 2): a client that stops reading large responses does not stall the other
//! callers of the same node; a node with its maximum of calls in flight is passed over,
//! and with every node full calls fail fast, counted; calls beyond a connection's share of
//! streams go over another connection to the node; a call with no frame either way for
//! the stream idle timeout ends; a call without `grpc-timeout` gets the default deadline.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, served_by, wait_steady, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::proxy::ProxyProcess;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

fn policy(endpoint_limits: pb::EndpointLimits, timeout: pb::TimeoutPolicy) -> pb::ServicePolicy {
    pb::ServicePolicy {
        name: ECHO.into(),
        federation: "prod".into(),
        endpoint_limits: Some(endpoint_limits),
        timeout: Some(timeout),
        ..Default::default()
    }
}

fn echo(channel: Channel) -> EchoClient<Channel> {
    EchoClient::new(channel)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

fn say(payload_bytes: usize, delay_ms: u32) -> demo::SayRequest {
    demo::SayRequest {
        payload: vec![7; payload_bytes],
        delay_ms,
        ..Default::default()
    }
}

/// Echo's entry in the proxy's `/debug/table`.
fn echo_entry(table: &serde_json::Value) -> Option<&serde_json::Value> {
    table["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == ECHO)
}

/// Waits until Echo's effective endpoint limits in the proxy's table have `field` = `value`.
async fn wait_endpoint_limit(proxy: &ProxyProcess, field: &str, value: u64) {
    proxy
        .wait_table(Duration::from_secs(20), "Echo's endpoint limits", |t| {
            echo_entry(t).is_some_and(|s| s["endpoint_limits"][field] == value)
        })
        .await;
}

/// The calls in flight the proxy counts on Echo's endpoints, all together.
async fn in_flight(proxy: &ProxyProcess) -> u64 {
    let table = proxy.debug_table().await;
    echo_entry(&table)
        .and_then(|s| s["endpoints"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| e["in_flight"].as_u64())
        .sum()
}

/// Waits until the proxy counts `count` calls in flight to Echo's nodes.
async fn wait_in_flight(proxy: &ProxyProcess, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while in_flight(proxy).await != count {
        assert!(
            Instant::now() < deadline,
            "the proxy did not reach {count} calls in flight; table: {:#}",
            proxy.debug_table().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The stated bound: how long another caller's small call may take while a slow reader
/// holds large responses on the same node. Calls take milliseconds on loopback; the bound
/// leaves room for a loaded 2-core machine. Without the fix they never finish.
const OTHER_CALLER_BOUND: Duration = Duration::from_secs(3);

#[tokio::test]
async fn a_client_that_never_reads_three_large_responses_does_not_stall_other_callers() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;

    // One client connection carries both callers (as a shared channel or a client-side
    // proxy multiplexes its callers), so whatever the proxy's worker count, both reach
    // the node through the same proxy worker and its connections to the node. Small
    // stream windows and a large connection window keep the client side out of the
    // way: each unread response holds 64 KiB of it.
    let shared = tonic::transport::Endpoint::from_shared(proxy.url())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(64 * MIB as u32)
        .connect()
        .await
        .expect("connecting to the proxy");
    let mut other = echo(shared.clone());

    let mut baseline = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        other.say(say(100, 0)).await.expect("a small call");
        baseline.push(started.elapsed());
    }

    // Three calls whose 3 MiB answers the client never reads: with hyper's default
    // windows (2 MiB per stream, 5 MiB per connection) they held the whole window of the
    // proxy's connection to the node.
    let mut slow = echo(shared.clone());
    let mut unread = Vec::new();
    for _ in 0..3 {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        sender.send(say(3 * MIB, 0)).await.unwrap();
        let replies = slow
            .chat(ReceiverStream::new(receiver))
            .await
            .expect("the stream opens");
        unread.push((sender, replies));
    }
    wait_in_flight(&proxy, 3).await;
    // Let the node send all it can: the answers pile up in the proxy as far as the
    // windows allow.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut during = Vec::new();
    for i in 0..20 {
        let started = Instant::now();
        let answered = tokio::time::timeout(Duration::from_secs(10), other.say(say(100, 0))).await;
        let elapsed = started.elapsed();
        let reply = answered
            .unwrap_or_else(|_| {
                panic!("call {i} of the other caller stalled behind the slow reader (over 10 s)")
            })
            .expect("the other caller's call");
        assert_eq!(reply.get_ref().payload.len(), 100);
        during.push(elapsed);
    }
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "other caller's calls: median {:?} / max {:?} before; median {:?} / max {:?} while 3 unread 3 MiB answers were held (bound {OTHER_CALLER_BOUND:?})",
        median(&mut baseline.clone()),
        max(&baseline),
        median(&mut during.clone()),
        max(&during),
    );
    assert!(
        max(&during) < OTHER_CALLER_BOUND,
        "another caller was delayed {:?} by the slow reader (bound {OTHER_CALLER_BOUND:?})",
        max(&during)
    );
    assert_eq!(
        in_flight(&proxy).await,
        3,
        "the slow reader's calls are still held"
    );
    drop(unread);
    wait_in_flight(&proxy, 0).await;
}

#[tokio::test]
async fn a_full_node_is_passed_over_and_with_every_node_full_calls_fail_fast() {
    let cluster = Cluster::start().await;
    let _a = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _b = cluster.node("eu-2", "eu-west", "eu-west-a", 0, &[]).await;
    cluster
        .set_policy(policy(
            pb::EndpointLimits {
                max_requests_per_endpoint: 2,
                ..Default::default()
            },
            Default::default(),
        ))
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 2).await;
    wait_endpoint_limit(&proxy, "max_requests_per_endpoint", 2).await;
    let client = echo(channel(&proxy.url()).await);

    // Four long calls, started one at a time: each node takes two.
    let mut held = Vec::new();
    for i in 0..4 {
        let mut client = client.clone();
        held.push(tokio::spawn(async move { client.say(say(0, 6_000)).await }));
        wait_in_flight(&proxy, i + 1).await;
    }
    let table = proxy.debug_table().await;
    let endpoints = echo_entry(&table).unwrap()["endpoints"].as_array().unwrap();
    for endpoint in endpoints {
        assert_eq!(endpoint["in_flight"], 2, "{endpoint:#}");
        assert_eq!(endpoint["max_requests"], 2, "{endpoint:#}");
        assert_eq!(endpoint["full"], true, "{endpoint:#}");
    }

    // A fifth call finds every node full: refused at once, not queued behind them.
    let started = Instant::now();
    let status = client
        .clone()
        .say(say(0, 0))
        .await
        .expect_err("every node is full");
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("upstream overflow")
            && status
                .message()
                .contains("2 node(s) full, at most 2 call(s) each"),
        "{status:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "the refusal took {waited:?}: it waited for a node"
    );
    let refused = proxy.metric("meridian_proxy_refused_total").await;
    assert_eq!(refused, 1.0, "the refusal is counted");

    // The held calls were spread over both nodes and all succeed.
    let mut nodes = Vec::new();
    for call in held {
        let reply = call.await.unwrap().expect("a held call");
        nodes.push(served_by(&reply));
    }
    nodes.sort();
    assert_eq!(nodes, ["eu-1", "eu-1", "eu-2", "eu-2"]);
    // With room again, calls pass.
    client.clone().say(say(0, 0)).await.expect("room again");
}

#[tokio::test]
async fn calls_beyond_a_connections_share_of_streams_go_over_another_connection() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    // Enough connections that every worker may open three, whatever the CPU count.
    let proxy = cluster
        .proxy_with_args(
            "proxy-eu",
            "eu-west",
            "eu-west-a",
            &[
                "--max-streams-per-connection",
                "2",
                "--max-connections-per-endpoint",
                "64",
            ],
        )
        .await;
    wait_steady(&proxy, 1).await;
    // One client connection: every call is served by the same proxy worker.
    let client = echo(channel(&proxy.url()).await);
    let mut held = Vec::new();
    for i in 0..5 {
        let mut client = client.clone();
        held.push(tokio::spawn(async move { client.say(say(0, 3_000)).await }));
        wait_in_flight(&proxy, i + 1).await;
    }
    let table = proxy.debug_table().await;
    let endpoint = &echo_entry(&table).unwrap()["endpoints"][0];
    assert_eq!(
        endpoint["connections"], 3,
        "5 calls at 2 per connection need 3 connections: {endpoint:#}"
    );
    for call in held {
        call.await.unwrap().expect("a held call");
    }
}

#[tokio::test]
async fn a_call_with_no_frame_for_the_idle_timeout_ends_and_a_lively_stream_goes_on() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    cluster
        .set_policy(policy(
            pb::EndpointLimits {
                stream_idle_timeout_ms: 1_000,
                ..Default::default()
            },
            Default::default(),
        ))
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    wait_endpoint_limit(&proxy, "stream_idle_timeout_ms", 1_000).await;
    let mut client = echo(channel(&proxy.url()).await);

    // A node that takes 20 s to answer a unary call (no deadline): ended after ~1 s.
    let started = Instant::now();
    let status = client
        .say(say(0, 20_000))
        .await
        .expect_err("idle for longer than the timeout");
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("no frame in either direction for 1000 ms")
            && status.message().contains("eu-1"),
        "{status:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "ended after {waited:?}"
    );

    // A stream whose messages come every 300 ms lives past the timeout...
    let started = Instant::now();
    let mut lively = client
        .count(demo::CountRequest {
            n: 8,
            interval_ms: 300,
        })
        .await
        .expect("the stream opens")
        .into_inner();
    let mut received = 0;
    while let Some(reply) = lively.message().await.expect("a lively stream goes on") {
        received += 1;
        assert_eq!(reply.sequence, received);
    }
    assert_eq!(received, 8);
    assert!(started.elapsed() >= Duration::from_millis(2_000));

    // ...and one that goes quiet for 5 s after its first message ends mid-stream.
    let mut quiet = client
        .count(demo::CountRequest {
            n: 3,
            interval_ms: 5_000,
        })
        .await
        .expect("the stream opens")
        .into_inner();
    quiet.message().await.expect("the first message").unwrap();
    let started = Instant::now();
    let status = quiet.message().await.expect_err("idle mid-stream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("stream idle timeout"),
        "{status:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(4_500),
        "it waited for the node's next message"
    );
    // The ended calls left the node.
    wait_in_flight(&proxy, 0).await;
}

#[tokio::test]
async fn a_call_without_grpc_timeout_gets_the_default_deadline_the_services_first() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster
        .proxy_with_args(
            "proxy-eu",
            "eu-west",
            "eu-west-a",
            &["--default-deadline-ms", "4000"],
        )
        .await;
    wait_usable(&proxy, 1).await;
    wait_endpoint_limit(&proxy, "default_deadline_ms", 4_000).await;
    let mut client = echo(channel(&proxy.url()).await);

    // The proxy's default: a call the node would answer after 30 s ends after 4.
    let started = Instant::now();
    let status = client
        .say(say(0, 30_000))
        .await
        .expect_err("past the default deadline");
    let waited = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        waited >= Duration::from_millis(3_900) && waited < Duration::from_secs(20),
        "ended after {waited:?}"
    );
    // A caller's own timeout still wins.
    let mut request = tonic::Request::new(say(0, 0));
    request.set_timeout(Duration::from_secs(60));
    client
        .say(request)
        .await
        .expect("within the caller's timeout");

    // The service's default wins over the proxy's.
    cluster
        .set_policy(policy(
            Default::default(),
            pb::TimeoutPolicy {
                default_timeout_ms: 300,
                ..Default::default()
            },
        ))
        .await;
    wait_endpoint_limit(&proxy, "default_deadline_ms", 300).await;
    let started = Instant::now();
    let status = client
        .say(say(0, 30_000))
        .await
        .expect_err("past the service's default deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_millis(3_000),
        "ended after {:?}: not the service's 300 ms",
        started.elapsed()
    );
}
