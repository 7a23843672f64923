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
