//! Every topology write rule through the real Admin API: a bad write is refused with
//! INVALID_ARGUMENT (or the documented code) naming the field, and nothing changes. And
//! the tokens: missing and wrong tokens are UNAUTHENTICATED, a viewer writing is
//! PERMISSION_DENIED, a viewer reading is fine.

use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, VIEWER_TOKEN, authorized,
};
use tonic::Code;
use tonic::transport::Channel;

struct Setup {
    cp: ControlPlaneProcess,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-dev",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    cp.slow_health_checks().await;
    let mut admin = cp.admin().await;
    admin
        .upsert_federation(op(pb::UpsertFederationRequest {
            federation: Some(pb::Federation {
                name: "prod".into(),
                allowed_networks: vec!["127.0.0.0/8".into()],
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
    admin
        .upsert_region(op(pb::UpsertRegionRequest {
            region: Some(region()),
        }))
        .await
        .unwrap();
    admin
        .register_node(op(pb::RegisterNodeRequest {
            node: Some(node()),
            replace: false,
        }))
        .await
        .unwrap();
    admin
        .upsert_service_policy(op(pb::UpsertServicePolicyRequest {
            policy: Some(service()),
        }))
        .await
        .unwrap();
    Setup { cp, _dir: dir }
}

fn op<T>(message: T) -> tonic::Request<T> {
    authorized(message, OPERATOR_TOKEN)
}

fn region() -> pb::Region {
    pb::Region {
        name: "eu-west".into(),
        federation: "prod".into(),
        location: Some(pb::GeoPoint {
            latitude: 53.3,
            longitude: -6.2,
        }),
        zones: vec!["eu-west-a".into(), "eu-west-b".into()],
        ..Default::default()
    }
}

fn node() -> pb::Node {
    pb::Node {
        id: "eu-1".into(),
        address: "127.0.0.1:9001".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        weight: 100,
        ..Default::default()
    }
}

fn service() -> pb::ServicePolicy {
    pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        algorithm: pb::Algorithm::RoundRobin.into(),
        ..Default::default()
    }
}

async fn topology(admin: &mut AdminClient<Channel>) -> pb::Topology {
    let mut t = admin
        .get_topology(op(pb::GetTopologyRequest::default()))
        .await
        .unwrap()
        .into_inner();
    t.revision = 0;
    t
}

/// Runs a write that must be refused with `code` naming `field`, and checks that the
/// topology did not change.
async fn refused<F, Fut, T>(admin: &mut AdminClient<Channel>, code: Code, field: &str, write: F)
where
    F: FnOnce(AdminClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    T: std::fmt::Debug,
{
    let before = topology(admin).await;
    let status = write(admin.clone())
        .await
        .expect_err("the bad write was accepted");
    assert_eq!(status.code(), code, "{field}: {status:?}");
    assert!(
        status.message().contains(field),
        "message does not name {field}: {}",
        status.message()
    );
    assert_eq!(
        topology(admin).await,
        before,
        "a refused write ({field}) changed the topology"
    );
}

#[tokio::test]
async fn every_bad_write_is_refused_naming_the_field_and_changes_nothing() {
    let s = setup().await;
    let mut admin = s.cp.admin().await;

    // Regions.
    let cases: Vec<(&str, pb::Region)> = vec![
        (
            "region.federation",
            pb::Region {
                federation: "nope".into(),
                ..region()
            },
        ),
        (
            "region.location.latitude",
            pb::Region {
                location: Some(pb::GeoPoint {
                    latitude: 95.0,
                    longitude: 0.0,
                }),
                ..region()
            },
        ),
        (
            "region.location.longitude",
            pb::Region {
                location: Some(pb::GeoPoint {
                    latitude: 0.0,
                    longitude: 181.0,
                }),
                ..region()
            },
        ),
        (
            "region.location",
            pb::Region {
                location: None,
                ..region()
            },
        ),
        (
            "region.zones",
            pb::Region {
                zones: vec![],
                ..region()
            },
        ),
        (
            "region.name",
            pb::Region {
                name: "Bad Name".into(),
                ..region()
            },
        ),
    ];
    for (field, bad) in cases {
        refused(
            &mut admin,
            Code::InvalidArgument,
            field,
            |mut a| async move {
                a.upsert_region(op(pb::UpsertRegionRequest { region: Some(bad) }))
                    .await
            },
        )
        .await;
    }

    // Nodes.
    let cases: Vec<(&str, pb::Node)> = vec![
        (
            "node.region",
            pb::Node {
                id: "x1".into(),
                region: "mars".into(),
                ..node()
            },
        ),
        (
            "node.federation",
            pb::Node {
                id: "x2".into(),
                federation: "nope".into(),
                ..node()
            },
        ),
        (
            "node.zone",
            pb::Node {
                id: "x3".into(),
                zone: "eu-west-z".into(),
                ..node()
            },
        ),
        (
            "node.address",
            pb::Node {
                id: "x4".into(),
                address: "127.0.0.1".into(),
                ..node()
            },
        ),
        (
            "node.address",
            pb::Node {
                id: "x5".into(),
                address: "host:99999".into(),
                ..node()
            },
        ),
        (
            "node.weight",
            pb::Node {
                id: "x6".into(),
                weight: 10_001,
                ..node()
            },
        ),
        (
            "node.capacity",
            pb::Node {
                id: "x7".into(),
                capacity: 1_000_001,
                ..node()
            },
        ),
        (
            "node.services",
            pb::Node {
                id: "x8".into(),
                services: vec![],
                ..node()
            },
        ),
        (
            "node.id",
            pb::Node {
                id: "Bad!".into(),
                ..node()
            },
        ),
        (
            "node.status",
            pb::Node {
                id: "x9".into(),
                status: 42,
                ..node()
            },
        ),
        // The same id with a different spec.
        (
            "node.id",
            pb::Node {
                address: "127.0.0.1:9999".into(),
                ..node()
            },
        ),
    ];
    for (field, bad) in cases {
        refused(
            &mut admin,
            Code::InvalidArgument,
            field,
            |mut a| async move {
                a.register_node(op(pb::RegisterNodeRequest {
                    node: Some(bad),
                    replace: false,
                }))
                .await
            },
        )
        .await;
    }

    // Service policies.
    let mut bad_tier = service();
    bad_tier.failover = Some(pb::FailoverPolicy {
        tiers: vec![pb::FailoverTier {
            name: "backup".into(),
            regions: vec!["mars".into()],
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut bad_retry = service();
    bad_retry.retry = Some(pb::RetryPolicy {
        max_attempts: 50,
        ..Default::default()
    });
    let cases: Vec<(&str, pb::ServicePolicy)> = vec![
        (
            "service_policy.algorithm",
            pb::ServicePolicy {
                algorithm: 99,
                ..service()
            },
        ),
        (
            "service_policy.federation",
            pb::ServicePolicy {
                federation: "nope".into(),
                ..service()
            },
        ),
        (
            "service_policy.name",
            pb::ServicePolicy {
                name: "not a service".into(),
                ..service()
            },
        ),
        ("service_policy.failover.tiers[0].regions[0]", bad_tier),
        ("service_policy.retry.max_attempts", bad_retry),
    ];
    for (field, bad) in cases {
        refused(
            &mut admin,
            Code::InvalidArgument,
            field,
            |mut a| async move {
                a.upsert_service_policy(op(pb::UpsertServicePolicyRequest { policy: Some(bad) }))
                    .await
            },
        )
        .await;
    }

    // Federations, and deletes that would orphan things.
    refused(
        &mut admin,
        Code::InvalidArgument,
        "federation.name",
        |mut a| async move {
            let federation = pb::Federation {
                name: "-bad".into(),
                ..Default::default()
            };
            a.upsert_federation(op(pb::UpsertFederationRequest {
                federation: Some(federation),
            }))
            .await
        },
    )
    .await;
    refused(
        &mut admin,
        Code::FailedPrecondition,
        "eu-1",
        |mut a| async move {
            a.delete_region(op(pb::DeleteRegionRequest {
                name: "eu-west".into(),
            }))
            .await
        },
    )
    .await;
    refused(
        &mut admin,
        Code::FailedPrecondition,
        "eu-1",
        |mut a| async move {
            let shrunk = pb::Region {
                zones: vec!["eu-west-b".into()],
                ..region()
            };
            a.upsert_region(op(pb::UpsertRegionRequest {
                region: Some(shrunk),
            }))
            .await
        },
    )
    .await;
    refused(
        &mut admin,
        Code::FailedPrecondition,
        "eu-west",
        |mut a| async move {
            a.delete_federation(op(pb::DeleteFederationRequest {
                name: "prod".into(),
            }))
            .await
        },
    )
    .await;
    refused(&mut admin, Code::NotFound, "ghost", |mut a| async move {
        a.drain_node(op(pb::DrainNodeRequest {
            id: "ghost".into(),
            reason: String::new(),
        }))
        .await
    })
    .await;
}

#[tokio::test]
async fn the_same_spec_again_is_accepted_and_replace_overwrites() {
    let s = setup().await;
    let mut admin = s.cp.admin().await;
    let before = topology(&mut admin).await;
    admin
        .register_node(op(pb::RegisterNodeRequest {
            node: Some(node()),
            replace: false,
        }))
        .await
        .expect("re-registering the same spec is a no-op");
    assert_eq!(topology(&mut admin).await, before);
    let moved = pb::Node {
        address: "127.0.0.1:9999".into(),
        ..node()
    };
    admin
        .register_node(op(pb::RegisterNodeRequest {
            node: Some(moved),
            replace: true,
        }))
        .await
        .expect("replace overwrites");
    let after = topology(&mut admin).await;
    assert_eq!(after.nodes[0].address, "127.0.0.1:9999");
}

#[tokio::test]
async fn tokens_are_required_and_roles_enforced() {
    let s = setup().await;
    let mut admin = s.cp.admin().await;
    let list = || pb::ListNodesRequest::default();

    let missing = admin
        .list_nodes(tonic::Request::new(list()))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    let wrong = admin
        .list_nodes(authorized(list(), "not-a-real-token-000000"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");

    let read = admin
        .list_nodes(authorized(list(), VIEWER_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.nodes.len(), 1, "a viewer may read");

    let before = topology(&mut admin).await;
    let denied = admin
        .drain_node(authorized(
            pb::DrainNodeRequest {
                id: "eu-1".into(),
                reason: "viewer tries".into(),
            },
            VIEWER_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = admin
        .update_config(authorized(pb::UpdateConfigRequest::default(), VIEWER_TOKEN))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        topology(&mut admin).await,
        before,
        "a refused call changed something"
    );
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_and_the_old_one_kept() {
    let s = setup().await;
    let mut admin = s.cp.admin().await;
    let good = pb::DynamicConfig {
        debounce_quiet_ms: 50,
        default_health_check: Some(pb::HealthCheckPolicy::default()),
        ..Default::default()
    };
    let applied = admin
        .update_config(op(pb::UpdateConfigRequest {
            config: Some(good.clone()),
            dry_run: false,
            expected_revision: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(applied.applied);

    let bad = pb::DynamicConfig {
        debounce_quiet_ms: 50,
        default_lease_ttl_seconds: 1,
        ..Default::default()
    };
    let validation = admin
        .validate_config(op(pb::ValidateConfigRequest {
            config: Some(bad.clone()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!validation.valid);
    assert_eq!(validation.errors[0].field, "default_lease_ttl_seconds");
    let refused = admin
        .update_config(op(pb::UpdateConfigRequest {
            config: Some(bad),
            dry_run: false,
            expected_revision: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("default_lease_ttl_seconds"),
        "{refused:?}"
    );

    let dry = pb::DynamicConfig {
        debounce_quiet_ms: 70,
        ..Default::default()
    };
    let dry = admin
        .update_config(op(pb::UpdateConfigRequest {
            config: Some(dry),
            dry_run: true,
            expected_revision: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!dry.applied);

    let stale = admin
        .update_config(op(pb::UpdateConfigRequest {
            config: Some(good.clone()),
            dry_run: false,
            expected_revision: applied.revision - 1,
        }))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);

    let current = admin
        .get_config(op(pb::GetConfigRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        current.config,
        Some(good),
        "the refused, dry-run or stale updates changed the configuration"
    );
    assert_eq!(current.revision, applied.revision);
}
