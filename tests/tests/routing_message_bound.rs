//! The size bounds of `TopologyLimits` hold: objects filled to every limit encode within
//! them, so a proxy whose decode limit is `routing_message_limit()` takes any routing
//! table the control plane's limits let through.

use meridian_proto::v1 as pb;
use meridian_shared::domain::TopologyLimits;
use meridian_shared::domain::limits::{
    ACTOR_BYTES, ADDRESS_BYTES, HEADER_NAME_BYTES, MAX_RATE_LIMIT_TIERS, MAX_ROUTING_MESSAGE_BYTES,
    METHOD_NAME_BYTES, NAME_BYTES, SERVICE_NAME_BYTES, routing_message_limit,
};
use prost::Message;

fn text(len: u64, tag: usize) -> String {
    let tag = format!("{tag:08}");
    let mut s = "x".repeat(len as usize - tag.len());
    s.push_str(&tag);
    s
}

fn name(tag: usize) -> String {
    text(NAME_BYTES, tag)
}

/// The widest `google.protobuf.Timestamp`, built from its encoding so this crate needs no
/// prost-types.
fn timestamp<T: Message + Default>() -> Option<T> {
    let mut bytes = Vec::new();
    prost::encoding::int64::encode(1, &i64::MAX, &mut bytes);
    prost::encoding::int32::encode(2, &999_999_999, &mut bytes);
    Some(T::decode(bytes.as_slice()).expect("a timestamp"))
}

fn labels(l: &TopologyLimits) -> std::collections::HashMap<String, String> {
    (0..l.max_labels as usize)
        .map(|i| {
            (
                text(l.max_label_key_bytes.into(), i),
                text(l.max_label_value_bytes.into(), i),
            )
        })
        .collect()
}

fn node(l: &TopologyLimits, i: usize) -> pb::Node {
    pb::Node {
        id: name(i),
        address: text(ADDRESS_BYTES, i),
        federation: name(0),
        region: name(0),
        zone: name(0),
        services: (0..l.max_services_per_node as usize)
            .map(|s| text(SERVICE_NAME_BYTES, s))
            .collect(),
        weight: u32::MAX,
        capacity: u32::MAX,
        labels: labels(l),
        status: i32::MAX,
        status_reason: text(l.max_text_bytes.into(), i),
        status_since: timestamp(),
        registration: i32::MAX,
    }
}

fn region(l: &TopologyLimits, i: usize) -> pb::Region {
    pb::Region {
        name: name(i),
        federation: name(0),
        location: Some(pb::GeoPoint {
            latitude: -90.0,
            longitude: 180.0,
        }),
        zones: (0..l.max_zones_per_region as usize).map(name).collect(),
        labels: labels(l),
    }
}

fn service(l: &TopologyLimits, i: usize) -> pb::ServicePolicy {
    let max = u32::MAX;
    pb::ServicePolicy {
        name: text(SERVICE_NAME_BYTES, i),
        federation: name(0),
        algorithm: i32::MAX,
        failover: Some(pb::FailoverPolicy {
            tiers: (0..l.max_failover_tiers as usize)
                .map(|t| pb::FailoverTier {
                    name: name(t),
                    nodes: (0..l.max_tier_members as usize).map(name).collect(),
                    ..Default::default()
                })
                .collect(),
            overprovisioning_percent: max,
            panic_threshold_percent: max,
            auto_recovery: true,
            slow_start_ms: max,
        }),
        retry: Some(pb::RetryPolicy {
            max_attempts: max,
            idempotent_methods: (0..l.max_idempotent_methods as usize)
                .map(|m| {
                    format!(
                        "/{}/{}",
                        text(SERVICE_NAME_BYTES, m),
                        text(METHOD_NAME_BYTES, m)
                    )
                })
                .collect(),
            budget_percent: max,
            budget_min_per_second: max,
            backoff_base_ms: max,
            backoff_max_ms: max,
        }),
        timeout: Some(pb::TimeoutPolicy {
            default_timeout_ms: max,
            max_timeout_ms: max,
        }),
        outlier: Some(pb::OutlierPolicy {
            consecutive_failures: max,
            failure_rate_percent: max,
            min_requests: max,
            window_ms: max,
            base_ejection_ms: max,
            max_ejection_ms: max,
            max_ejection_percent: max,
        }),
        health_check: Some(pb::HealthCheckPolicy {
            grpc_service: text(SERVICE_NAME_BYTES, i),
            tcp_only: true,
            interval_ms: max,
            timeout_ms: max,
            unhealthy_threshold: max,
            healthy_threshold: max,
        }),
        hash: Some(pb::HashPolicy {
            header: text(HEADER_NAME_BYTES, i),
        }),
        scaling: Some(pb::ScalingPolicy {
            min_nodes: max,
            max_nodes: max,
            target_utilization_percent: max,
            tolerance_percent: max,
            scale_down_stabilization_ms: max,
            scale_up_stabilization_ms: max,
            ..Default::default()
        }),
        concurrency: Some(pb::ConcurrencyPolicy {
            kind: i32::MAX,
            limit: max,
            min_limit: max,
            max_limit: max,
            max_queue: max,
            max_queue_wait_ms: max,
            drop_strategy: i32::MAX,
            target_queue_wait_ms: max,
            sample_window_ms: max,
            min_rtt_interval_ms: max,
        }),
        limits: Some(pb::RequestLimits {
            max_message_bytes: max,
            dedup_ttl_ms: max,
            dedup_max_entries: max,
            dedup_max_bytes: u64::MAX,
            ids_are_unique: true,
        }),
        endpoint_limits: Some(pb::EndpointLimits {
            max_requests_per_endpoint: max,
            stream_idle_timeout_ms: max,
        }),
        rate_limit: Some(pb::RateLimitPolicy {
            tiers: (0..MAX_RATE_LIMIT_TIERS)
                .map(|t| pb::RateLimitTier {
                    name: name(t),
                    calls_per_second: f64::MAX,
                    burst: max,
                })
                .collect(),
            tier_header: text(HEADER_NAME_BYTES, i),
            default_tier: name(0),
        }),
        adaptive: Some(pb::AdaptivePolicy {
            choices: max,
            hot_utilization: f64::MAX,
            report_ttl_ms: max,
            ignore_node_reports: true,
            oob_report_interval_ms: max,
            probes_per_call: f64::MAX,
            probe_idle_interval_ms: max,
            probe_hot_quantile: f64::MAX,
        }),
        fallback_services: (0..meridian_shared::domain::MAX_FALLBACK_SERVICES)
            .map(|f| text(SERVICE_NAME_BYTES, i + f + 1))
            .collect(),
        global_routing: true,
    }
}

