//! One test per rule: a good value passes; each bad value is refused naming its field.

use std::collections::HashSet;

use meridian_shared::domain::{
    FailoverTier, Federation, GeoPoint, Labels, Node, Region, ServicePolicy, TopologyLimits,
};

use super::*;

const L: TopologyLimits = TopologyLimits::DEFAULT;

/// Federation `prod`; its nodes run on loopback, as in the tests.
fn fed() -> Federation {
    Federation {
        name: "prod".into(),
        allowed_networks: vec!["127.0.0.0/8".into()],
        ..Default::default()
    }
}

fn eu() -> Region {
    Region {
        name: "eu-west".into(),
        federation: "prod".into(),
        location: GeoPoint {
            latitude: 53.3,
            longitude: -6.2,
        },
        zones: vec!["eu-west-a".into(), "eu-west-b".into()],
        labels: Default::default(),
    }
}

fn eu_node() -> Node {
    Node {
        id: "eu-1".into(),
        address: "127.0.0.1:9001".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        weight: 100,
        capacity: 50,
        ..Default::default()
    }
}

fn echo() -> ServicePolicy {
    ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        ..Default::default()
    }
}

#[track_caller]
fn refused(result: Result<(), Invalid>, field: &str) {
    let err = result.expect_err("the bad value was accepted");
    assert_eq!(err.field, field, "{err}");
}

#[test]
fn good_values_pass() {
    federation(&fed(), &L).unwrap();
    region(&eu(), Some(&fed()), &L).unwrap();
    node(&eu_node(), Some(&fed()), Some(&eu()), &L).unwrap();
    service(&echo(), Some(&fed()), &HashSet::from(["eu-west"]), &L).unwrap();
}

#[test]
fn names_must_follow_the_naming_rule() {
    refused(
        federation(
            &Federation {
                name: "Prod!".into(),
                ..fed()
            },
            &L,
        ),
        "federation.name",
    );
    refused(
        region(
            &Region {
                name: "".into(),
                ..eu()
            },
            Some(&fed()),
            &L,
        ),
        "region.name",
    );
    refused(
        node(
            &Node {
                id: "-x".into(),
                ..eu_node()
            },
            Some(&fed()),
            Some(&eu()),
            &L,
        ),
        "node.id",
    );
}

#[test]
fn unknown_federation_is_refused() {
    refused(region(&eu(), None, &L), "region.federation");
    refused(node(&eu_node(), None, Some(&eu()), &L), "node.federation");
    refused(
        service(&echo(), None, &HashSet::new(), &L),
        "service_policy.federation",
    );
}

#[test]
fn latitude_and_longitude_must_be_on_earth() {
    let mut r = eu();
    r.location.latitude = 91.0;
    refused(region(&r, Some(&fed()), &L), "region.location.latitude");
    r.location.latitude = f64::NAN;
    refused(region(&r, Some(&fed()), &L), "region.location.latitude");
    let mut r = eu();
    r.location.longitude = -180.5;
    refused(region(&r, Some(&fed()), &L), "region.location.longitude");
}

#[test]
fn zones_must_exist_and_be_unique() {
    refused(
        region(
            &Region {
                zones: vec![],
                ..eu()
            },
            Some(&fed()),
            &L,
        ),
        "region.zones",
    );
    let twice = Region {
        zones: vec!["a".into(), "a".into()],
        ..eu()
    };
    refused(region(&twice, Some(&fed()), &L), "region.zones[1]");
}

#[test]
fn node_needs_a_known_region_and_zone() {
    refused(node(&eu_node(), Some(&fed()), None, &L), "node.region");
    let other_federation = Region {
        federation: "staging".into(),
        ..eu()
    };
    refused(
        node(&eu_node(), Some(&fed()), Some(&other_federation), &L),
        "node.region",
    );
    let bad_zone = Node {
        zone: "us-east-a".into(),
        ..eu_node()
    };
    refused(node(&bad_zone, Some(&fed()), Some(&eu()), &L), "node.zone");
}

