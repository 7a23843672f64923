//! Every RPC of `Admin`, `NodeRegistry` and `RoutingDiscovery`, read from the protocol's
//! own descriptor (so an RPC added later is covered), called on a real control plane on
//! real etcd with no credential, a credential of the wrong role, a credential scoped to
//! another federation, and the right credential: the refusals carry the right status,
//! disclose nothing and leave the store exactly as it was; the right credential gets past
//! authorization.

use std::collections::BTreeMap;
use std::time::Duration;

use http::uri::PathAndQuery;
use meridian_proto::v1 as pb;
use meridian_proto::v1::node_registry_client::NodeRegistryClient;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, NODE_TOKEN, OPERATOR_TOKEN,
    OTHER_FEDERATION_NODE_TOKEN, OTHER_FEDERATION_PROXY_TOKEN, PROXY_TOKEN, VIEWER_TOKEN,
    authorized, bearer, channel,
};
use meridian_tests::etcd::EtcdCluster;
use prost::Message;
use tonic::Code;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

const PREFIX: &str = "/auth-test/";
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One RPC as the descriptor declares it.
#[derive(Debug, Clone)]
struct Rpc {
    service: String,
    method: String,
    client_streaming: bool,
    server_streaming: bool,
}

impl Rpc {
    fn path(&self) -> String {
        format!("/meridian.v1.{}/{}", self.service, self.method)
    }

    fn is_admin_read(&self) -> bool {
        self.service == "Admin"
            && ["Get", "List", "Watch", "Validate", "Recommend"]
                .iter()
                .any(|p| self.method.starts_with(p))
    }
}

