//! The load window and its merging, as the autoscaler and `GetGlobalMetrics` rely on
//! them: samples expire with the window, proxies add up, percentiles are merged from
//! histograms, utilisation prefers ORCA, and rates are over the time reports cover.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use meridian_shared::latency_histogram::{BUCKETS, LatencyHistogram};

use super::merge::{self, NodeFacts};
use super::publish::{self, LoadSummary};
use super::report::{self, InvalidReport};
use super::window::{LoadWindow, MAX_PROXIES, WindowFull};

const SERVICE: &str = "demo.v1.Echo";

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
}

/// An endpoint with `calls` calls all taking `latency_us`.
fn endpoint(node: &str, calls: u64, latency_us: u64) -> pb::EndpointLoad {
    let mut histogram = LatencyHistogram::new();
    for _ in 0..calls {
        histogram.record(latency_us);
    }
    let (latency_bucket_index, latency_bucket_count) = histogram.to_sparse();
    pb::EndpointLoad {
        node_id: node.into(),
        service: SERVICE.into(),
        requests: calls,
        latency_bucket_index,
        latency_bucket_count,
        ..Default::default()
    }
}

fn report(proxy: &str, endpoints: Vec<pb::EndpointLoad>) -> pb::LoadReport {
    pb::LoadReport {
        proxy_id: proxy.into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        interval_ms: 5_000,
        endpoints,
        tier_demand: Vec::new(),
    }
}

fn record(window: &mut LoadWindow, report: &pb::LoadReport, at: SystemTime) {
    window
        .record(report::check(report).expect("a valid report"), at)
        .expect("room in the window");
}

fn facts(capacity: u32) -> HashMap<String, NodeFacts> {
    ["n1", "n2"]
        .into_iter()
        .map(|id| {
            (
                id.to_owned(),
                NodeFacts {
                    federation: "prod".into(),
                    region: if id == "n1" { "eu-west" } else { "us-east" }.into(),
                    capacity,
                },
            )
        })
        .collect()
}

// === the window ===

#[test]
fn samples_older_than_the_window_are_dropped() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    record(
        &mut window,
        &report("p1", vec![endpoint("n1", 100, 1_000)]),
        t(0),
    );
    record(
        &mut window,
        &report("p1", vec![endpoint("n1", 50, 1_000)]),
        t(30),
    );
    assert_eq!(window.nodes(t(60))[0].calls, 150);
    // At 61 s the first report ended more than 60 s ago.
    assert_eq!(window.nodes(t(61))[0].calls, 50);
    assert!(window.nodes(t(91)).is_empty(), "everything expired");
    assert_eq!(
        window.tracked(),
        (0, 0),
        "no pair or proxy is kept past the window"
    );
}

#[test]
fn proxies_add_up_per_node_and_their_in_flight_too() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    for (proxy, in_flight_milli, max) in [("p1", 2_000, 4), ("p2", 3_000, 5)] {
        let mut e = endpoint("n1", 500, 1_000);
        e.in_flight_mean_milli = in_flight_milli;
        e.in_flight_max = max;
        record(&mut window, &report(proxy, vec![e]), t(5));
    }
    let nodes = window.nodes(t(5));
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].calls, 1_000);
    assert_eq!(nodes[0].in_flight_max, 9, "each proxy's peak adds up");
    let load = merge::service_load(&[&nodes[0]], &facts(10), t(5));
    assert!((load.in_flight_per_node - 5.0).abs() < 1e-9, "{load:?}");
    assert!((load.calls_per_second - 200.0).abs() < 1e-9, "{load:?}");
    // 5 in flight on a node that takes 10.
    assert_eq!(load.utilization_percent, Some(50.0));
}

#[test]
fn a_proxy_past_the_cap_is_refused_and_changes_nothing() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    for n in 0..MAX_PROXIES {
        record(&mut window, &report(&format!("p{n}"), vec![]), t(0));
    }
    let checked = report::check(&report("late", vec![endpoint("n1", 1, 1_000)])).unwrap();
    assert_eq!(window.record(checked, t(1)), Err(WindowFull::Proxies));
    assert!(window.nodes(t(1)).is_empty());
}

// === merging ===