#[test]
fn malformed_addresses_are_refused() {
    for bad in [
        "10.0.0.1",
        "10.0.0.1:0",
        "10.0.0.1:70000",
        ":80",
        "[::1",
        "300.1.1.1:80",
        "bad_host:80",
        "[zz]:80",
    ] {
        let n = Node {
            address: bad.into(),
            ..eu_node()
        };
        refused(node(&n, Some(&fed()), Some(&eu()), &L), "node.address");
    }
    for good in [
        "10.0.0.1:80",
        "[::1]:8080",
        "node-1.eu.internal:9000",
        "localhost:1",
    ] {
        address("a", good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn weight_and_capacity_are_bounded() {
    let heavy = Node {
        weight: MAX_WEIGHT + 1,
        ..eu_node()
    };
    refused(node(&heavy, Some(&fed()), Some(&eu()), &L), "node.weight");
    let huge = Node {
        capacity: MAX_CAPACITY + 1,
        ..eu_node()
    };
    refused(node(&huge, Some(&fed()), Some(&eu()), &L), "node.capacity");
}

#[test]
fn services_must_be_grpc_service_names() {
    let none = Node {
        services: vec![],
        ..eu_node()
    };
    refused(node(&none, Some(&fed()), Some(&eu()), &L), "node.services");
    let bad = Node {
        services: vec!["demo.v1.Echo".into(), "demo..Echo".into()],
        ..eu_node()
    };
    refused(
        node(&bad, Some(&fed()), Some(&eu()), &L),
        "node.services[1]",
    );
    refused(
        service(
            &ServicePolicy {
                name: "1demo".into(),
                ..echo()
            },
            Some(&fed()),
            &HashSet::new(),
            &L,
        ),
        "service_policy.name",
    );
}

#[test]
fn policy_bounds_are_enforced() {
    let regions = HashSet::from(["eu-west"]);
    let mut p = echo();
    p.failover.panic_threshold_percent = 101;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.failover.panic_threshold_percent",
    );

    let mut p = echo();
    p.retry.max_attempts = 11;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.retry.max_attempts",
    );

    let mut p = echo();
    p.retry.idempotent_methods = vec!["/demo.v1.Echo".into()];
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.retry.idempotent_methods[0]",
    );

    let mut p = echo();
    p.failover.tiers = vec![FailoverTier {
        name: "backup".into(),
        regions: vec!["mars-1".into()],
        ..Default::default()
    }];
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.failover.tiers[0].regions[0]",
    );

    let mut p = echo();
    p.scaling.min_nodes = 5;
    p.scaling.max_nodes = 2;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.scaling.min_nodes",
    );

    let mut p = echo();
    p.limits.max_message_bytes = 512;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.limits.max_message_bytes",
    );
    p.limits.max_message_bytes = 1024;
    service(&p, Some(&fed()), &regions, &L).expect("1 KiB is a limit");
    p.limits.dedup_ttl_ms = 3_600_001;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.limits.dedup_ttl_ms",
    );
    p.limits.dedup_ttl_ms = 60_000;
    p.limits.dedup_max_bytes = 2 << 30;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.limits.dedup_max_bytes",
    );

    let mut p = echo();
    p.endpoint_limits.max_requests_per_endpoint = 1_000_001;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.endpoint_limits.max_requests_per_endpoint",
    );
    p.endpoint_limits.max_requests_per_endpoint = 64;
    p.endpoint_limits.stream_idle_timeout_ms = 50;
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.endpoint_limits.stream_idle_timeout_ms",
    );
    p.endpoint_limits.stream_idle_timeout_ms = 30_000;
    service(&p, Some(&fed()), &regions, &L).expect("64 calls and 30 s are limits");

    let mut p = echo();
    p.hash.header = "bad header".into();
    refused(
        service(&p, Some(&fed()), &regions, &L),
        "service_policy.hash.header",
    );
}

