//! The rules every topology write must pass. Each rule names the field and the bad value,
//! so `INVALID_ARGUMENT: node.address: "10.0.0.1" ...` tells the operator what to fix.
//! Rules that need other entities (does the region exist?) take them as arguments; the
//! writer reads them from the store and fences the write on their revisions.
//!
//! Every list and free-text field is bounded by the [`TopologyLimits`] of the dynamic
//! configuration; a value over a limit is refused naming the limit's config key, e.g.
//! `node.labels: 17 labels exceed the limit of 16 (config max_labels)`. Node addresses
//! are checked against their federation's `allowed_networks` ([`networks`]). A service's
//! scaling policy has its own rules ([`scaling`]), and so have its concurrency policy
//! ([`concurrency`]), its rate limits ([`rate_limit`]), its request limits
//! ([`request_limits`]), its per-node limits ([`endpoint_limits`]) and its adaptive-routing
//! tuning ([`adaptive`]).

mod adaptive;
mod concurrency;
mod endpoint_limits;
mod networks;
mod rate_limit;
mod request_limits;
mod scaling;

use std::collections::HashSet;
use std::net::IpAddr;

use meridian_shared::domain::limits::{HEADER_NAME_BYTES, METHOD_NAME_BYTES};
use meridian_shared::domain::{
    Federation, MAX_FALLBACK_SERVICES, Node, Region, ServicePolicy, TopologyLimits,
};
use meridian_shared::names::name_problem;

pub use networks::{Cidr, check_node_address};

/// Highest node weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Highest node capacity (concurrent requests).
pub const MAX_CAPACITY: u32 = 1_000_000;
/// Longest gRPC service name.
pub const MAX_SERVICE_NAME: usize = meridian_shared::domain::limits::SERVICE_NAME_BYTES as usize;

/// A field holds a value the rules refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn check_name(field: &str, value: &str) -> Result<(), Invalid> {
    match name_problem(value) {
        Some(problem) => Err(invalid(field, format!("{value:?} {problem}"))),
        None => Ok(()),
    }
}

/// `count` items of `what` are at most `limit` (config `key`).
fn at_most(field: &str, count: usize, what: &str, limit: u32, key: &str) -> Result<(), Invalid> {
    if count > limit as usize {
        return Err(invalid(
            field,
            format!("{count} {what} exceed the limit of {limit} (config {key})"),
        ));
    }
    Ok(())
}

/// Free text (a description, a reason) within `max_text_bytes`.
pub fn text(field: &str, value: &str, limits: &TopologyLimits) -> Result<(), Invalid> {
    at_most(
        field,
        value.len(),
        "bytes",
        limits.max_text_bytes,
        "max_text_bytes",
    )
}

/// A federation that already holds `count` of something may take one more only while
/// below `limit`.
pub fn room_for_one_more(
    field: &str,
    federation: &str,
    count: usize,
    what: &str,
    limit: u32,
    key: &str,
) -> Result<(), Invalid> {
    if count >= limit as usize {
        return Err(invalid(
            field,
            format!(
                "federation {federation:?} already has {count} {what}, the limit (config {key})"
            ),
        ));
    }
    Ok(())
}

fn check_labels(
    field: &str,
    labels: &meridian_shared::domain::Labels,
    limits: &TopologyLimits,
) -> Result<(), Invalid> {
    at_most(
        field,
        labels.len(),
        "labels",
        limits.max_labels,
        "max_labels",
    )?;
    for (key, value) in labels {
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c));
        if !key_ok {
            return Err(invalid(
                format!("{field}[{key:?}]"),
                "label keys are letters, digits, '.', '_', '/', '-'",
            ));
        }
        at_most(
            &format!("{field}[{key:?}]"),
            key.len(),
            "bytes of key",
            limits.max_label_key_bytes,
            "max_label_key_bytes",
        )?;
        at_most(
            &format!("{field}[{key:?}]"),
            value.len(),
            "bytes of value",
            limits.max_label_value_bytes,
            "max_label_value_bytes",
        )?;
    }
    Ok(())
}