#[test]
fn p99_comes_from_the_merged_histogram_not_an_average() {
    // Proxy A sees 990 fast calls, proxy B 10 slow ones: 1 % of all calls are slow, so
    // the p99 is at the edge of the fast ones... and with 20 slow it is the slow value.
    let mut window = LoadWindow::new(Duration::from_secs(60));
    record(
        &mut window,
        &report("a", vec![endpoint("n1", 980, 1_000)]),
        t(5),
    );
    record(
        &mut window,
        &report("b", vec![endpoint("n1", 20, 200_000)]),
        t(5),
    );
    let nodes = window.nodes(t(5));
    let load = merge::service_load(&[&nodes[0]], &facts(0), t(5));
    let p99 = load.latency_p99_ms.unwrap();
    let p50 = load.latency_p50_ms.unwrap();
    assert!((p99 - 200.0).abs() / 200.0 < 0.07, "p99 {p99} ms");
    assert!((p50 - 1.0).abs() < 0.07, "p50 {p50} ms");
    // Averaging each proxy's p99 would have said about 100 ms.
}

#[test]
fn replicas_summaries_merge_like_one_window() {
    let mut a = LoadWindow::new(Duration::from_secs(60));
    let mut b = LoadWindow::new(Duration::from_secs(60));
    record(
        &mut a,
        &report("p1", vec![endpoint("n1", 300, 1_000)]),
        t(5),
    );
    record(
        &mut b,
        &report("p2", vec![endpoint("n1", 100, 50_000)]),
        t(5),
    );
    // Through the stored form, as another replica reads it.
    let (summary, left_out) =
        publish::summarize("cp-b", Duration::from_secs(60), b.nodes(t(5)), t(5));
    assert_eq!(left_out, 0);
    let stored: LoadSummary =
        serde_json::from_slice(&serde_json::to_vec(&summary).unwrap()).unwrap();
    let from_b: Vec<_> = stored
        .nodes
        .iter()
        .map(|n| {
            let latency =
                LatencyHistogram::from_sparse(&n.latency_bucket_index, &n.latency_bucket_count)
                    .unwrap();
            assert_eq!(latency.count(), 100);
            n.calls
        })
        .collect();
    assert_eq!(from_b, [100]);
    let mut all = a.nodes(t(5));
    all.extend(b.nodes(t(5)));
    let merged = merge::combine(all);
    assert_eq!(merged.len(), 1, "one entry per (service, node)");
    assert_eq!(merged[0].calls, 400);
    assert_eq!(merged[0].latency.count(), 400);
}

#[test]
fn orca_utilisation_wins_over_in_flight_and_application_over_cpu() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    let mut with_orca = endpoint("n1", 10, 1_000);
    with_orca.in_flight_mean_milli = 9_000;
    with_orca.orca = Some(pb::OrcaSummary {
        cpu_utilization: 0.9,
        application_utilization: 0.4,
        reports: 10,
        ..Default::default()
    });
    let mut cpu_only = endpoint("n2", 10, 1_000);
    cpu_only.orca = Some(pb::OrcaSummary {
        cpu_utilization: 0.7,
        reports: 10,
        ..Default::default()
    });
    record(&mut window, &report("p1", vec![with_orca, cpu_only]), t(5));
    let nodes = window.nodes(t(5));
    let by_node: HashMap<&str, _> = nodes.iter().map(|n| (n.node.as_str(), n)).collect();
    assert_eq!(merge::node_utilization(by_node["n1"], 10, t(5)), Some(40.0));
    let cpu = merge::node_utilization(by_node["n2"], 10, t(5)).unwrap();
    assert!((cpu - 70.0).abs() < 1e-9, "{cpu}");
    // Without ORCA and without a capacity nothing is known.
    let mut window = LoadWindow::new(Duration::from_secs(60));
    record(
        &mut window,
        &report("p1", vec![endpoint("n1", 10, 1_000)]),
        t(5),
    );
    assert_eq!(
        merge::node_utilization(&window.nodes(t(5))[0], 0, t(5)),
        None
    );
}

#[test]
fn an_idle_node_reporting_orca_zeros_is_at_zero_utilisation() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    let mut idle = endpoint("n1", 10, 1_000);
    idle.orca = Some(pb::OrcaSummary {
        reports: 10,
        ..Default::default()
    });
    record(&mut window, &report("p1", vec![idle]), t(5));
    let nodes = window.nodes(t(5));
    assert_eq!(merge::node_utilization(&nodes[0], 0, t(5)), Some(0.0));
}

#[test]
fn a_summary_without_trailers_is_no_orca_measurement() {
    let mut e = endpoint("n1", 10, 1_000);
    e.orca = Some(pb::OrcaSummary {
        cpu_utilization: 0.5,
        reports: 0,
        ..Default::default()
    });
    let checked = report::check(&report("p1", vec![e])).unwrap();
    assert_eq!(checked.endpoints[0].orca, None);
}