// === limits ===

/// A refusal on `field` whose message names config key `key`.
#[track_caller]
fn over_limit(result: Result<(), Invalid>, field: &str, key: &str) {
    let err = result.expect_err("the value over the limit was accepted");
    assert_eq!(err.field, field, "{err}");
    assert!(
        err.message.contains(&format!("(config {key})")),
        "{err} does not name {key}"
    );
}

fn labels(count: usize, key_len: usize, value_len: usize) -> Labels {
    (0..count)
        .map(|i| {
            let key = format!("{i:0>key_len$}");
            (key, "v".repeat(value_len))
        })
        .collect()
}

#[test]
fn label_count_and_sizes_are_limited_on_every_object() {
    let limits = TopologyLimits {
        max_labels: 2,
        max_label_key_bytes: 4,
        max_label_value_bytes: 5,
        ..L
    };
    let at_limit = labels(2, 4, 5);
    let n = Node {
        labels: at_limit.clone(),
        ..eu_node()
    };
    node(&n, Some(&fed()), Some(&eu()), &limits).unwrap();

    let n = Node {
        labels: labels(3, 4, 5),
        ..eu_node()
    };
    let err = node(&n, Some(&fed()), Some(&eu()), &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "node.labels: 3 labels exceed the limit of 2 (config max_labels)"
    );
    let r = Region {
        labels: labels(3, 4, 5),
        ..eu()
    };
    over_limit(
        region(&r, Some(&fed()), &limits),
        "region.labels",
        "max_labels",
    );
    let f = Federation {
        labels: labels(3, 4, 5),
        ..fed()
    };
    over_limit(federation(&f, &limits), "federation.labels", "max_labels");

    let n = Node {
        labels: labels(1, 5, 5),
        ..eu_node()
    };
    over_limit(
        node(&n, Some(&fed()), Some(&eu()), &limits),
        "node.labels[\"00000\"]",
        "max_label_key_bytes",
    );
    let n = Node {
        labels: labels(1, 4, 6),
        ..eu_node()
    };
    over_limit(
        node(&n, Some(&fed()), Some(&eu()), &limits),
        "node.labels[\"0000\"]",
        "max_label_value_bytes",
    );
}

#[test]
fn services_per_node_are_limited() {
    let limits = TopologyLimits {
        max_services_per_node: 2,
        ..L
    };
    let services = |n: usize| (0..n).map(|i| format!("demo.v1.Svc{i}")).collect();
    let n = Node {
        services: services(2),
        ..eu_node()
    };
    node(&n, Some(&fed()), Some(&eu()), &limits).unwrap();
    let n = Node {
        services: services(3),
        ..eu_node()
    };
    over_limit(
        node(&n, Some(&fed()), Some(&eu()), &limits),
        "node.services",
        "max_services_per_node",
    );
}

#[test]
fn zones_per_region_are_limited() {
    let limits = TopologyLimits {
        max_zones_per_region: 2,
        ..L
    };
    region(&eu(), Some(&fed()), &limits).unwrap();
    let r = Region {
        zones: vec!["a".into(), "b".into(), "c".into()],
        ..eu()
    };
    over_limit(
        region(&r, Some(&fed()), &limits),
        "region.zones",
        "max_zones_per_region",
    );
}