fn failover(l: &TopologyLimits, i: usize) -> pb::ActiveFailover {
    pb::ActiveFailover {
        service: text(SERVICE_NAME_BYTES, i),
        target: text(SERVICE_NAME_BYTES, i),
        reason: text(l.max_text_bytes.into(), i),
        started_by: text(ACTOR_BYTES, i),
        started_at: timestamp(),
    }
}

#[test]
fn objects_at_every_default_limit_encode_within_their_bounds() {
    let l = TopologyLimits::DEFAULT;
    let checks = [
        ("node", node(&l, 1).encoded_len() as u64, l.max_node_bytes()),
        (
            "region",
            region(&l, 1).encoded_len() as u64,
            l.max_region_bytes(),
        ),
        (
            "service",
            service(&l, 1).encoded_len() as u64,
            l.max_service_bytes(),
        ),
        (
            "failover",
            failover(&l, 1).encoded_len() as u64,
            l.max_failover_bytes(),
        ),
    ];
    for (what, encoded, bound) in checks {
        assert!(
            encoded <= bound,
            "a full {what} is {encoded} bytes, over its bound {bound}"
        );
        // Safe without being wildly loose.
        assert!(
            bound < encoded * 2,
            "the {what} bound {bound} is loose for {encoded}"
        );
    }
}

#[test]
fn a_full_table_and_delta_encode_within_the_bound() {
    // A small federation at every limit: the formula scales linearly from here.
    let l = TopologyLimits {
        max_nodes_per_federation: 40,
        max_regions_per_federation: 3,
        max_services_per_federation: 4,
        ..TopologyLimits::DEFAULT
    };
    let nodes: Vec<_> = (0..40).map(|i| node(&l, i)).collect();
    let regions: Vec<_> = (0..3).map(|i| region(&l, i)).collect();
    let services: Vec<_> = (0..4).map(|i| service(&l, i)).collect();
    let failovers: Vec<_> = (0..4).map(|i| failover(&l, i)).collect();
    let snapshot = pb::StreamRoutesResponse {
        nonce: text(64, 0),
        update: Some(pb::stream_routes_response::Update::Snapshot(
            pb::RoutingTable {
                version: u64::MAX,
                federation: name(0),
                regions: regions.clone(),
                services: services.clone(),
                nodes: nodes.clone(),
                failovers: failovers.clone(),
                generated_at: timestamp(),
            },
        )),
    };
    let delta = pb::StreamRoutesResponse {
        nonce: text(64, 0),
        update: Some(pb::stream_routes_response::Update::Delta(
            pb::RoutingDelta {
                version: u64::MAX,
                base_version: u64::MAX,
                upserted_regions: regions,
                removed_regions: (10..13).map(name).collect(),
                upserted_services: services,
                removed_services: (10..14).map(|i| text(SERVICE_NAME_BYTES, i)).collect(),
                upserted_nodes: nodes,
                removed_nodes: (100..140).map(name).collect(),
                upserted_failovers: failovers,
                removed_failovers: (10..14).map(|i| text(SERVICE_NAME_BYTES, i)).collect(),
                generated_at: timestamp(),
            },
        )),
    };
    let bound = l.max_routing_message_bytes();
    for (what, message) in [("snapshot", snapshot), ("delta", delta)] {
        let encoded = message.encoded_len() as u64;
        assert!(
            encoded <= bound,
            "a full {what} is {encoded} bytes, over {bound}"
        );
    }
}

#[test]
fn the_default_limits_fit_what_proxies_decode() {
    let bound = TopologyLimits::DEFAULT.max_routing_message_bytes();
    assert!(bound <= MAX_ROUTING_MESSAGE_BYTES);
    assert_eq!(routing_message_limit() as u64, MAX_ROUTING_MESSAGE_BYTES);
}