#[test]
fn a_fresh_burst_is_not_diluted_over_the_whole_window() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    record(
        &mut window,
        &report("p1", vec![endpoint("n1", 5_000, 1_000)]),
        t(100),
    );
    let nodes = window.nodes(t(100));
    let load = merge::service_load(&[&nodes[0]], &facts(0), t(100));
    assert!((load.calls_per_second - 1_000.0).abs() < 1e-6, "{load:?}");
    assert_eq!(load.window, Duration::from_secs(5));
    // Before the next report is due (within two intervals) the rate holds...
    let nodes = window.nodes(t(109));
    let load = merge::service_load(&[&nodes[0]], &facts(0), t(109));
    assert!((load.calls_per_second - 1_000.0).abs() < 1e-6, "{load:?}");
    // ...after that, silence counts: of 20 s of quiet since the report, all but two
    // intervals (10 s), so 5,000 calls over 15 s.
    let nodes = window.nodes(t(120));
    let load = merge::service_load(&[&nodes[0]], &facts(0), t(120));
    assert_eq!(load.window, Duration::from_secs(15));
    assert!(
        (load.calls_per_second - 5_000.0 / 15.0).abs() < 1e-6,
        "{load:?}"
    );
}

#[test]
fn by_region_uses_the_nodes_region_from_the_topology() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    record(
        &mut window,
        &report(
            "p1",
            vec![
                endpoint("n1", 100, 1_000),
                endpoint("n2", 400, 1_000),
                endpoint("gone", 5, 1_000),
            ],
        ),
        t(5),
    );
    let nodes = window.nodes(t(5));
    let regions = merge::by_service_and_region(&nodes, &facts(0), t(5));
    let keys: Vec<_> = regions
        .keys()
        .map(|(s, r)| (s.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        keys,
        [(SERVICE, ""), (SERVICE, "eu-west"), (SERVICE, "us-east")]
    );
    assert!((regions[&(SERVICE.into(), "us-east".into())].calls_per_second - 80.0).abs() < 1e-9);
    let all = merge::by_service(&nodes, &facts(0), t(5));
    assert_eq!(all[SERVICE].nodes_reporting, 3);
    assert!((all[SERVICE].calls_per_second - 101.0).abs() < 1e-9);
}

#[test]
fn an_oversized_summary_keeps_the_busiest_nodes() {
    let mut window = LoadWindow::new(Duration::from_secs(60));
    let endpoints: Vec<_> = (0..2_000u64)
        .map(|n| {
            // Every bucket used: the largest record a node can have.
            let mut e = endpoint(&format!("n{n}"), 0, 0);
            e.latency_bucket_index = (0..BUCKETS as u32).collect();
            e.latency_bucket_count = vec![1 + n; BUCKETS];
            e.requests = 1 + n;
            e
        })
        .collect();
    record(&mut window, &report("p1", endpoints), t(5));
    let (summary, left_out) =
        publish::summarize("cp", Duration::from_secs(60), window.nodes(t(5)), t(5));
    assert!(left_out > 0, "2,000 full histograms do not fit");
    assert!(serde_json::to_vec(&summary).unwrap().len() <= publish::MAX_SUMMARY_BYTES);
    let least_kept = summary.nodes.iter().map(|n| n.calls).min().unwrap();
    assert_eq!(
        least_kept,
        2_000 - summary.nodes.len() as u64 + 1,
        "the busiest are kept"
    );
}

// === report checks ===