#[test]
fn tiers_their_members_and_idempotent_methods_are_limited() {
    let regions = HashSet::from(["eu-west"]);
    let limits = TopologyLimits {
        max_failover_tiers: 1,
        max_tier_members: 2,
        max_idempotent_methods: 1,
        ..L
    };
    let tier = |name: &str, members: usize| FailoverTier {
        name: name.into(),
        regions: vec!["eu-west".into()],
        zones: (1..members).map(|i| format!("z{i}")).collect(),
        ..Default::default()
    };
    let mut p = echo();
    p.failover.tiers = vec![tier("a", 2)];
    service(&p, Some(&fed()), &regions, &limits).unwrap();
    p.failover.tiers = vec![tier("a", 1), tier("b", 1)];
    over_limit(
        service(&p, Some(&fed()), &regions, &limits),
        "service_policy.failover.tiers",
        "max_failover_tiers",
    );
    p.failover.tiers = vec![tier("a", 3)];
    over_limit(
        service(&p, Some(&fed()), &regions, &limits),
        "service_policy.failover.tiers[0]",
        "max_tier_members",
    );
    p.failover.tiers = vec![FailoverTier {
        name: "a".into(),
        nodes: vec!["Not A Name".into()],
        ..Default::default()
    }];
    refused(
        service(&p, Some(&fed()), &regions, &limits),
        "service_policy.failover.tiers[0].nodes[0]",
    );

    let mut p = echo();
    p.retry.idempotent_methods = vec!["/demo.v1.Echo/Say".into(), "demo.v1.Echo/*".into()];
    over_limit(
        service(&p, Some(&fed()), &regions, &limits),
        "service_policy.retry.idempotent_methods",
        "max_idempotent_methods",
    );
    p.retry.idempotent_methods = vec![format!("/demo.v1.Echo/{}", "M".repeat(256))];
    refused(
        service(&p, Some(&fed()), &regions, &limits),
        "service_policy.retry.idempotent_methods[0]",
    );

    let mut p = echo();
    p.hash.header = "x".repeat(256);
    refused(
        service(&p, Some(&fed()), &regions, &limits),
        "service_policy.hash.header",
    );
}

#[test]
fn free_text_is_limited() {
    let limits = TopologyLimits {
        max_text_bytes: 10,
        ..L
    };
    text("reason", "0123456789", &limits).unwrap();
    over_limit(
        text("reason", "0123456789a", &limits),
        "reason",
        "max_text_bytes",
    );
    let f = Federation {
        description: "x".repeat(11),
        ..fed()
    };
    over_limit(
        federation(&f, &limits),
        "federation.description",
        "max_text_bytes",
    );
}

#[test]
fn counts_per_federation_leave_room_for_one_more_only_below_the_limit() {
    room_for_one_more(
        "node.federation",
        "prod",
        9,
        "nodes",
        10,
        "max_nodes_per_federation",
    )
    .unwrap();
    let err = room_for_one_more(
        "node.federation",
        "prod",
        10,
        "nodes",
        10,
        "max_nodes_per_federation",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "node.federation: federation \"prod\" already has 10 nodes, the limit (config max_nodes_per_federation)"
    );
}

// === allowed networks and node addresses ===

fn open_fed() -> Federation {
    Federation {
        allowed_networks: vec![],
        ..fed()
    }
}

fn fed_allowing(networks: &[&str]) -> Federation {
    Federation {
        allowed_networks: networks.iter().map(|n| n.to_string()).collect(),
        ..fed()
    }
}

#[track_caller]
fn address_ok(address: &str, federation: &Federation) {
    check_node_address("node.address", address, federation)
        .unwrap_or_else(|e| panic!("{address} refused: {e}"));
}

#[track_caller]
fn address_refused(address: &str, federation: &Federation, why: &str) {
    let err = check_node_address("node.address", address, federation)
        .expect_err(&format!("{address} was accepted"));
    assert_eq!(err.field, "node.address");
    assert!(err.message.contains(why), "{err} lacks {why:?}");
}

#[test]
fn allowed_networks_must_be_cidrs() {
    federation(
        &fed_allowing(&["10.0.0.0/8", "fd00::/8", "0.0.0.0/0", "10.1.2.3/32"]),
        &L,
    )
    .unwrap();
    for bad in [
        "10.0.0.0",
        "10.0.0.0/33",
        "10.0.0.1/8",
        "fd00::/129",
        "ten/8",
        "",
        "10.0.0.0/-1",
    ] {
        refused(
            federation(&fed_allowing(&["10.0.0.0/8", bad]), &L),
            "federation.allowed_networks[1]",
        );
    }
    let limits = TopologyLimits {
        max_allowed_networks: 1,
        ..L
    };
    over_limit(
        federation(&fed_allowing(&["10.0.0.0/8", "fd00::/8"]), &limits),
        "federation.allowed_networks",
        "max_allowed_networks",
    );
}

