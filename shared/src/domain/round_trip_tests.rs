//! Every domain type survives domain → proto → domain and domain → JSON → domain
//! unchanged. Samples set every field to a non-default value, so a conversion that drops
//! or mixes up a field fails here.

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_proto::v1 as pb;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn instant(nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(1_790_000_000, nanos)
}

fn federation() -> Federation {
    Federation {
        name: "prod".into(),
        description: "production".into(),
        labels: labels(&[("team", "core"), ("tier", "1")]),
        allowed_networks: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
    }
}

fn region() -> Region {
    Region {
        name: "eu-west".into(),
        federation: "prod".into(),
        location: GeoPoint {
            latitude: 53.35,
            longitude: -6.26,
        },
        zones: vec!["eu-west-a".into(), "eu-west-b".into()],
        labels: labels(&[("cloud", "x")]),
    }
}

fn node(status: NodeStatus, registration: RegistrationKind) -> Node {
    Node {
        id: "eu-west-a-1".into(),
        address: "10.0.0.1:9000".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into(), "orders.v1.Orders".into()],
        weight: 250,
        capacity: 1000,
        labels: labels(&[("hw", "arm64")]),
        status,
        status_reason: "3 failed checks".into(),
        status_since: Some(instant(123_456_789)),
        registration,
    }
}

fn service(algorithm: Algorithm) -> ServicePolicy {
    ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        algorithm,
        failover: FailoverPolicy {
            tiers: vec![FailoverTier {
                name: "primary".into(),
                regions: vec!["eu-west".into()],
                zones: vec!["eu-west-a".into()],
                nodes: vec!["eu-west-a-1".into()],
            }],
            overprovisioning_percent: 150,
            panic_threshold_percent: 40,
            auto_recovery: true,
            slow_start_ms: 5_000,
        },
        retry: RetryPolicy {
            max_attempts: 4,
            idempotent_methods: vec!["/demo.v1.Echo/Say".into()],
            budget_percent: 25,
            budget_min_per_second: 7,
            backoff_base_ms: 30,
            backoff_max_ms: 300,
        },
        timeout: TimeoutPolicy {
            default_timeout_ms: 900,
            max_timeout_ms: 9_000,
        },
        outlier: OutlierPolicy {
            consecutive_failures: 6,
            failure_rate_percent: 60,
            min_requests: 21,
            window_ms: 11_000,
            base_ejection_ms: 1_100,
            max_ejection_ms: 31_000,
            max_ejection_percent: 33,
        },
        health_check: HealthCheckPolicy {
            grpc_service: "demo.v1.Echo".into(),
            tcp_only: true,
            interval_ms: 2_500,
            timeout_ms: 800,
            unhealthy_threshold: 4,
            healthy_threshold: 3,
        },
        hash: HashPolicy {
            header: "x-user-id".into(),
        },
        scaling: ScalingPolicy {
            min_nodes: 2,
            max_nodes: 9,
            target_utilization_percent: 65,
            tolerance_percent: 12,
            scale_down_stabilization_ms: 200_000,
            scale_up_stabilization_ms: 1_000,
            target_calls_per_second_per_node: 250.5,
            target_in_flight_per_node: 8.0,
            target_latency_p99_ms: 120,
            max_step: 3,
            cooldown_ms: 45_000,
            predictive: PredictiveScaling {
                enabled: true,
                horizon_ms: 90_000,
                season_ms: 86_400_000,
            },
            schedules: vec![ScheduledScaling {
                name: "office-hours".into(),
                start: "0 0 8 * * Mon-Fri".into(),
                end: "0 0 18 * * Mon-Fri".into(),
                min_nodes: 6,
            }],
            actuator: Some(ScalingActuator::Webhook(WebhookActuator {
                url: "https://scaler.internal/scale".into(),
                bearer_token_file: "/etc/meridian/scaler-token".into(),
                timeout_ms: 5_000,
                max_attempts: 4,
            })),
            autoscale: true,
        },
        concurrency: ConcurrencyPolicy {
            kind: ConcurrencyLimitKind::Adaptive,
            limit: 25,
            min_limit: 4,
            max_limit: 400,
            max_queue: 64,
            max_queue_wait_ms: 800,
            drop_strategy: QueueDropStrategy::DropOldest,
            target_queue_wait_ms: 150,
            sample_window_ms: 200,
            min_rtt_interval_ms: 20_000,
        },
        limits: RequestLimits {
            max_message_bytes: 1 << 20,
            dedup_ttl_ms: 30_000,
            dedup_max_entries: 500,
            dedup_max_bytes: 8 << 20,
            ids_are_unique: true,
        },
        endpoint_limits: EndpointLimits {
            max_requests_per_endpoint: 64,
            stream_idle_timeout_ms: 15_000,
        },
        rate_limit: RateLimitPolicy {
            tiers: vec![
                RateLimitTier {
                    name: "free".into(),
                    calls_per_second: 12.5,
                    burst: 20,
                },
                RateLimitTier {
                    name: "pro".into(),
                    calls_per_second: 500.0,
                    burst: 0,
                },
            ],
            tier_header: "x-plan".into(),
            default_tier: "free".into(),
        },
        adaptive: AdaptivePolicy {
            choices: 3,
            hot_utilization: 0.9,
            report_ttl_ms: 1_500,
            ignore_node_reports: true,
            oob_report_interval_ms: 500,
            probes_per_call: 0.25,
            probe_idle_interval_ms: 700,
            probe_hot_quantile: 0.75,
        },
        fallback_services: vec!["demo.v1.EchoBackup".into(), "demo.v2.Echo".into()],
        global_routing: true,
    }
}

