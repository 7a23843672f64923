//! A self-registered node's lease belongs to the credential that registered it, on a real
//! control plane on real etcd: another node credential cannot keep it alive, deregister
//! the node or take it over by registering the same spec; the owner cannot reach a lease
//! that is not its node's (the leader's election lease among them); a node an operator
//! registered survives a `Register` of its exact spec and a `Deregister` from a node
//! credential.

use meridian_proto::v1 as pb;
use meridian_proto::v1::node_registry_client::NodeRegistryClient;
use meridian_shared::credentials::BearerAuth;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, NODE_TOKEN, OPERATOR_TOKEN, SECOND_NODE_TOKEN,
    authorized, bearer, channel,
};
use meridian_tests::etcd::EtcdCluster;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const PREFIX: &str = "/lease-test/";

type Registry = NodeRegistryClient<InterceptedService<Channel, BearerAuth>>;

async fn registry(cp: &ControlPlaneProcess, token: &str) -> Registry {
    NodeRegistryClient::with_interceptor(channel(&cp.url()).await, bearer(token))
}

fn node(id: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        address: "127.0.0.1:9401".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        ..Default::default()
    }
}

/// The status of one keep-alive of `lease` for node `id`.
async fn keep_alive(registry: &mut Registry, id: &str, lease: i64) -> Result<u32, tonic::Status> {
    let request = pb::KeepAliveRequest {
        node_id: id.into(),
        lease_id: lease,
    };
    let mut answers = registry
        .keep_alive(tokio_stream::iter([request]))
        .await?
        .into_inner();
    match answers.message().await? {
        Some(answer) => Ok(answer.ttl_seconds),
        None => Err(tonic::Status::unknown("the stream ended without an answer")),
    }
}

async fn listed(cp: &ControlPlaneProcess, id: &str) -> Option<pb::Node> {
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

/// The lease the leader's election key is attached to.
async fn election_lease(etcd: &EtcdCluster) -> i64 {
    let mut client = etcd.client().await;
    let response = client
        .get(format!("{PREFIX}v1/leader"), None)
        .await
        .expect("reading the leader key");
    let kv = response.kvs().first().expect("a leader was elected");
    assert_ne!(kv.lease(), 0, "the election key is attached to a lease");
    kv.lease()
}

#[tokio::test]
async fn only_the_registering_credential_holds_a_nodes_lease() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix: PREFIX,
        replica: "cp-lease",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;

    let mut owner = registry(&cp, NODE_TOKEN).await;
    let mut other = registry(&cp, SECOND_NODE_TOKEN).await;
    let lease = owner
        .register(pb::RegisterRequest {
            node: Some(node("self-1")),
            ttl_seconds: 30,
        })
        .await
        .expect("registering")
        .into_inner()
        .lease_id;
    assert!(keep_alive(&mut owner, "self-1", lease).await.is_ok());

    // Another credential: no keep-alive, no deregistration, no takeover by re-registering.
    let refused = keep_alive(&mut other, "self-1", lease).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = other
        .deregister(pb::DeregisterRequest {
            node_id: "self-1".into(),
            lease_id: lease,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = other
        .register(pb::RegisterRequest {
            node: Some(node("self-1")),
            ttl_seconds: 30,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        keep_alive(&mut owner, "self-1", lease).await.is_ok(),
        "the owner's lease still works after the refused takeover"
    );

    // The owner cannot reach a lease that is not its node's: a made-up one, or the
    // leader's election lease.
    let refused = keep_alive(&mut owner, "self-1", lease + 1)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let election = election_lease(&etcd).await;
    let refused = keep_alive(&mut owner, "self-1", election)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // An operator-registered node survives a node credential's Register of its exact
    // spec and its Deregister.
    cp.admin()
        .await
        .register_node(authorized(
            pb::RegisterNodeRequest {
                node: Some(node("op-1")),
                replace: false,
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("operator registration");
    let refused = owner
        .register(pb::RegisterRequest {
            node: Some(node("op-1")),
            ttl_seconds: 30,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = owner
        .deregister(pb::DeregisterRequest {
            node_id: "op-1".into(),
            lease_id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let op = listed(&cp, "op-1").await.expect("op-1 is still registered");
    assert_eq!(
        op.registration(),
        pb::RegistrationKind::Operator,
        "op-1 was not taken over: {op:?}"
    );

    // The owner deregisters its own node.
    owner
        .deregister(pb::DeregisterRequest {
            node_id: "self-1".into(),
            lease_id: lease,
        })
        .await
        .expect("the owner deregisters");
    assert!(listed(&cp, "self-1").await.is_none());
}
