//! The routing-table stream protocol, on a dev-mode control plane: a NACKed version is
//! never sent again and the NACK shows in `ListProxies`; a proxy reconnecting with the
//! version it holds gets nothing when current, a delta when its version is recent, and a
//! snapshot when the version is unknown; a Hello for an unknown federation is refused.

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized, channel,
};
use meridian_tests::subscriber::Subscriber;

const DEADLINE: Duration = Duration::from_secs(20);

async fn dev_control_plane(dir: &std::path::Path) -> ControlPlaneProcess {
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-dev",
        election_ttl_seconds: 5,
        dir,
    })
    .await;
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    cp
}

async fn register(cp: &ControlPlaneProcess, id: &str) {
    let node = pb::Node {
        id: id.into(),
        address: "127.0.0.1:9001".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        ..Default::default()
    };
    cp.admin()
        .await
        .register_node(authorized(
            pb::RegisterNodeRequest {
                node: Some(node),
                replace: false,
            },
            OPERATOR_TOKEN,
        ))
        .await
        .unwrap();
}

async fn proxies(cp: &ControlPlaneProcess) -> Vec<pb::ProxyStatus> {
    let request = authorized(pb::ListProxiesRequest {}, OPERATOR_TOKEN);
    cp.admin()
        .await
        .list_proxies(request)
        .await
        .unwrap()
        .into_inner()
        .proxies
}

#[tokio::test]
async fn a_nacked_version_is_never_resent_and_the_nack_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dev_control_plane(dir.path()).await;
    let first = Subscriber::start(&cp.url(), "probe", "prod", 0).await;
    let current = first
        .wait_until(DEADLINE, "snapshot", |v| !v.received.is_empty())
        .await
        .version;
    drop(first);

    // A proxy that refuses the snapshot it is offered.
    let proxy = Subscriber::start_with(&cp.url(), "proxy-nack", "prod", 0, Some(current)).await;
    proxy
        .wait_until(DEADLINE, "the refused snapshot", |v| !v.received.is_empty())
        .await;
    let listed = loop {
        let listed = proxies(&cp).await;
        if listed
            .iter()
            .any(|p| p.proxy_id == "proxy-nack" && p.last_nack.is_some())
        {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let nack = listed
        .iter()
        .find(|p| p.proxy_id == "proxy-nack")
        .unwrap()
        .last_nack
        .clone()
        .unwrap();
    assert_eq!(nack.version, current);
    assert_eq!(nack.error, "refused by the test");

    // A new change produces a newer version, which is sent; the refused one never is.
    register(&cp, "eu-1").await;
    let view = proxy
        .wait_until(DEADLINE, "the next version", |v| v.received.len() >= 2)
        .await;
    let versions: Vec<u64> = view.received.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions.iter().filter(|v| **v == current).count(),
        1,
        "version {current} was re-sent: {versions:?}"
    );
    assert!(versions[1] > current);
    // The proxy kept nothing from the refused update, so the next one must be a snapshot
    // (a delta would have to apply on the version it refused).
    assert_eq!(view.received[1].1, "snapshot", "{:?}", view.received);
}

#[tokio::test]
async fn reconnecting_with_a_version_gets_nothing_a_delta_or_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dev_control_plane(dir.path()).await;
    register(&cp, "eu-1").await;
    let proxy = Subscriber::start(&cp.url(), "proxy-eu", "prod", 0).await;
    let held = proxy
        .wait_until(DEADLINE, "eu-1", |v| v.nodes.contains_key("eu-1"))
        .await
        .version;
    drop(proxy);

    // Current version: nothing is sent. (A probe change afterwards proves the stream is
    // alive and that the first thing it receives is that change, as a delta.)
    let current = Subscriber::start(&cp.url(), "proxy-eu", "prod", held).await;
    register(&cp, "eu-2").await;
    let view = current
        .wait_until(DEADLINE, "eu-2", |v| {
            v.nodes.contains_key("eu-2") || !v.received.is_empty()
        })
        .await;
    assert_eq!(
        view.received.len(),
        1,
        "a current proxy was sent more than the change: {:?}",
        view.received
    );
    assert_eq!(view.received[0].1, "delta", "{:?}", view.received);
    assert!(view.nodes.contains_key("eu-2"));
    drop(current);

    // An older but recent version: a delta on top of it.
    let behind = Subscriber::start(&cp.url(), "proxy-eu", "prod", held).await;
    let view = behind
        .wait_until(DEADLINE, "catch-up", |v| !v.received.is_empty())
        .await;
    assert_eq!(view.received[0].1, "delta", "{:?}", view.received);
    drop(behind);

    // A version this control plane never published: a snapshot.
    let stranger = Subscriber::start(&cp.url(), "proxy-eu", "prod", 999_999).await;
    let view = stranger
        .wait_until(DEADLINE, "snapshot", |v| !v.received.is_empty())
        .await;
    assert_eq!(view.received[0].1, "snapshot", "{:?}", view.received);
    assert!(view.nodes.contains_key("eu-1") && view.nodes.contains_key("eu-2"));
}

#[tokio::test]
async fn a_hello_for_an_unknown_federation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cp = dev_control_plane(dir.path()).await;
    let mut client = RoutingDiscoveryClient::with_interceptor(
        channel(&cp.url()).await,
        meridian_tests::control::bearer(meridian_tests::control::PROXY_TOKEN),
    );
    let hello = pb::StreamRoutesRequest {
        message: Some(pb::stream_routes_request::Message::Hello(pb::Hello {
            proxy_id: "proxy-x".into(),
            federation: "atlantis".into(),
            ..Default::default()
        })),
    };
    let status = client
        .stream_routes(tokio_stream::iter([hello]))
        .await
        .expect_err("an unknown federation must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("atlantis"), "{status:?}");
}