#[test]
fn loopback_link_local_and_unspecified_addresses_are_refused_unless_allowed() {
    let open = open_fed();
    for (address, kind) in [
        ("127.0.0.1:9000", "loopback"),
        ("127.1.2.3:9000", "loopback"),
        ("[::1]:9000", "loopback"),
        ("[::ffff:127.0.0.1]:9000", "loopback"),
        ("localhost:9000", "loopback"),
        ("api.localhost:9000", "loopback"),
        ("169.254.169.254:80", "link-local"),
        ("[fe80::1]:9000", "link-local"),
        ("0.0.0.0:9000", "unspecified"),
        ("[::]:9000", "unspecified"),
        ("224.0.0.1:9000", "multicast"),
        ("255.255.255.255:9000", "broadcast"),
    ] {
        address_refused(address, &open, kind);
    }
    let dev = fed_allowing(&["127.0.0.0/8"]);
    address_ok("127.0.0.1:9000", &dev);
    address_ok("localhost:9000", &dev);
    address_ok("[::ffff:127.0.0.1]:9000", &dev);
    // Allowing loopback allows nothing else that is special.
    address_refused("169.254.169.254:80", &dev, "link-local");
    address_refused("[::1]:9000", &dev, "loopback");
    address_ok("[::1]:9000", &fed_allowing(&["::1/128"]));
    address_ok("169.254.10.1:80", &fed_allowing(&["169.254.10.0/24"]));
}

#[test]
fn with_allowed_networks_addresses_must_be_inside_and_be_ips() {
    let private = fed_allowing(&["10.0.0.0/8", "fd00::/8"]);
    address_ok("10.1.2.3:9000", &private);
    address_ok("[fd00::7]:9000", &private);
    address_refused("192.168.1.1:9000", &private, "outside");
    address_refused("[2001:db8::1]:9000", &private, "outside");
    address_refused("node-1.eu.internal:9000", &private, "host name");
    address_refused("127.0.0.1:9000", &private, "loopback");
}

#[test]
fn without_allowed_networks_ordinary_addresses_and_names_pass() {
    let open = open_fed();
    address_ok("10.1.2.3:9000", &open);
    address_ok("203.0.113.9:443", &open);
    address_ok("[2001:db8::1]:9000", &open);
    address_ok("node-1.eu.internal:9000", &open);
}

#[test]
fn node_writes_apply_the_address_rules() {
    let n = eu_node(); // 127.0.0.1
    node(&n, Some(&fed()), Some(&eu()), &L).unwrap();
    let err = node(&n, Some(&open_fed()), Some(&eu()), &L).unwrap_err();
    assert_eq!(err.field, "node.address");
    assert!(err.message.contains("loopback"), "{err}");
}

// === scaling policies ===

use meridian_shared::domain::{
    ExecActuator, PredictiveScaling, ScalingActuator, ScalingPolicy, ScheduledScaling,
    WebhookActuator,
};

fn office_hours() -> ScheduledScaling {
    ScheduledScaling {
        name: "office-hours".into(),
        start: "0 0 8 * * Mon-Fri".into(),
        end: "0 0 18 * * Mon-Fri".into(),
        min_nodes: 6,
    }
}

fn exec() -> ExecActuator {
    ExecActuator {
        command: "/usr/local/bin/scale".into(),
        args: vec!["--service".into(), "echo".into()],
        timeout_ms: 30_000,
    }
}