fn failover() -> ActiveFailover {
    ActiveFailover {
        service: "demo.v1.Echo".into(),
        target: "us-east".into(),
        reason: "eu-west maintenance".into(),
        started_by: "operator:alice".into(),
        started_at: Some(instant(42)),
    }
}

fn event(kind: EventKind) -> Event {
    Event {
        seq: 17,
        at: instant(999),
        kind,
        subject: "node/eu-west-a-1".into(),
        message: "lease lapsed".into(),
        cause: "lease expiry".into(),
    }
}

fn topology() -> Topology {
    Topology {
        revision: 88,
        federations: vec![federation()],
        regions: vec![region()],
        nodes: vec![node(NodeStatus::Healthy, RegistrationKind::SelfRegistered)],
        services: vec![service(Algorithm::Adaptive)],
    }
}

/// Asserts `value` comes back equal from proto and from JSON.
fn assert_round_trips<D, P>(value: D)
where
    D: Clone + PartialEq + Debug + Serialize + DeserializeOwned + Into<P> + TryFrom<P>,
    <D as TryFrom<P>>::Error: Debug,
{
    let proto: P = value.clone().into();
    let back = D::try_from(proto).expect("proto → domain");
    assert_eq!(back, value, "domain → proto → domain changed the value");

    let json = serde_json::to_string(&value).expect("domain → JSON");
    let back: D = serde_json::from_str(&json).expect("JSON → domain");
    assert_eq!(
        back, value,
        "domain → JSON → domain changed the value: {json}"
    );
}

#[test]
fn federation_round_trips() {
    assert_round_trips::<_, pb::Federation>(federation());
}

#[test]
fn region_round_trips() {
    assert_round_trips::<_, pb::Region>(region());
}

#[test]
fn node_round_trips_with_every_status_and_registration() {
    let statuses = [
        NodeStatus::Unknown,
        NodeStatus::Healthy,
        NodeStatus::Unhealthy,
        NodeStatus::Draining,
        NodeStatus::Lost,
        NodeStatus::Failed,
        NodeStatus::Quarantined,
    ];
    for status in statuses {
        for registration in [RegistrationKind::Operator, RegistrationKind::SelfRegistered] {
            assert_round_trips::<_, pb::Node>(node(status, registration));
        }
    }
}

#[test]
fn service_policy_round_trips_with_every_algorithm() {
    for algorithm in Algorithm::ALL {
        assert_round_trips::<_, pb::ServicePolicy>(service(algorithm));
        assert_eq!(algorithm.as_str().parse::<Algorithm>(), Ok(algorithm));
    }
}

#[test]
fn scaling_policy_with_an_exec_actuator_round_trips() {
    let mut policy = service(Algorithm::Adaptive).scaling;
    policy.actuator = Some(ScalingActuator::Exec(ExecActuator {
        command: "/usr/local/bin/scale".into(),
        args: vec!["--service".into(), "demo".into()],
        timeout_ms: 2_000,
    }));
    assert_round_trips::<ScalingPolicy, pb::ScalingPolicy>(policy);
}

#[test]
fn active_failover_round_trips() {
    assert_round_trips::<_, pb::ActiveFailover>(failover());
}

#[test]
fn event_round_trips_with_every_kind() {
    for kind in EventKind::ALL {
        assert_round_trips::<_, pb::Event>(event(kind));
    }
}

#[test]
fn topology_round_trips() {
    assert_round_trips::<_, pb::Topology>(topology());
}

#[test]
fn proto_with_unknown_enum_value_is_refused_naming_the_field() {
    let mut proto = pb::Node::from(node(NodeStatus::Healthy, RegistrationKind::Operator));
    proto.status = 99;
    let err = Node::try_from(proto).unwrap_err();
    assert_eq!(err.to_string(), "node.status: unknown value 99");

    let mut proto = pb::ServicePolicy::from(service(Algorithm::Random));
    proto.algorithm = 42;
    let err = ServicePolicy::try_from(proto).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service_policy.algorithm: unknown value 42"
    );
}

#[test]
fn region_without_location_is_refused() {
    let mut proto = pb::Region::from(region());
    proto.location = None;
    assert_eq!(
        Region::try_from(proto).unwrap_err(),
        ConversionError::Missing {
            field: "region.location"
        }
    );
}

#[test]
fn unspecified_algorithm_means_least_connections() {
    let proto = pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        ..Default::default()
    };
    let policy = ServicePolicy::try_from(proto).unwrap();
    assert_eq!(policy.algorithm, Algorithm::LeastConnections);
    assert_eq!(policy.failover, FailoverPolicy::default());
}

#[test]
fn unknown_event_kind_is_refused() {
    let mut proto = pb::Event::from(event(EventKind::NodeLost));
    proto.kind = "nodeExploded".into();
    assert!(Event::try_from(proto).is_err());
}
