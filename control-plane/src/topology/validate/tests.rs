//! One test per rule: a good value passes; each bad value is refused naming its field.

use std::collections::HashSet;

use meridian_shared::domain::{FailoverTier, Federation, GeoPoint, Node, Region, ServicePolicy};

use super::*;

fn fed() -> Federation {
    Federation {
        name: "prod".into(),
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
    federation(&fed()).unwrap();
    region(&eu(), Some(&fed())).unwrap();
    node(&eu_node(), Some(&fed()), Some(&eu())).unwrap();
    service(&echo(), Some(&fed()), &HashSet::from(["eu-west"])).unwrap();
}

#[test]
fn names_must_follow_the_naming_rule() {
    refused(
        federation(&Federation {
            name: "Prod!".into(),
            ..fed()
        }),
        "federation.name",
    );
    refused(
        region(
            &Region {
                name: "".into(),
                ..eu()
            },
            Some(&fed()),
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
        ),
        "node.id",
    );
}

#[test]
fn unknown_federation_is_refused() {
    refused(region(&eu(), None), "region.federation");
    refused(node(&eu_node(), None, Some(&eu())), "node.federation");
    refused(
        service(&echo(), None, &HashSet::new()),
        "service_policy.federation",
    );
}

#[test]
fn latitude_and_longitude_must_be_on_earth() {
    let mut r = eu();
    r.location.latitude = 91.0;
    refused(region(&r, Some(&fed())), "region.location.latitude");
    r.location.latitude = f64::NAN;
    refused(region(&r, Some(&fed())), "region.location.latitude");
    let mut r = eu();
    r.location.longitude = -180.5;
    refused(region(&r, Some(&fed())), "region.location.longitude");
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
        ),
        "region.zones",
    );
    let twice = Region {
        zones: vec!["a".into(), "a".into()],
        ..eu()
    };
    refused(region(&twice, Some(&fed())), "region.zones[1]");
}

#[test]
fn node_needs_a_known_region_and_zone() {
    refused(node(&eu_node(), Some(&fed()), None), "node.region");
    let other_federation = Region {
        federation: "staging".into(),
        ..eu()
    };
    refused(
        node(&eu_node(), Some(&fed()), Some(&other_federation)),
        "node.region",
    );
    let bad_zone = Node {
        zone: "us-east-a".into(),
        ..eu_node()
    };
    refused(node(&bad_zone, Some(&fed()), Some(&eu())), "node.zone");
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
        refused(node(&n, Some(&fed()), Some(&eu())), "node.address");
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
    refused(node(&heavy, Some(&fed()), Some(&eu())), "node.weight");
    let huge = Node {
        capacity: MAX_CAPACITY + 1,
        ..eu_node()
    };
    refused(node(&huge, Some(&fed()), Some(&eu())), "node.capacity");
}

#[test]
fn services_must_be_grpc_service_names() {
    let none = Node {
        services: vec![],
        ..eu_node()
    };
    refused(node(&none, Some(&fed()), Some(&eu())), "node.services");
    let bad = Node {
        services: vec!["demo.v1.Echo".into(), "demo..Echo".into()],
        ..eu_node()
    };
    refused(node(&bad, Some(&fed()), Some(&eu())), "node.services[1]");
    refused(
        service(
            &ServicePolicy {
                name: "1demo".into(),
                ..echo()
            },
            Some(&fed()),
            &HashSet::new(),
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
        service(&p, Some(&fed()), &regions),
        "service_policy.failover.panic_threshold_percent",
    );

    let mut p = echo();
    p.retry.max_attempts = 11;
    refused(
        service(&p, Some(&fed()), &regions),
        "service_policy.retry.max_attempts",
    );

    let mut p = echo();
    p.retry.idempotent_methods = vec!["/demo.v1.Echo".into()];
    refused(
        service(&p, Some(&fed()), &regions),
        "service_policy.retry.idempotent_methods[0]",
    );

    let mut p = echo();
    p.failover.tiers = vec![FailoverTier {
        name: "backup".into(),
        regions: vec!["mars-1".into()],
        ..Default::default()
    }];
    refused(
        service(&p, Some(&fed()), &regions),
        "service_policy.failover.tiers[0].regions[0]",
    );

    let mut p = echo();
    p.scaling.min_nodes = 5;
    p.scaling.max_nodes = 2;
    refused(
        service(&p, Some(&fed()), &regions),
        "service_policy.scaling.min_nodes",
    );

    let mut p = echo();
    p.hash.header = "bad header".into();
    refused(
        service(&p, Some(&fed()), &regions),
        "service_policy.hash.header",
    );
}