#[test]
fn every_bad_field_is_refused_by_name() {
    let good = report("p1", vec![endpoint("n1", 10, 1_000)]);
    assert!(report::check(&good).is_ok());
    type Spoil = Box<dyn Fn(&mut pb::LoadReport)>;
    let cases: Vec<(&str, Spoil)> = vec![
        ("proxy_id", Box::new(|r| r.proxy_id.clear())),
        ("proxy_id", Box::new(|r| r.proxy_id = "x".repeat(64))),
        ("federation", Box::new(|r| r.federation = "f".repeat(64))),
        ("region", Box::new(|r| r.region = "r".repeat(64))),
        ("interval_ms", Box::new(|r| r.interval_ms = 0)),
        ("interval_ms", Box::new(|r| r.interval_ms = 3_600_000)),
        (
            "endpoints:",
            Box::new(|r| {
                r.endpoints = vec![endpoint("n1", 0, 0); report::MAX_ENDPOINTS_PER_REPORT + 1]
            }),
        ),
        (
            "endpoints[0].node_id",
            Box::new(|r| r.endpoints[0].node_id.clear()),
        ),
        (
            "endpoints[0].node_id",
            Box::new(|r| r.endpoints[0].node_id = "n".repeat(64)),
        ),
        (
            "endpoints[0].service",
            Box::new(|r| r.endpoints[0].service = "s".repeat(256)),
        ),
        (
            "endpoints[0].errors",
            Box::new(|r| r.endpoints[0].errors = 11),
        ),
        (
            "endpoints[0].latency_bucket_count",
            Box::new(|r| r.endpoints[0].latency_bucket_count.push(1)),
        ),
        (
            "endpoints[0].latency_bucket_index",
            Box::new(|r| {
                r.endpoints[0].latency_bucket_index = vec![BUCKETS as u32];
                r.endpoints[0].latency_bucket_count = vec![1];
            }),
        ),
        (
            "endpoints[0].latency_bucket_index",
            Box::new(|r| {
                r.endpoints[0].latency_bucket_index = vec![0; BUCKETS + 1];
                r.endpoints[0].latency_bucket_count = vec![1; BUCKETS + 1];
            }),
        ),
        (
            "endpoints[0].orca.cpu_utilization",
            Box::new(|r| {
                r.endpoints[0].orca = Some(pb::OrcaSummary {
                    cpu_utilization: f64::NAN,
                    reports: 1,
                    ..Default::default()
                })
            }),
        ),
        (
            "endpoints[0].orca.application_utilization",
            Box::new(|r| {
                r.endpoints[0].orca = Some(pb::OrcaSummary {
                    application_utilization: -0.1,
                    reports: 1,
                    ..Default::default()
                })
            }),
        ),
        (
            "endpoints[0].orca.rps",
            Box::new(|r| {
                r.endpoints[0].orca = Some(pb::OrcaSummary {
                    rps: f64::INFINITY,
                    reports: 1,
                    ..Default::default()
                })
            }),
        ),
    ];
    for (field, spoil) in cases {
        let mut bad = good.clone();
        spoil(&mut bad);
        let err: InvalidReport = report::check(&bad).expect_err(field);
        assert!(err.to_string().starts_with(field), "{field}: {err}");
    }
}

// === publishing ===

#[tokio::test]
async fn another_replica_sees_the_reports_through_one_store_write_per_interval() {
    use std::sync::Arc;

    use meridian_shared::Shutdown;

    use super::{LoadAggregator, publish::publish_until};
    use crate::dynconfig::DynamicConfig;
    use crate::keys::{self, Keys, Kind};
    use crate::replica_lease::ReplicaLease;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Store, Txn};
    use crate::topology::StateFollower;
    use meridian_shared::domain::Node;

    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
    let keys = Keys::new("/t/");
    let shutdown = Shutdown::new();
    // Reports (and summaries) every 200 ms, so the test takes seconds.
    let config = DynamicConfig {
        load_report_interval_ms: 200,
        ..Default::default()
    };
    let node = |id: &str, federation: &str| Node {
        id: id.into(),
        federation: federation.into(),
        region: "eu-west".into(),
        services: vec![SERVICE.into()],
        ..Default::default()
    };
    let txn = Txn::new()
        .put(keys.config(), keys::encode(&config))
        .put(
            keys.key(Kind::Node, "n1"),
            keys::encode(&node("n1", "prod")),
        )
        .put(
            keys.key(Kind::Node, "x1"),
            keys::encode(&node("x1", "other")),
        );
    store.txn(txn).await.unwrap();
    let (follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
    tokio::spawn(follower.run(shutdown.clone()));
    let mut loaded = state.subscribe();
    loaded
        .wait_for(|s| s.config.value.load_report_interval_ms == 200 && s.nodes.len() == 2)
        .await
        .unwrap();
    let replica = |name: &str| {
        LoadAggregator::new(name.into(), keys.clone(), Arc::clone(&store), state.clone())
    };
    let (a, b) = (replica("cp-a"), replica("cp-b"));
    let lease = ReplicaLease::start(Arc::clone(&store), shutdown.clone());
    tokio::spawn(publish_until(a.clone(), lease, shutdown.clone()));

    // x1 is another federation's node: a proxy of prod cannot report on it, nor on a
    // node that does not exist.
    let endpoints = vec![
        endpoint("n1", 500, 1_000),
        endpoint("x1", 500, 1_000),
        endpoint("made-up", 500, 1_000),
    ];
    a.record(report::check(&report("p1", endpoints)).unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        if let Some(load) = b.view().services().await.remove(SERVICE) {
            break load;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica b never saw replica a's report"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen.nodes_reporting, 1, "only prod's own node counts");
    // 500 calls over the 5 s the report says it covers.
    assert!((seen.calls_per_second - 100.0).abs() < 5.0, "{seen:?}");

    // About one write per interval, however often the view is read.
    let before = store.revision().await.unwrap();
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        b.view().services().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let writes = store.revision().await.unwrap() - before;
    assert!((7..=12).contains(&writes), "{writes} store writes in 2 s");
    shutdown.trigger();
}
