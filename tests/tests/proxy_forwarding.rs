//! Through a real proxy, a service it has no code for (`demo.v1.Echo`) behaves exactly as
//! when called directly: unary and bidi-streaming replies are byte-identical, error
//! statuses, metadata and trailers pass through, an expired deadline is
//! DEADLINE_EXCEEDED; the proxy names the serving node; RouteMessage returns the reply and
//! the node that really served; unknown services and drained services get clear errors;
//! table changes show in /debug/table within the debounce window.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, served_by, wait_usable};
use meridian_tests::control::channel;
use prost::Message;
use tonic::Code;

fn say(text: &str) -> demo::SayRequest {
    demo::SayRequest {
        text: text.into(),
        payload: vec![0, 1, 2, 254, 255],
        delay_ms: 0,
    }
}

#[tokio::test]
async fn unary_streaming_errors_metadata_and_deadlines_pass_through() {
    let cluster = Cluster::start().await;
    let node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;
    let mut direct = EchoClient::new(node.channel().await);
    let mut via = EchoClient::new(channel(&proxy.url()).await);

    // Unary, with metadata in and headers/trailers out.
    let request = || {
        let mut r = tonic::Request::new(say("hello"));
        r.metadata_mut()
            .insert("x-echo-tenant", "acme".parse().unwrap());
        r
    };
    let expected = direct.say(request()).await.unwrap();
    let got = via.say(request()).await.unwrap();
    assert_eq!(
        got.get_ref().encode_to_vec(),
        expected.get_ref().encode_to_vec(),
        "unary reply differs"
    );
    assert_eq!(
        got.metadata().get("x-echo-tenant").unwrap(),
        "acme",
        "request metadata was not passed on"
    );
    assert_eq!(served_by(&got), "eu-1");

    // Bidi streaming: the same replies in the same order.
    let messages: Vec<_> = (0..20).map(|i| say(&format!("m{i}"))).collect();
    let collect = |mut stream: tonic::Streaming<demo::SayReply>| async move {
        let mut replies = Vec::new();
        while let Some(reply) = stream.message().await.unwrap() {
            replies.push(reply.encode_to_vec());
        }
        replies
    };
    let expected = collect(
        direct
            .chat(tokio_stream::iter(messages.clone()))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    let got = collect(
        via.chat(tokio_stream::iter(messages))
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert_eq!(expected.len(), 20);
    assert_eq!(got, expected, "bidi stream differs");

    // Server streaming.
    let count = via
        .count(demo::CountRequest {
            n: 5,
            interval_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(collect_count(count).await, 5);

    // Error status, message and trailers pass through.
    let fail = demo::FailRequest {
        code: Code::FailedPrecondition as u32,
        message: "the ledger is closed".into(),
        trailer: "t-42".into(),
    };
    let direct_err = direct.fail(fail.clone()).await.unwrap_err();
    let via_err = via.fail(fail).await.unwrap_err();
    assert_eq!(via_err.code(), Code::FailedPrecondition);
    assert_eq!(via_err.message(), direct_err.message());
    assert_eq!(
        via_err.metadata().get("x-demo-trailer").unwrap(),
        "t-42",
        "trailers were lost"
    );

    // Deadlines: the policy caps every call at 300 ms; the client asks for 5 s, so only
    // the proxy can end the call at ~300 ms with DEADLINE_EXCEEDED.
    let policy = pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        timeout: Some(pb::TimeoutPolicy {
            default_timeout_ms: 0,
            max_timeout_ms: 300,
        }),
        ..Default::default()
    };
    cluster.set_policy(policy).await;
    proxy
        .wait_table(Duration::from_secs(5), "the timeout policy", |t| {
            t["services"][0]["has_policy"] == true
        })
        .await;
    let mut slow = tonic::Request::new(demo::SayRequest {
        delay_ms: 3_000,
        ..say("slow")
    });
    slow.set_timeout(Duration::from_secs(5));
    let started = std::time::Instant::now();
    let err = via.say(slow).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the deadline was not enforced"
    );
}

async fn collect_count(mut stream: tonic::Streaming<demo::CountReply>) -> usize {
    let mut n = 0;
    while stream.message().await.unwrap().is_some() {
        n += 1;
    }
    n
}

#[tokio::test]
async fn route_message_returns_the_reply_and_the_node_that_served() {
    let cluster = Cluster::start().await;
    let _a = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _b = cluster.node("eu-2", "eu-west", "eu-west-b", 0, &[]).await;
    let _us = cluster.node("us-1", "us-east", "us-east-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 3).await;
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);

    let message = |id: &str| pb::FederationMessage {
        id: id.into(),
        r#type: "order.created".into(),
        payload: b"{\"order\":7}".to_vec(),
        target_service: "demo.v1.Echo".into(),
        ..Default::default()
    };
    for i in 0..20 {
        let answer = router
            .route_message(pb::RouteMessageRequest {
                message: Some(message(&format!("m{i}"))),
            })
            .await
            .unwrap()
            .into_inner();
        let reply = answer.reply.unwrap();
        let decision = answer.decision.unwrap();
        assert_eq!(reply.message_id, format!("m{i}"));
        assert_eq!(reply.payload, b"{\"order\":7}");
        assert_eq!(
            reply.node_id, decision.target_node,
            "the decision names another node than the one that served"
        );
        assert_eq!(
            decision.target_region, "eu-west",
            "without global routing the message left the region"
        );
        assert_eq!(decision.proxy_id, "proxy-eu");
        assert_eq!(decision.attempts, 1);
        assert!(decision.table_version > 0);
    }

    // Target node and target region.
    let mut to_us = message("to-us");
    to_us.target_node = "us-1".into();
    let err = router
        .route_message(pb::RouteMessageRequest {
            message: Some(to_us.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "leaving the region needs global_routing: {err:?}"
    );
    to_us.global_routing = true;
    let answer = router
        .route_message(pb::RouteMessageRequest {
            message: Some(to_us),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.reply.unwrap().node_id, "us-1");
    let mut in_us = message("in-us");
    in_us.target_region = "us-east".into();
    in_us.global_routing = true;
    let answer = router
        .route_message(pb::RouteMessageRequest {
            message: Some(in_us),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.decision.unwrap().target_node, "us-1");

    // Bad input.
    let err = router
        .route_message(pb::RouteMessageRequest { message: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut unknown = message("x");
    unknown.target_service = "nope.v1.Nothing".into();
    let err = router
        .route_message(pb::RouteMessageRequest {
            message: Some(unknown),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn unknown_services_and_services_without_usable_nodes_get_clear_errors() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;

    // A service no node serves: UNIMPLEMENTED from the proxy.
    let mut client = tonic::client::Grpc::new(channel(&proxy.url()).await);
    client.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<demo::SayRequest, demo::SayReply>::default();
    let err = client
        .unary(
            tonic::Request::new(say("x")),
            "/other.v1.Thing/Do".parse().unwrap(),
            codec,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("other.v1.Thing"), "{err:?}");

    // Its only node drained: UNAVAILABLE, and the table shows it within the debounce window.
    cluster.drain("eu-1").await;
    let table = proxy
        .wait_table(Duration::from_secs(5), "eu-1 draining", |t| {
            t["services"][0]["endpoints"][0]["status"] == "draining"
        })
        .await;
    assert_eq!(table["services"][0]["usable_endpoints"], 0);
    let err = EchoClient::new(channel(&proxy.url()).await)
        .say(say("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("demo.v1.Echo"), "{err:?}");

    // A node added shows up in the table.
    let _second = cluster.node("eu-2", "eu-west", "eu-west-b", 0, &[]).await;
    wait_usable(&proxy, 1).await;
    let reply = EchoClient::new(channel(&proxy.url()).await)
        .say(say("x"))
        .await
        .unwrap();
    assert_eq!(served_by(&reply), "eu-2");
}