/// Every RPC of the three control-plane services.
fn control_plane_rpcs() -> Vec<Rpc> {
    let set = prost_types::FileDescriptorSet::decode(meridian_proto::FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let mut rpcs = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "meridian.v1") {
        for service in &file.service {
            if !["Admin", "NodeRegistry", "RoutingDiscovery"].contains(&service.name()) {
                continue;
            }
            for method in &service.method {
                rpcs.push(Rpc {
                    service: service.name().to_owned(),
                    method: method.name().to_owned(),
                    client_streaming: method.client_streaming(),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    assert!(
        rpcs.len() > 30,
        "expected every Admin, NodeRegistry and RoutingDiscovery RPC, found {}",
        rpcs.len()
    );
    rpcs
}

/// Calls `rpc` with an empty request message (`()` encodes as an empty proto message,
/// which every request type decodes as its default) and `token`, returning the status
/// code of the call (OK when the call was admitted and answered).
async fn call(channel: &Channel, rpc: &Rpc, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = PathAndQuery::try_from(rpc.path()).expect("valid path");
    let codec = ProstCodec::<(), ()>::default();
    let outcome = match (rpc.client_streaming, rpc.server_streaming) {
        (false, false) => grpc
            .unary(with_token((), token), path, codec)
            .await
            .map(drop),
        (false, true) => grpc
            .server_streaming(with_token((), token), path, codec)
            .await
            .map(drop),
        (true, _) => grpc
            .streaming(with_token(tokio_stream::empty::<()>(), token), path, codec)
            .await
            .map(drop),
    };
    match outcome {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// `message` with `token` (if any) and a deadline.
fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
    }
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Every key under the prefix with its mod revision, minus what the control plane itself
/// writes on its own while the test runs (its proxy records and events cannot come from
/// a refused call anyway, and the test checks them separately).
async fn store_contents(etcd: &EtcdCluster) -> BTreeMap<String, i64> {
    let mut client = etcd.client().await;
    let response = client
        .get(PREFIX, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("reading the store");
    response
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

struct Setup {
    etcd: EtcdCluster,
    cp: ControlPlaneProcess,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix: PREFIX,
        replica: "cp-auth",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    Setup {
        etcd,
        cp,
        _dir: dir,
    }
}

/// A token whose role is not the one `rpc` needs.
fn wrong_role_token(rpc: &Rpc) -> &'static str {
    match rpc.service.as_str() {
        "Admin" if rpc.is_admin_read() => PROXY_TOKEN,
        "Admin" => VIEWER_TOKEN,
        "NodeRegistry" => PROXY_TOKEN,
        _ => NODE_TOKEN,
    }
}

/// The token of the role `rpc` needs.
fn right_token(rpc: &Rpc) -> &'static str {
    match rpc.service.as_str() {
        "Admin" if rpc.is_admin_read() => VIEWER_TOKEN,
        "Admin" => OPERATOR_TOKEN,
        "NodeRegistry" => NODE_TOKEN,
        _ => PROXY_TOKEN,
    }
}

#[tokio::test]
async fn every_rpc_refuses_missing_and_wrong_credentials_and_changes_nothing() {
    let s = setup().await;
    let channel = channel(&s.cp.url()).await;
    let before = store_contents(&s.etcd).await;
    let mut table = Vec::new();
    for rpc in control_plane_rpcs() {
        let none = call(&channel, &rpc, None).await;
        let garbage = call(&channel, &rpc, Some("not-a-token-of-this-plane")).await;
        let wrong_role = call(&channel, &rpc, Some(wrong_role_token(&rpc))).await;
        table.push(format!(
            "{:<40} none={none:?} unknown={garbage:?} wrong-role={wrong_role:?}",
            rpc.path()
        ));
        assert_eq!(
            none,
            Code::Unauthenticated,
            "{} without a credential",
            rpc.path()
        );
        assert_eq!(
            garbage,
            Code::Unauthenticated,
            "{} with an unknown token",
            rpc.path()
        );
        assert_eq!(
            wrong_role,
            Code::PermissionDenied,
            "{} with a credential of the wrong role",
            rpc.path()
        );
    }
    println!("{}", table.join("\n"));
    assert_eq!(
        store_contents(&s.etcd).await,
        before,
        "a refused call changed the store"
    );
}

#[tokio::test]
async fn every_rpc_admits_the_credential_of_its_role() {
    let s = setup().await;
    let channel = channel(&s.cp.url()).await;
    for rpc in control_plane_rpcs() {
        let code = call(&channel, &rpc, Some(right_token(&rpc))).await;
        println!("{:<40} right credential: {code:?}", rpc.path());
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{} refused the credential of its role: {code:?}",
            rpc.path()
        );
        // Operators keep every right: each RPC admits an operator too.
        let code = call(&channel, &rpc, Some(OPERATOR_TOKEN)).await;
        assert!(
            !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
            "{} refused an operator: {code:?}",
            rpc.path()
        );
    }
}

fn prod_node(id: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        address: "127.0.0.1:9301".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        ..Default::default()
    }
}

fn hello(federation: &str) -> pb::StreamRoutesRequest {
    pb::StreamRoutesRequest {
        message: Some(pb::stream_routes_request::Message::Hello(pb::Hello {
            proxy_id: "proxy-x".into(),
            federation: federation.into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn credentials_scoped_to_another_federation_are_refused_and_learn_nothing() {
    let s = setup().await;
    let url = s.cp.url();
    // A node in `prod`, registered by the right credential, for the lease calls below.
    let mut own = NodeRegistryClient::with_interceptor(channel(&url).await, bearer(NODE_TOKEN));
    let lease = own
        .register(pb::RegisterRequest {
            node: Some(prod_node("prod-1")),
            ttl_seconds: 30,
        })
        .await
        .expect("the node credential registers in prod")
        .into_inner()
        .lease_id;
    let before = store_contents(&s.etcd).await;

    let mut nodes = NodeRegistryClient::with_interceptor(
        channel(&url).await,
        bearer(OTHER_FEDERATION_NODE_TOKEN),
    );
    let register = nodes
        .register(pb::RegisterRequest {
            node: Some(prod_node("intruder")),
            ttl_seconds: 30,
        })
        .await
        .unwrap_err();
    assert_eq!(register.code(), Code::PermissionDenied, "{register:?}");
    let keep_alive = nodes
        .keep_alive(tokio_stream::iter([pb::KeepAliveRequest {
            node_id: "prod-1".into(),
            lease_id: lease,
        }]))
        .await;
    let keep_alive = match keep_alive {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("a keep-alive of another federation's node is refused"),
    };
    assert_eq!(keep_alive.code(), Code::PermissionDenied, "{keep_alive:?}");
    let deregister = nodes
        .deregister(pb::DeregisterRequest {
            node_id: "prod-1".into(),
            lease_id: lease,
        })
        .await
        .unwrap_err();
    assert_eq!(deregister.code(), Code::PermissionDenied, "{deregister:?}");

    let mut proxies = RoutingDiscoveryClient::with_interceptor(
        channel(&url).await,
        bearer(OTHER_FEDERATION_PROXY_TOKEN),
    );
    // Refused the same way whether the federation exists or not: nothing is disclosed.
    for federation in ["prod", "no-such-federation"] {
        let status = match proxies
            .stream_routes(tokio_stream::iter([hello(federation)]))
            .await
        {
            Err(status) => status,
            Ok(response) => response
                .into_inner()
                .message()
                .await
                .expect_err("a Hello for another federation is refused"),
        };
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{federation}: {status:?}"
        );
        assert!(
            !status.message().contains("unknown"),
            "the refusal tells whether {federation} exists: {status:?}"
        );
    }
    let report = pb::LoadReport {
        proxy_id: "proxy-x".into(),
        federation: "prod".into(),
        ..Default::default()
    };
    let status = match proxies.report_load(tokio_stream::iter([report])).await {
        Err(status) => status,
        Ok(response) => response
            .into_inner()
            .message()
            .await
            .expect_err("a load report for another federation is refused"),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    assert_eq!(
        store_contents(&s.etcd).await,
        before,
        "a refused call changed the store"
    );
    // The right credential still sees its node.
    let listed =
        s.cp.admin()
            .await
            .list_nodes(authorized(pb::ListNodesRequest::default(), VIEWER_TOKEN))
            .await
            .unwrap()
            .into_inner();
    assert!(listed.nodes.iter().any(|n| n.id == "prod-1"));
    assert!(!listed.nodes.iter().any(|n| n.id == "intruder"));
}
