//! A service policy's fallback chain: while `demo.v1.Echo` has no node, its calls go to
//! its fallback service `demo.v1.EchoBackup` — forwarded calls to the same method of it,
//! RouteMessage to a node of it — and the answer says which service served; once Echo has
//! a node again, Echo serves again.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, route_to_echo, served_by, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::ProxyProcess;
use tonic::transport::Channel;

const BACKUP: &str = "demo.v1.EchoBackup";

/// What one forwarded call and one RouteMessage call report: (node, fallback service
/// header) and (node, fallback_service, fallback_depth).
async fn call_both(
    echo: &mut EchoClient<Channel>,
    router: &mut MessageRouterClient<Channel>,
) -> ((String, Option<String>), (String, String, u32)) {
    let reply = echo
        .say(demo::SayRequest {
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .expect("a forwarded call is served");
    let fallback = reply
        .metadata()
        .get("x-meridian-fallback-service")
        .map(|v| v.to_str().unwrap().to_owned());
    let forwarded = (served_by(&reply), fallback);
    let routed = route_to_echo(router)
        .await
        .expect("a RouteMessage call is served");
    let decision = routed.decision.unwrap();
    assert_eq!(routed.reply.unwrap().node_id, decision.target_node);
    (
        forwarded,
        (
            decision.target_node,
            decision.fallback_service,
            decision.fallback_depth,
        ),
    )
}

fn node(id: &str, address: String, service: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        address,
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec![service.into()],
        ..Default::default()
    }
}

/// Node `bk-1` serving `BACKUP` (with `args` besides), registered, and Echo's policy
/// falling back to `BACKUP`.
async fn backup_node(cluster: &Cluster, args: &[&str]) -> DemoNodeProcess {
    let args: Vec<&str> = ["--echo-alias", BACKUP]
        .iter()
        .chain(args)
        .copied()
        .collect();
    let backup = DemoNodeProcess::start("bk-1", &args, &cluster.dir.path().join("bk-1.log")).await;
    cluster
        .register(node("bk-1", backup.addr.to_string(), BACKUP))
        .await;
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            fallback_services: vec![BACKUP.into()],
            ..Default::default()
        })
        .await;
    backup
}

/// Waits until the proxy's table holds Echo's chain and `BACKUP` with its node usable and
/// `ready` true of its entry; panics saying `what` after 20 s.
async fn wait_chain(proxy: &ProxyProcess, what: &str, ready: impl Fn(&serde_json::Value) -> bool) {
    proxy
        .wait_table(Duration::from_secs(20), what, |t| {
            let services = t["services"].as_array().cloned().unwrap_or_default();
            services
                .iter()
                .any(|s| s["name"] == ECHO && s["fallback_services"][0] == BACKUP)
                && services
                    .iter()
                    .any(|s| s["name"] == BACKUP && s["usable_endpoints"] == 1 && ready(s))
        })
        .await;
}

#[tokio::test]
async fn a_fallback_service_serves_while_the_primary_has_no_node_and_stops_when_it_returns() {
    let cluster = Cluster::start().await;
    let primary = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _backup = backup_node(&cluster, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_chain(&proxy, "the chain and its service", |_| true).await;
    wait_usable(&proxy, 1).await;
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);

    // The primary has its node: it serves, no fallback.
    for _ in 0..10 {
        let (forwarded, routed) = call_both(&mut echo, &mut router).await;
        assert_eq!(forwarded, ("eu-1".to_owned(), None));
        assert_eq!(routed, ("eu-1".to_owned(), String::new(), 0));
    }

    // The primary loses its node: the fallback service serves, and says so.
    cluster.deregister("eu-1").await;
    wait_usable(&proxy, 0).await;
    for _ in 0..10 {
        let (forwarded, routed) = call_both(&mut echo, &mut router).await;
        assert_eq!(forwarded, ("bk-1".to_owned(), Some(BACKUP.to_owned())));
        assert_eq!(routed, ("bk-1".to_owned(), BACKUP.to_owned(), 1));
    }

    // The primary's node is back: the primary serves again.
    cluster
        .register(node("eu-1", primary.addr.to_string(), ECHO))
        .await;
    wait_usable(&proxy, 1).await;
    for _ in 0..10 {
        let (forwarded, routed) = call_both(&mut echo, &mut router).await;
        assert_eq!(forwarded, ("eu-1".to_owned(), None));
        assert_eq!(routed, ("eu-1".to_owned(), String::new(), 0));
    }
}

/// While the primary has no node, its calls go on to the fallback under the fallback's
/// own concurrency limit: with its one slot taken, a forwarded call and a RouteMessage are
/// refused with RESOURCE_EXHAUSTED naming the fallback service (they do not queue), and
/// once the slot is free the fallback serves again.
#[tokio::test]
async fn a_fallback_service_takes_calls_only_within_its_own_concurrency_limit() {
    let cluster = Cluster::start().await;
    let _backup = backup_node(&cluster, &["--latency-ms", "800"]).await;
    cluster
        .set_policy(pb::ServicePolicy {
            name: BACKUP.into(),
            federation: "prod".into(),
            concurrency: Some(pb::ConcurrencyPolicy {
                kind: pb::ConcurrencyLimitKind::Static as i32,
                limit: 1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_chain(&proxy, "the chain and its limit", |backup| {
        backup["concurrency"]["limit"] == 1
    })
    .await;
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    let mut router = MessageRouterClient::new(channel(&proxy.url()).await);
    let say = || demo::SayRequest {
        text: "hi".into(),
        ..Default::default()
    };

    // One call holds the fallback's only slot for the node's 800 ms.
    let holder = {
        let mut echo = echo.clone();
        tokio::spawn(async move { echo.say(say()).await })
    };
    let backup_label = format!("service=\"{BACKUP}\"");
    wait_in_flight(
        &proxy,
        &backup_label,
        1.0,
        "the first call takes the fallback's slot",
    )
    .await;

    let refused = echo
        .say(say())
        .await
        .expect_err("over the fallback's limit");
    assert_refused_by_the_fallback(&refused);
    let refused = route_to_echo(&mut router)
        .await
        .expect_err("over the fallback's limit");
    assert_refused_by_the_fallback(&refused);

    let held = holder
        .await
        .unwrap()
        .expect("the call holding the slot is served");
    assert_eq!(served_by(&held), "bk-1");
    // Given back when the answer's body ends, just after the client has it.
    wait_in_flight(
        &proxy,
        &backup_label,
        0.0,
        "the slot is given back with the answer",
    )
    .await;
    let reply = echo.say(say()).await.expect("the slot is free again");
    assert_eq!(served_by(&reply), "bk-1");
    let refusals = proxy
        .metric_with(
            "meridian_proxy_refused_total",
            &["reason=\"fallback_limit\"", &backup_label],
        )
        .await;
    assert_eq!(refusals, 2.0);
}

/// `status` is the refusal of `BACKUP`'s concurrency limit to a call falling back to it.
fn assert_refused_by_the_fallback(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(BACKUP) && status.message().contains("fallback_limit"),
        "{}",
        status.message()
    );
}

/// Polls the proxy's concurrency in-flight gauge of the service labelled `service` until
/// it reads `want`; panics saying `what` after 10 s.
async fn wait_in_flight(proxy: &ProxyProcess, service: &str, want: f64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while proxy
        .metric_with("meridian_proxy_concurrency_in_flight", &[service])
        .await
        != want
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
