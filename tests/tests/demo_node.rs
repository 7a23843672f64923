//! The real `meridian-demo-node` binary, as a test behind a proxy meets it: Echo in every
//! call shape with metadata and trailers, chosen failures, the DemoControl knobs (health,
//! latency, error rate), MessageHandler, reflection, and self-registration with a dev-mode
//! control plane through to deregistration on SIGTERM.

use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_handler_client::MessageHandlerClient;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized,
};
use meridian_tests::demo_node::SERVED_SERVICES;
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::process::run_to_completion;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const DEADLINE: Duration = Duration::from_secs(30);

/// A demo node on a free port, with its log in a temp dir that lives as long as it.
struct Node {
    node: DemoNodeProcess,
    channel: Channel,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start(id: &str, args: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let node = DemoNodeProcess::start(id, args, &dir.path().join(format!("{id}.log"))).await;
        let channel = node.channel().await;
        Node {
            node,
            channel,
            _dir: dir,
        }
    }

    fn echo(&self) -> EchoClient<Channel> {
        EchoClient::new(self.channel.clone())
    }

    fn control(&self) -> DemoControlClient<Channel> {
        DemoControlClient::new(self.channel.clone())
    }

    async fn health(&self, service: &str) -> ServingStatus {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = HealthClient::new(self.channel.clone())
            .check(request)
            .await
            .unwrap()
            .into_inner()
            .status;
        ServingStatus::try_from(status).unwrap()
    }
}

fn say(text: &str) -> demo::SayRequest {
    demo::SayRequest {
        text: text.into(),
        ..Default::default()
    }
}

fn metadata<'a, T>(response: &'a tonic::Response<T>, key: &str) -> Option<&'a str> {
    response.metadata().get(key).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn say_echoes_text_payload_node_id_and_x_echo_metadata_with_a_served_by_trailer() {
    let node = Node::start("echo-1", &[]).await;
    let mut request = tonic::Request::new(demo::SayRequest {
        text: "hello".into(),
        payload: vec![0, 1, 2, 255],
        delay_ms: 0,
    });
    request
        .metadata_mut()
        .insert("x-echo-user", "alice".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-other", "not echoed".parse().unwrap());

    let response = node.echo().say(request).await.unwrap();

    assert_eq!(metadata(&response, "x-echo-user"), Some("alice"));
    assert_eq!(metadata(&response, "x-other"), None);
    // tonic merges a unary call's trailers into its metadata.
    assert_eq!(metadata(&response, "x-served-by"), Some("echo-1"));
    let reply = response.into_inner();
    assert_eq!(reply.text, "hello");
    assert_eq!(reply.payload, [0, 1, 2, 255]);
    assert_eq!(reply.node_id, "echo-1");
}

#[tokio::test]
async fn chat_answers_each_request_in_order() {
    let node = Node::start("chat-1", &[]).await;
    // Earlier messages wait longer, so out-of-order answering would show.
    let requests: Vec<_> = (0..5u32)
        .map(|i| demo::SayRequest {
            text: format!("m{i}"),
            payload: vec![u8::try_from(i).unwrap()],
            delay_ms: (5 - i) * 20,
        })
        .collect();

    let mut replies = node
        .echo()
        .chat(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let mut texts = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.node_id, "chat-1");
        assert_eq!(reply.payload, [texts.len() as u8]);
        texts.push(reply.text);
    }
    assert_eq!(texts, ["m0", "m1", "m2", "m3", "m4"]);
}

#[tokio::test]
async fn count_streams_n_numbered_replies_then_the_served_by_trailer() {
    let node = Node::start("count-1", &[]).await;
    let request = demo::CountRequest {
        n: 7,
        interval_ms: 5,
    };

    let mut replies = node.echo().count(request).await.unwrap().into_inner();

    let mut sequences = Vec::new();
    while let Some(reply) = replies.message().await.unwrap() {
        assert_eq!(reply.node_id, "count-1");
        sequences.push(reply.sequence);
    }
    assert_eq!(sequences, (1..=7).collect::<Vec<_>>());
    let trailers = replies.trailers().await.unwrap().expect("trailers");
    assert_eq!(trailers.get("x-served-by").unwrap(), "count-1");
}