fn webhook() -> WebhookActuator {
    WebhookActuator {
        url: "https://scaler.example.com/hooks/meridian".into(),
        bearer_token_file: "/etc/meridian/scaler-token".into(),
        timeout_ms: 10_000,
        max_attempts: 3,
    }
}

/// Every scaling field set to a good value.
fn full_scaling() -> ScalingPolicy {
    ScalingPolicy {
        min_nodes: 2,
        max_nodes: 20,
        target_utilization_percent: 70,
        tolerance_percent: 10,
        scale_down_stabilization_ms: 300_000,
        scale_up_stabilization_ms: 30_000,
        target_calls_per_second_per_node: 250.5,
        target_in_flight_per_node: 16.0,
        target_latency_p99_ms: 200,
        max_step: 4,
        cooldown_ms: 60_000,
        predictive: PredictiveScaling {
            enabled: true,
            horizon_ms: 120_000,
            season_ms: 86_400_000,
        },
        schedules: vec![office_hours()],
        actuator: Some(ScalingActuator::Exec(exec())),
        autoscale: true,
    }
}

/// `scaling` on the echo service: refused naming `field`, the message containing `words`.
#[track_caller]
fn scaling_refused(scaling: ScalingPolicy, field: &str, words: &str) {
    let p = ServicePolicy { scaling, ..echo() };
    let err = service(&p, Some(&fed()), &HashSet::new(), &L).expect_err("accepted");
    assert_eq!(err.field, field, "{err}");
    assert!(err.message.contains(words), "{err} does not say {words:?}");
}

fn scaling_ok(scaling: ScalingPolicy) {
    let p = ServicePolicy { scaling, ..echo() };
    service(&p, Some(&fed()), &HashSet::new(), &L).unwrap();
}

#[test]
fn a_full_scaling_policy_passes() {
    scaling_ok(full_scaling());
    scaling_ok(ScalingPolicy {
        actuator: Some(ScalingActuator::Webhook(webhook())),
        ..full_scaling()
    });
    scaling_ok(ScalingPolicy {
        actuator: Some(ScalingActuator::Webhook(WebhookActuator {
            url: "http://10.0.0.5:8080/scale".into(),
            bearer_token_file: String::new(),
            ..webhook()
        })),
        schedules: vec![ScheduledScaling {
            start: "*/10 * * * * *".into(),
            end: "5-59/10 * * * * *".into(),
            ..office_hours()
        }],
        ..full_scaling()
    });
}

#[test]
fn scaling_targets_must_be_finite_non_negative_and_sane() {
    let s = "service_policy.scaling";
    for bad in [f64::NAN, f64::INFINITY, -1.0] {
        scaling_refused(
            ScalingPolicy {
                target_calls_per_second_per_node: bad,
                ..full_scaling()
            },
            &format!("{s}.target_calls_per_second_per_node"),
            "finite, non-negative",
        );
        scaling_refused(
            ScalingPolicy {
                target_in_flight_per_node: bad,
                ..full_scaling()
            },
            &format!("{s}.target_in_flight_per_node"),
            "finite, non-negative",
        );
    }
    scaling_refused(
        ScalingPolicy {
            target_calls_per_second_per_node: 2e6,
            ..full_scaling()
        },
        &format!("{s}.target_calls_per_second_per_node"),
        "above 1000000",
    );
    scaling_refused(
        ScalingPolicy {
            target_in_flight_per_node: 2e6,
            ..full_scaling()
        },
        &format!("{s}.target_in_flight_per_node"),
        "above",
    );
    scaling_refused(
        ScalingPolicy {
            target_latency_p99_ms: 600_001,
            ..full_scaling()
        },
        &format!("{s}.target_latency_p99_ms"),
        "10 minutes",
    );
    scaling_refused(
        ScalingPolicy {
            target_utilization_percent: 101,
            ..full_scaling()
        },
        &format!("{s}.target_utilization_percent"),
        "above 100",
    );
    scaling_refused(
        ScalingPolicy {
            tolerance_percent: 101,
            ..full_scaling()
        },
        &format!("{s}.tolerance_percent"),
        "above 100",
    );
}

