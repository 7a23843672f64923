//! A service policy's fallback chain: while `demo.v1.Echo` has no node, its calls go to
//! its fallback service `demo.v1.EchoBackup` — forwarded calls to the same method of it,
//! RouteMessage to a node of it — and the answer says which service served; once Echo has
//! a node again, Echo serves again.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, served_by, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::demo_node::process::DemoNodeProcess;
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
    let message = pb::FederationMessage {
        id: "m".into(),
        target_service: ECHO.into(),
        ..Default::default()
    };
    let routed = router
        .route_message(pb::RouteMessageRequest {
            message: Some(message),
        })
        .await
        .expect("a RouteMessage call is served")
        .into_inner();
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

#[tokio::test]
async fn a_fallback_service_serves_while_the_primary_has_no_node_and_stops_when_it_returns() {
    let cluster = Cluster::start().await;
    let primary = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let backup = DemoNodeProcess::start(
        "bk-1",
        &["--echo-alias", BACKUP],
        &cluster.dir.path().join("bk-1.log"),
    )
    .await;
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
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    proxy
        .wait_table(Duration::from_secs(20), "the chain and its service", |t| {
            let services = t["services"].as_array().cloned().unwrap_or_default();
            services
                .iter()
                .any(|s| s["name"] == ECHO && s["fallback_services"][0] == BACKUP)
                && services
                    .iter()
                    .any(|s| s["name"] == BACKUP && s["usable_endpoints"] == 1)
        })
        .await;
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