pub fn federation(f: &Federation, limits: &TopologyLimits) -> Result<(), Invalid> {
    check_name("federation.name", &f.name)?;
    text("federation.description", &f.description, limits)?;
    check_labels("federation.labels", &f.labels, limits)?;
    at_most(
        "federation.allowed_networks",
        f.allowed_networks.len(),
        "networks",
        limits.max_allowed_networks,
        "max_allowed_networks",
    )?;
    for (i, network) in f.allowed_networks.iter().enumerate() {
        network
            .parse::<Cidr>()
            .map_err(|why| invalid(format!("federation.allowed_networks[{i}]"), why))?;
    }
    Ok(())
}

/// `federation` is the region's federation as stored, `None` when it does not exist.
pub fn region(
    r: &Region,
    federation: Option<&Federation>,
    limits: &TopologyLimits,
) -> Result<(), Invalid> {
    check_name("region.name", &r.name)?;
    check_name("region.federation", &r.federation)?;
    if federation.is_none() {
        return Err(invalid(
            "region.federation",
            format!(
                "unknown federation {:?}; create it first (meridianctl federations set)",
                r.federation
            ),
        ));
    }
    let (lat, lon) = (r.location.latitude, r.location.longitude);
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(invalid(
            "region.location.latitude",
            format!("{lat} is outside -90 to 90"),
        ));
    }
    if !lon.is_finite() || !(-180.0..=180.0).contains(&lon) {
        return Err(invalid(
            "region.location.longitude",
            format!("{lon} is outside -180 to 180"),
        ));
    }
    if r.zones.is_empty() {
        return Err(invalid("region.zones", "a region needs at least one zone"));
    }
    at_most(
        "region.zones",
        r.zones.len(),
        "zones",
        limits.max_zones_per_region,
        "max_zones_per_region",
    )?;
    let mut seen = HashSet::new();
    for (i, zone) in r.zones.iter().enumerate() {
        check_name(&format!("region.zones[{i}]"), zone)?;
        if !seen.insert(zone) {
            return Err(invalid(
                format!("region.zones[{i}]"),
                format!("zone {zone:?} is listed twice"),
            ));
        }
    }
    check_labels("region.labels", &r.labels, limits)
}

/// `region` is the node's region as stored, `None` when it does not exist. The address
/// must be allowed by the federation's `allowed_networks`.
pub fn node(
    n: &Node,
    federation: Option<&Federation>,
    region: Option<&Region>,
    limits: &TopologyLimits,
) -> Result<(), Invalid> {
    check_name("node.id", &n.id)?;
    address("node.address", &n.address)?;
    check_name("node.federation", &n.federation)?;
    let Some(federation) = federation else {
        return Err(invalid(
            "node.federation",
            format!("unknown federation {:?}", n.federation),
        ));
    };
    check_node_address("node.address", &n.address, federation)?;
    check_name("node.region", &n.region)?;
    let Some(region) = region.filter(|r| r.federation == n.federation) else {
        return Err(invalid(
            "node.region",
            format!(
                "unknown region {:?} in federation {:?}",
                n.region, n.federation
            ),
        ));
    };
    if !region.zones.contains(&n.zone) {
        return Err(invalid(
            "node.zone",
            format!(
                "{:?} is not a zone of region {:?} (zones: {})",
                n.zone,
                region.name,
                region.zones.join(", ")
            ),
        ));
    }
    if n.services.is_empty() {
        return Err(invalid(
            "node.services",
            "a node must serve at least one service",
        ));
    }
    at_most(
        "node.services",
        n.services.len(),
        "services",
        limits.max_services_per_node,
        "max_services_per_node",
    )?;
    for (i, service) in n.services.iter().enumerate() {
        service_name(&format!("node.services[{i}]"), service)?;
    }
    if n.weight > MAX_WEIGHT {
        return Err(invalid(
            "node.weight",
            format!("{} is above the maximum {MAX_WEIGHT}", n.weight),
        ));
    }
    if n.capacity > MAX_CAPACITY {
        return Err(invalid(
            "node.capacity",
            format!("{} is above the maximum {MAX_CAPACITY}", n.capacity),
        ));
    }
    check_labels("node.labels", &n.labels, limits)
}