#[test]
fn scaling_windows_and_horizons_are_bounded() {
    let s = "service_policy.scaling";
    let cases: [(ScalingPolicy, &str); 5] = [
        (
            ScalingPolicy {
                scale_down_stabilization_ms: 3_600_001,
                ..full_scaling()
            },
            "scale_down_stabilization_ms",
        ),
        (
            ScalingPolicy {
                scale_up_stabilization_ms: 3_600_001,
                ..full_scaling()
            },
            "scale_up_stabilization_ms",
        ),
        (
            ScalingPolicy {
                cooldown_ms: 86_400_001,
                ..full_scaling()
            },
            "cooldown_ms",
        ),
        (
            ScalingPolicy {
                predictive: PredictiveScaling {
                    enabled: true,
                    horizon_ms: 86_400_001,
                    season_ms: 0,
                },
                ..full_scaling()
            },
            "predictive.horizon_ms",
        ),
        (
            ScalingPolicy {
                predictive: PredictiveScaling {
                    enabled: true,
                    horizon_ms: 0,
                    season_ms: 7 * 86_400_000 + 1,
                },
                ..full_scaling()
            },
            "predictive.season_ms",
        ),
    ];
    for (policy, field) in cases {
        scaling_refused(policy, &format!("{s}.{field}"), "is above");
    }
}

#[test]
fn scheduled_windows_are_named_unique_bounded_and_valid_cron() {
    let with = |schedules: Vec<ScheduledScaling>| ScalingPolicy {
        schedules,
        ..full_scaling()
    };
    scaling_refused(
        with(
            (0..17)
                .map(|i| ScheduledScaling {
                    name: format!("w{i}"),
                    ..office_hours()
                })
                .collect(),
        ),
        "service_policy.scaling.schedules",
        "17 windows exceed the limit of 16",
    );
    scaling_refused(
        with(vec![ScheduledScaling {
            name: "Office Hours".into(),
            ..office_hours()
        }]),
        "service_policy.scaling.schedules[0].name",
        "lowercase",
    );
    scaling_refused(
        with(vec![office_hours(), office_hours()]),
        "service_policy.scaling.schedules[1].name",
        "unique",
    );
    scaling_refused(
        with(vec![ScheduledScaling {
            start: "0 8 * * Mon-Fri".into(),
            ..office_hours()
        }]),
        "service_policy.scaling.schedules[0].start",
        "expected 6",
    );
    scaling_refused(
        with(vec![
            office_hours(),
            ScheduledScaling {
                name: "night".into(),
                end: "0 0 25 * * *".into(),
                ..office_hours()
            },
        ]),
        "service_policy.scaling.schedules[1].end",
        "\"0 0 25 * * *\"",
    );
    scaling_refused(
        with(vec![ScheduledScaling {
            start: format!("0 0 8 * * {}", "1,".repeat(125) + "1"),
            ..office_hours()
        }]),
        "service_policy.scaling.schedules[0].start",
        "at most 256 bytes",
    );
    scaling_refused(
        with(vec![ScheduledScaling {
            start: "0 0 0 30 2 *".into(),
            ..office_hours()
        }]),
        "service_policy.scaling.schedules[0].start",
        "never matches",
    );
    scaling_refused(
        with(vec![ScheduledScaling {
            min_nodes: 21,
            ..office_hours()
        }]),
        "service_policy.scaling.schedules[0].min_nodes",
        "above max_nodes 20",
    );
    scaling_refused(
        with(vec![ScheduledScaling {
            min_nodes: 0,
            ..office_hours()
        }]),
        "service_policy.scaling.schedules[0].min_nodes",
        "at least 1",
    );
}

