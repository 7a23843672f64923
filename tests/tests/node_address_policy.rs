//! Node addresses and limits through the real Admin API on real etcd: a loopback address
//! in a federation that does not allow loopback is refused with INVALID_ARGUMENT and
//! nothing is written; listing 127.0.0.0/8 in the federation's allowed_networks lets the
//! same node in; a bad CIDR is refused naming its index; and a write over a limit set in
//! the dynamic configuration is refused naming the limit's config key.

use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized,
};
use tonic::Code;
use tonic::transport::Channel;

fn op<T>(message: T) -> tonic::Request<T> {
    authorized(message, OPERATOR_TOKEN)
}

async fn topology(admin: &mut AdminClient<Channel>) -> pb::Topology {
    let mut t = admin
        .get_topology(op(pb::GetTopologyRequest::default()))
        .await
        .expect("reading the topology")
        .into_inner();
    t.revision = 0;
    t
}

/// The topology once `settled` holds (this replica has seen the writes made so far).
async fn topology_where(
    admin: &mut AdminClient<Channel>,
    settled: impl Fn(&pb::Topology) -> bool,
) -> pb::Topology {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let t = topology(admin).await;
        if settled(&t) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the topology never settled: {t:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn set_federation(
    admin: &mut AdminClient<Channel>,
    allowed_networks: &[&str],
) -> Result<pb::Federation, tonic::Status> {
    let federation = pb::Federation {
        name: "prod".into(),
        allowed_networks: allowed_networks.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    };
    admin
        .upsert_federation(op(pb::UpsertFederationRequest {
            federation: Some(federation),
        }))
        .await
        .map(tonic::Response::into_inner)
}

fn node(labels: usize) -> pb::Node {
    pb::Node {
        id: "eu-1".into(),
        address: "127.0.0.1:9001".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        labels: (0..labels).map(|i| (format!("k{i}"), "v".into())).collect(),
        ..Default::default()
    }
}

async fn register(
    admin: &mut AdminClient<Channel>,
    node: pb::Node,
) -> Result<pb::Node, tonic::Status> {
    admin
        .register_node(op(pb::RegisterNodeRequest {
            node: Some(node),
            replace: true,
        }))
        .await
        .map(tonic::Response::into_inner)
}

#[track_caller]
fn invalid(result: Result<impl std::fmt::Debug, tonic::Status>, needles: &[&str]) {
    let status = result.expect_err("the write was accepted");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{:?} does not mention {needle:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn node_addresses_follow_the_federation_networks_and_writes_follow_the_limits() {
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix: "/meridian/",
        replica: "cp-a",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    cp.slow_health_checks().await;
    let mut admin = cp.admin().await;

    // A federation without allowed networks, and a region in it.
    set_federation(&mut admin, &[])
        .await
        .expect("creating prod");
    admin
        .upsert_region(op(pb::UpsertRegionRequest {
            region: Some(pb::Region {
                name: "eu-west".into(),
                federation: "prod".into(),
                location: Some(pb::GeoPoint {
                    latitude: 53.3,
                    longitude: -6.2,
                }),
                zones: vec!["eu-west-a".into()],
                ..Default::default()
            }),
        }))
        .await
        .expect("creating eu-west");

    // Reads come from the replica's view of the store, which follows writes closely.
    let before = topology_where(&mut admin, |t| t.regions.len() == 1).await;

    // Loopback is refused, and nothing is written.
    invalid(
        register(&mut admin, node(0)).await,
        &["node.address", "loopback", "allowed_networks"],
    );
    for address in ["169.254.169.254:80", "[::1]:9001", "0.0.0.0:9001"] {
        let n = pb::Node {
            address: address.into(),
            ..node(0)
        };
        invalid(register(&mut admin, n).await, &["node.address"]);
    }
    assert_eq!(
        topology(&mut admin).await,
        before,
        "a refused node was written"
    );
    assert!(before.nodes.is_empty());

    // A bad CIDR is refused naming its index, and the federation stays as it was.
    invalid(
        set_federation(&mut admin, &["127.0.0.0/8", "127.0.0.1/8"]).await,
        &["federation.allowed_networks[1]"],
    );
    assert_eq!(topology(&mut admin).await, before);

    // Allowing loopback lets the node in.
    set_federation(&mut admin, &["127.0.0.0/8"])
        .await
        .expect("allowing loopback");
    register(&mut admin, node(2))
        .await
        .expect("registering on loopback");
    topology_where(&mut admin, |t| t.nodes.len() == 1).await;

    // A limit set in the dynamic configuration applies to the next write.
    let config = pb::DynamicConfig {
        max_labels: 2,
        default_health_check: Some(pb::HealthCheckPolicy {
            interval_ms: 600_000,
            ..Default::default()
        }),
        ..Default::default()
    };
    admin
        .update_config(op(pb::UpdateConfigRequest {
            config: Some(config),
            dry_run: false,
            expected_revision: 0,
        }))
        .await
        .expect("setting max_labels");
    let before = topology(&mut admin).await;
    invalid(
        register(&mut admin, node(3)).await,
        &[
            "node.labels",
            "3 labels exceed the limit of 2",
            "config max_labels",
        ],
    );
    assert_eq!(
        topology(&mut admin).await,
        before,
        "a refused node was written"
    );
}