/// A fully qualified gRPC service name: dot-separated identifiers, e.g. `demo.v1.Echo`.
pub fn service_name(field: &str, name: &str) -> Result<(), Invalid> {
    let identifier = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if name.is_empty() || name.len() > MAX_SERVICE_NAME || !name.split('.').all(identifier) {
        return Err(invalid(
            field,
            format!(
                "{name:?} is not a gRPC service name (dot-separated identifiers, e.g. demo.v1.Echo)"
            ),
        ));
    }
    Ok(())
}

/// `host:port` with an IPv4 address, a bracketed IPv6 address or a DNS name.
pub fn address(field: &str, addr: &str) -> Result<(), Invalid> {
    let bad = |why: &str| invalid(field, format!("{addr:?} is not host:port: {why}"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("missing :port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be 1 to 65535")),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(drop)
            .map_err(|_| bad("invalid IPv6 address"));
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let looks_numeric = host
        .split('.')
        .all(|l| l.chars().all(|c| c.is_ascii_digit()));
    if host.is_empty() || host.len() > 253 || looks_numeric || !host.split('.').all(label_ok) {
        return Err(bad("invalid host"));
    }
    Ok(())
}

/// `regions` are the names of the federation's regions (for failover tiers).
pub fn service(
    p: &ServicePolicy,
    federation: Option<&Federation>,
    regions: &HashSet<&str>,
    limits: &TopologyLimits,
) -> Result<(), Invalid> {
    service_name("service_policy.name", &p.name)?;
    check_name("service_policy.federation", &p.federation)?;
    if federation.is_none() {
        return Err(invalid(
            "service_policy.federation",
            format!("unknown federation {:?}", p.federation),
        ));
    }
    let percent = |field: &str, value: u32, max: u32| {
        if value > max {
            Err(invalid(field, format!("{value} is above {max}")))
        } else {
            Ok(())
        }
    };
    let f = &p.failover;
    percent(
        "service_policy.failover.overprovisioning_percent",
        f.overprovisioning_percent,
        1_000,
    )?;
    percent(
        "service_policy.failover.panic_threshold_percent",
        f.panic_threshold_percent,
        100,
    )?;
    at_most(
        "service_policy.failover.tiers",
        f.tiers.len(),
        "tiers",
        limits.max_failover_tiers,
        "max_failover_tiers",
    )?;
    let mut tier_names = HashSet::new();
    for (i, tier) in f.tiers.iter().enumerate() {
        at_most(
            &format!("service_policy.failover.tiers[{i}]"),
            tier.regions.len() + tier.zones.len() + tier.nodes.len(),
            "regions, zones and nodes",
            limits.max_tier_members,
            "max_tier_members",
        )?;
        for (j, zone) in tier.zones.iter().enumerate() {
            check_name(
                &format!("service_policy.failover.tiers[{i}].zones[{j}]"),
                zone,
            )?;
        }
        for (j, node) in tier.nodes.iter().enumerate() {
            check_name(
                &format!("service_policy.failover.tiers[{i}].nodes[{j}]"),
                node,
            )?;
        }
        check_name(
            &format!("service_policy.failover.tiers[{i}].name"),
            &tier.name,
        )?;
        if !tier_names.insert(&tier.name) {
            return Err(invalid(
                format!("service_policy.failover.tiers[{i}].name"),
                "tier names must be unique",
            ));
        }
        for (j, region) in tier.regions.iter().enumerate() {
            if !regions.contains(region.as_str()) {
                return Err(invalid(
                    format!("service_policy.failover.tiers[{i}].regions[{j}]"),
                    format!("unknown region {region:?} in federation {:?}", p.federation),
                ));
            }
        }
    }
    let r = &p.retry;
    percent("service_policy.retry.max_attempts", r.max_attempts, 10)?;
    percent("service_policy.retry.budget_percent", r.budget_percent, 100)?;
    at_most(
        "service_policy.retry.idempotent_methods",
        r.idempotent_methods.len(),
        "methods",
        limits.max_idempotent_methods,
        "max_idempotent_methods",
    )?;
    for (i, method) in r.idempotent_methods.iter().enumerate() {
        let field = format!("service_policy.retry.idempotent_methods[{i}]");
        let (service, name) = method
            .trim_start_matches('/')
            .split_once('/')
            .ok_or_else(|| {
                invalid(
                    &field,
                    format!("{method:?} is not /pkg.Service/Method or pkg.Service/*"),
                )
            })?;
        service_name(&field, service)?;
        if name.is_empty()
            || name.len() > METHOD_NAME_BYTES as usize
            || (name != "*" && !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        {
            return Err(invalid(
                &field,
                format!("{method:?} has no valid method name"),
            ));
        }
    }
    if r.backoff_base_ms > 0 && r.backoff_max_ms > 0 && r.backoff_base_ms > r.backoff_max_ms {
        return Err(invalid(
            "service_policy.retry.backoff_max_ms",
            "must not be below backoff_base_ms",
        ));
    }
    let o = &p.outlier;
    percent(
        "service_policy.outlier.failure_rate_percent",
        o.failure_rate_percent,
        100,
    )?;
    percent(
        "service_policy.outlier.max_ejection_percent",
        o.max_ejection_percent,
        100,
    )?;
    let h = &p.health_check;
    if !h.grpc_service.is_empty() {
        service_name("service_policy.health_check.grpc_service", &h.grpc_service)?;
    }
    percent(
        "service_policy.health_check.unhealthy_threshold",
        h.unhealthy_threshold,
        100,
    )?;
    percent(
        "service_policy.health_check.healthy_threshold",
        h.healthy_threshold,
        100,
    )?;
    if h.interval_ms != 0 && h.interval_ms < 100 {
        return Err(invalid(
            "service_policy.health_check.interval_ms",
            "at least 100 ms",
        ));
    }
    if !p.hash.header.is_empty()
        && (p.hash.header.len() > HEADER_NAME_BYTES as usize
            || http::HeaderName::from_bytes(p.hash.header.as_bytes()).is_err())
    {
        return Err(invalid(
            "service_policy.hash.header",
            format!("{:?} is not a header name", p.hash.header),
        ));
    }
    fallback_services(p)?;
    scaling::scaling(&p.scaling)?;
    concurrency::concurrency(&p.concurrency)?;
    rate_limit::rate_limit(&p.rate_limit)?;
    adaptive::adaptive(&p.adaptive)?;
    request_limits::request_limits(&p.limits)?;
    endpoint_limits::endpoint_limits(&p.endpoint_limits)
}

/// A fallback chain: at most [`MAX_FALLBACK_SERVICES`] gRPC service names, neither the
/// service itself nor any of them twice (either would send a failing call round again).
fn fallback_services(p: &ServicePolicy) -> Result<(), Invalid> {
    let chain = &p.fallback_services;
    if chain.len() > MAX_FALLBACK_SERVICES {
        return Err(invalid(
            "service_policy.fallback_services",
            format!(
                "{} services exceed the limit of {MAX_FALLBACK_SERVICES}",
                chain.len()
            ),
        ));
    }
    for (i, fallback) in chain.iter().enumerate() {
        let field = format!("service_policy.fallback_services[{i}]");
        service_name(&field, fallback)?;
        if *fallback == p.name {
            return Err(invalid(
                field,
                format!("{fallback:?} is the service itself; name other services"),
            ));
        }
        if chain[..i].contains(fallback) {
            return Err(invalid(field, format!("{fallback:?} is listed twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