#[test]
fn exec_actuators_need_an_absolute_program_and_bounded_arguments() {
    let with = |e: ExecActuator| ScalingPolicy {
        actuator: Some(ScalingActuator::Exec(e)),
        ..full_scaling()
    };
    let f = "service_policy.scaling.actuator.exec";
    scaling_refused(
        with(ExecActuator {
            command: "kubectl".into(),
            ..exec()
        }),
        &format!("{f}.command"),
        "not an absolute path",
    );
    scaling_refused(
        with(ExecActuator {
            command: String::new(),
            ..exec()
        }),
        &format!("{f}.command"),
        "must be set",
    );
    scaling_refused(
        with(ExecActuator {
            command: format!("/{}", "x".repeat(1_024)),
            ..exec()
        }),
        &format!("{f}.command"),
        "1024 bytes",
    );
    scaling_refused(
        with(ExecActuator {
            args: vec!["a".into(); 33],
            ..exec()
        }),
        &format!("{f}.args"),
        "33 arguments exceed the limit of 32",
    );
    scaling_refused(
        with(ExecActuator {
            args: vec!["ok".into(), "y".repeat(1_025)],
            ..exec()
        }),
        &format!("{f}.args[1]"),
        "1024 bytes",
    );
    scaling_refused(
        with(ExecActuator {
            timeout_ms: 600_001,
            ..exec()
        }),
        &format!("{f}.timeout_ms"),
        "10 minutes",
    );
}

#[test]
fn webhook_actuators_need_an_http_url_and_bounded_retries() {
    let with = |w: WebhookActuator| ScalingPolicy {
        actuator: Some(ScalingActuator::Webhook(w)),
        ..full_scaling()
    };
    let f = "service_policy.scaling.actuator.webhook";
    for (url, words) in [
        ("ftp://scaler.example.com/x", "http:// or https://"),
        ("/hooks/meridian", "http:// or https://"),
        ("https://scaler example.com/", "not a URL"),
        ("", "not a URL"),
    ] {
        scaling_refused(
            with(WebhookActuator {
                url: url.into(),
                ..webhook()
            }),
            &format!("{f}.url"),
            words,
        );
    }
    scaling_refused(
        with(WebhookActuator {
            url: format!("https://scaler.example.com/{}", "p".repeat(2_048)),
            ..webhook()
        }),
        &format!("{f}.url"),
        "exceed the limit of 2048",
    );
    scaling_refused(
        with(WebhookActuator {
            bearer_token_file: "token.txt".into(),
            ..webhook()
        }),
        &format!("{f}.bearer_token_file"),
        "not an absolute path",
    );
    scaling_refused(
        with(WebhookActuator {
            timeout_ms: 300_001,
            ..webhook()
        }),
        &format!("{f}.timeout_ms"),
        "5 minutes",
    );
    scaling_refused(
        with(WebhookActuator {
            max_attempts: 11,
            ..webhook()
        }),
        &format!("{f}.max_attempts"),
        "above 10",
    );
}

#[test]
fn a_fallback_chain_names_other_services_once_within_its_bound() {
    let check = |chain: &[&str]| {
        let p = ServicePolicy {
            fallback_services: chain.iter().map(|s| s.to_string()).collect(),
            ..echo()
        };
        service(&p, Some(&fed()), &HashSet::new(), &L)
    };
    check(&["demo.v1.EchoBackup", "demo.v2.Echo"]).unwrap();
    refused(
        check(&["demo.v1.Echo"]),
        "service_policy.fallback_services[0]",
    );
    refused(
        check(&["demo.v1.EchoBackup", "demo.v1.EchoBackup"]),
        "service_policy.fallback_services[1]",
    );
    refused(
        check(&["demo.v1.EchoBackup", "not a service"]),
        "service_policy.fallback_services[1]",
    );
    let too_many: Vec<String> = (0..=MAX_FALLBACK_SERVICES)
        .map(|i| format!("demo.v1.Backup{i}"))
        .collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    refused(check(&too_many), "service_policy.fallback_services");
}