#[tokio::test]
async fn collect_answers_once_with_everything_it_received() {
    let node = Node::start("collect-1", &[]).await;
    let requests = vec![
        demo::SayRequest {
            text: "a".into(),
            payload: vec![1; 10],
            delay_ms: 0,
        },
        demo::SayRequest {
            text: "b".into(),
            payload: vec![2; 5],
            delay_ms: 0,
        },
    ];

    let reply = node
        .echo()
        .collect(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(reply.count, 2);
    assert_eq!(reply.texts, ["a", "b"]);
    assert_eq!(reply.payload_bytes, 15);
    assert_eq!(reply.node_id, "collect-1");
}

#[tokio::test]
async fn fail_answers_the_requested_status_message_and_trailer() {
    let node = Node::start("fail-1", &[]).await;
    let mut echo = node.echo();

    let status = echo
        .fail(demo::FailRequest {
            code: Code::ResourceExhausted as u32,
            message: "too much".into(),
            trailer: "tv-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "too much");
    assert_eq!(status.metadata().get("x-demo-trailer").unwrap(), "tv-1");
    assert_eq!(status.metadata().get("x-served-by").unwrap(), "fail-1");

    let ok = echo
        .fail(demo::FailRequest {
            code: 0,
            message: "fine".into(),
            trailer: "tv-2".into(),
        })
        .await
        .unwrap();
    assert_eq!(metadata(&ok, "x-demo-trailer"), Some("tv-2"));
    assert_eq!(ok.into_inner().text, "fine");

    let bad = echo
        .fail(demo::FailRequest {
            code: 17,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("code: 17"), "{}", bad.message());
}

#[tokio::test]
async fn set_health_flips_the_grpc_health_status() {
    let node = Node::start("health-1", &[]).await;
    for service in ["", "demo.v1.Echo"] {
        assert_eq!(node.health(service).await, ServingStatus::Serving);
    }

    node.control()
        .set_health(demo::SetHealthRequest { serving: false })
        .await
        .unwrap();
    for service in ["", "demo.v1.Echo"] {
        assert_eq!(node.health(service).await, ServingStatus::NotServing);
    }

    node.control()
        .set_health(demo::SetHealthRequest { serving: true })
        .await
        .unwrap();
    for service in ["", "demo.v1.Echo"] {
        assert_eq!(node.health(service).await, ServingStatus::Serving);
    }
}

#[tokio::test]
async fn unhealthy_flag_starts_not_serving() {
    let node = Node::start("health-2", &["--unhealthy"]).await;
    for service in ["", "demo.v1.Echo"] {
        assert_eq!(node.health(service).await, ServingStatus::NotServing);
    }
}

async fn timed_say(echo: &mut EchoClient<Channel>, delay_ms: u32) -> Duration {
    let started = Instant::now();
    echo.say(demo::SayRequest {
        delay_ms,
        ..say("slow")
    })
    .await
    .unwrap();
    started.elapsed()
}

#[tokio::test]
async fn latency_from_the_flag_set_latency_and_delay_ms_add_to_calls() {
    let node = Node::start("latency-1", &["--latency-ms", "200"]).await;
    let mut echo = node.echo();

    let from_flag = timed_say(&mut echo, 0).await;
    assert!(from_flag >= Duration::from_millis(200), "{from_flag:?}");

    node.control()
        .set_latency(demo::SetLatencyRequest { latency_ms: 400 })
        .await
        .unwrap();
    let set = timed_say(&mut echo, 0).await;
    assert!(set >= Duration::from_millis(400), "{set:?}");

    node.control()
        .set_latency(demo::SetLatencyRequest { latency_ms: 0 })
        .await
        .unwrap();
    let per_call = timed_say(&mut echo, 150).await;
    assert!(per_call >= Duration::from_millis(150), "{per_call:?}");

    node.control()
        .set_latency(demo::SetLatencyRequest { latency_ms: 300 })
        .await
        .unwrap();
    let started = Instant::now();
    MessageHandlerClient::new(node.channel.clone())
        .handle_message(handle_request("m-2", 1))
        .await
        .unwrap();
    let handled = started.elapsed();
    assert!(handled >= Duration::from_millis(300), "{handled:?}");
}

#[tokio::test]
async fn error_rate_one_fails_every_call_with_unavailable_until_set_back() {
    let node = Node::start("errors-1", &["--error-rate", "1"]).await;
    let mut echo = node.echo();
    let mut handler = MessageHandlerClient::new(node.channel.clone());

    for _ in 0..10 {
        let status = echo.say(say("x")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "injected failure");
    }
    let status = handler
        .handle_message(handle_request("m-1", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);

    node.control()
        .set_error_rate(demo::SetErrorRateRequest { rate: 0.0 })
        .await
        .unwrap();
    for _ in 0..10 {
        echo.say(say("x")).await.unwrap();
    }

    node.control()
        .set_error_rate(demo::SetErrorRateRequest { rate: 1.0 })
        .await
        .unwrap();
    for _ in 0..10 {
        let status = echo.say(say("x")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }

    let refused = node
        .control()
        .set_error_rate(demo::SetErrorRateRequest { rate: 1.5 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
}

fn handle_request(id: &str, attempt: u32) -> pb::HandleMessageRequest {
    pb::HandleMessageRequest {
        message: Some(pb::FederationMessage {
            id: id.into(),
            payload: b"order 42".to_vec(),
            target_service: "demo.v1.Echo".into(),
            ..Default::default()
        }),
        routed_by: "proxy-1".into(),
        attempt,
    }
}

#[tokio::test]
async fn handle_message_echoes_the_id_and_payload_with_the_attempt() {
    let node = Node::start("handler-1", &[]).await;

    let response = MessageHandlerClient::new(node.channel.clone())
        .handle_message(handle_request("msg-7", 3))
        .await
        .unwrap();

    assert_eq!(metadata(&response, "x-attempt"), Some("3"));
    let reply = response.into_inner();
    assert_eq!(reply.message_id, "msg-7");
    assert_eq!(reply.node_id, "handler-1");
    assert_eq!(reply.payload, b"order 42");
    assert_eq!(
        reply.headers.get("x-attempt").map(String::as_str),
        Some("3")
    );
}

#[tokio::test]
async fn reflection_lists_exactly_the_served_services() {
    let node = Node::start("reflect-1", &[]).await;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut responses = ServerReflectionClient::new(node.channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();

    let mut listed = match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    listed.sort();
    let mut expected = SERVED_SERVICES.map(String::from).to_vec();
    expected.sort();
    assert_eq!(listed, expected);
}

#[tokio::test]
async fn set_keep_alive_needs_self_registration_and_sigterm_exits_0() {
    let node = Node::start("plain-1", &[]).await;
    let refused = node
        .control()
        .set_keep_alive(demo::SetKeepAliveRequest { enabled: false })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    let (status, output) = terminate(node).await;
    assert!(status.success(), "{status:?}\n{output}");
    assert!(!output.contains("stopping anyway"), "{output}");
}

/// SIGTERMs the node and returns its exit status and output, or panics with the output.
/// The wait runs off the runtime thread, so the test's own connection can still answer
/// the server's GOAWAY while the node drains.
async fn terminate(node: Node) -> (std::process::ExitStatus, String) {
    let Node {
        node,
        channel,
        _dir: dir,
    } = node;
    drop(channel);
    let mut process = node.process;
    tokio::task::spawn_blocking(move || {
        let status = process.terminate(DEADLINE);
        let output = process.output();
        drop(dir);
        match status {
            Some(status) => (status, output),
            None => panic!("the node did not exit on SIGTERM; its output:\n{output}"),
        }
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[test]
fn bad_flags_exit_2_naming_the_problem() {
    let (status, _, stderr) =
        run_to_completion("meridian-demo-node", &["--id", "n", "--error-rate", "2"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("2 is outside 0 to 1"), "{stderr}");

    let (status, _, stderr) = run_to_completion(
        "meridian-demo-node",
        &["--id", "n", "--register-with", "http://127.0.0.1:1"],
    );
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--federation"), "{stderr}");
}

// === self-registration ===

async fn dev_control_plane(dir: &std::path::Path) -> ControlPlaneProcess {
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-dev",
        election_ttl_seconds: 5,
        dir,
    })
    .await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    cp
}

async fn listed_node(cp: &ControlPlaneProcess, id: &str) -> Option<pb::Node> {
    cp.admin()
        .await
        .list_nodes(authorized(pb::ListNodesRequest::default(), OPERATOR_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.id == id)
}

/// Polls until `check` holds for the node as listed (None: not listed), or panics.
async fn wait_for_node(
    cp: &ControlPlaneProcess,
    id: &str,
    what: &str,
    check: impl Fn(Option<&pb::Node>) -> bool,
) -> Option<pb::Node> {
    let started = Instant::now();
    loop {
        let node = listed_node(cp, id).await;
        if check(node.as_ref()) {
            return node;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "node {id} never {what}; last listed as {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn self_registers_survives_a_lapsed_lease_and_deregisters_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dev_control_plane(dir.path()).await;
    let url = cp.url();
    let node = Node::start(
        "self-1",
        &[
            "--register-with",
            &url,
            "--federation",
            "prod",
            "--region",
            "eu-west",
            "--zone",
            "eu-west-a",
            "--ttl-seconds",
            "5",
            "--weight",
            "7",
        ],
    )
    .await;

    let registered = wait_for_node(&cp, "self-1", "registered", |n| n.is_some())
        .await
        .unwrap();
    assert_eq!(
        registered.registration(),
        pb::RegistrationKind::SelfRegistered
    );
    assert_eq!(registered.address, node.node.addr.to_string());
    assert_eq!(registered.services, ["demo.v1.Echo"]);
    assert_eq!(registered.weight, 7);

    // Keep-alives hold the lease past its TTL.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let kept = listed_node(&cp, "self-1").await.expect("still registered");
    assert_ne!(kept.status(), pb::NodeStatus::Lost, "{kept:?}");

    // Paused keep-alives let the lease lapse while the node keeps serving.
    node.control()
        .set_keep_alive(demo::SetKeepAliveRequest { enabled: false })
        .await
        .unwrap();
    wait_for_node(&cp, "self-1", "lost", |n| {
        n.is_some_and(|n| n.status() == pb::NodeStatus::Lost)
    })
    .await;
    node.echo().say(say("still here")).await.unwrap();

    // Resumed, the node finds its lease gone (NOT_FOUND) and registers again.
    node.control()
        .set_keep_alive(demo::SetKeepAliveRequest { enabled: true })
        .await
        .unwrap();
    wait_for_node(&cp, "self-1", "registered again", |n| {
        n.is_some_and(|n| n.status() != pb::NodeStatus::Lost)
    })
    .await;

    let (status, output) = terminate(node).await;
    assert!(status.success(), "{status:?}\n{output}");
    assert!(output.contains("deregistered"), "{output}");
    wait_for_node(&cp, "self-1", "deregistered", |n| n.is_none()).await;
}
