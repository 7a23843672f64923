//! The figures not yet delivered to the control plane, and the `LoadReport` made of them:
//! per (node, service) load, and per rate-limited (service, tier) demand.
//!
//! Each interval the reporter [`Undelivered::gather`]s every (node, service)'s figures
//! into this set; a report is built from all of it, and only the control plane's answer
//! clears it ([`Undelivered::delivered`]). A report whose answer never came (the stream
//! broke) is therefore merged into the next one: nothing is lost, and its interval
//! simply covers the whole span since the last delivered report. The cost is that a
//! report the control plane received but could not answer is counted twice; that is
//! rare (the stream broke in the few milliseconds between the two) and errs on the side of
//! more load, which scaling tolerates better than missing load.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1 as pb;
use tokio::time::Instant;

use super::orca::OrcaFigures;
use super::stats::{CallLoad, IntervalFigures};
use crate::table::{ProxyIdentity, ProxyTable};

/// (node id, service).
type Key = (String, String);

/// (service, rate-limit tier).
type TierKey = (String, String);

/// The shortest span a report may cover: the control plane refuses a report claiming
/// less (its `MIN_INTERVAL_MS`), since rates over a few milliseconds mean nothing.
pub const MIN_SPAN: Duration = Duration::from_millis(100);

/// Figures gathered since the last delivered report.
#[derive(Debug)]
pub struct Undelivered {
    /// When the span these figures cover began (the last delivery).
    since: Instant,
    figures: HashMap<Key, IntervalFigures>,
    /// Every load seen in a table, kept one more interval after it leaves the table so
    /// the calls it finished meanwhile are reported.
    known: HashMap<Key, Arc<CallLoad>>,
    /// Calls admitted and refused per rate-limited (service, tier): the demand the
    /// control plane apportions rate limits by.
    demand: HashMap<TierKey, (u64, u64)>,
}

// === impl Undelivered ===

impl Undelivered {
    pub fn new(now: Instant) -> Self {
        Undelivered {
            since: now,
            figures: HashMap::new(),
            known: HashMap::new(),
            demand: HashMap::new(),
        }
    }

    /// Takes the figures of every load in `table` (and of loads that left it) and adds
    /// them to what is undelivered.
    pub fn gather(&mut self, table: Option<&ProxyTable>) {
        let mut current: HashMap<Key, Arc<CallLoad>> = HashMap::new();
        for load in table.into_iter().flat_map(ProxyTable::loads) {
            current.insert(
                (load.node_id.clone(), load.service.clone()),
                Arc::clone(load),
            );
        }
        // Loads no longer in the table, or replaced by another: taken one last time.
        for (key, load) in self.known.drain() {
            let same = current.get(&key).is_some_and(|c| Arc::ptr_eq(c, &load));
            if !same {
                merge_into(&mut self.figures, key, load.take());
            }
        }
        for (key, load) in &current {
            merge_into(&mut self.figures, key.clone(), load.take());
        }
        self.known = current;
        // A limiter replaced by a policy change takes its last counts with it.
        for limiter in table.into_iter().flat_map(ProxyTable::rate_limiters) {
            for tier in limiter.tiers() {
                let (admitted, refused) = tier.take_counts();
                let key = (limiter.service().to_owned(), tier.name.clone());
                let entry = self.demand.entry(key).or_default();
                entry.0 += admitted;
                entry.1 += refused;
            }
        }
    }

    /// The report of everything undelivered, as of `now`.
    pub fn report(
        &self,
        identity: &ProxyIdentity,
        table: Option<&ProxyTable>,
        now: Instant,
    ) -> pb::LoadReport {
        let interval = now
            .saturating_duration_since(self.since)
            .max(Duration::from_millis(1));
        let mut endpoints: Vec<pb::EndpointLoad> = self
            .figures
            .iter()
            .filter(|(_, figures)| figures.is_active())
            .map(|((node, service), figures)| {
                let ewma = table
                    .and_then(|t| t.endpoint(node))
                    .map(|e| e.ewma.estimate())
                    .unwrap_or_default();
                endpoint_load(node, service, figures, interval, ewma)
            })
            .collect();
        endpoints.sort_by(|a, b| (&a.node_id, &a.service).cmp(&(&b.node_id, &b.service)));
        let mut tier_demand: Vec<pb::TierDemand> = self
            .demand
            .iter()
            .map(|((service, tier), (admitted, refused))| pb::TierDemand {
                service: service.clone(),
                tier: tier.clone(),
                admitted: *admitted,
                refused: *refused,
            })
            .collect();
        tier_demand.sort_by(|a, b| (&a.service, &a.tier).cmp(&(&b.service, &b.tier)));
        pb::LoadReport {
            tier_demand,
            proxy_id: identity.id.clone(),
            federation: identity.federation.clone(),
            region: identity.region.clone(),
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            endpoints,
        }
    }

    /// The earliest a report of these figures may go: once they cover [`MIN_SPAN`]
    /// (the first report of a proxy just started, or of a stream opened just after a
    /// delivery, waits that long).
    pub fn ready_at(&self) -> Instant {
        self.since + MIN_SPAN
    }

    /// The control plane answered the last report: its figures are delivered.
    pub fn delivered(&mut self, now: Instant) {
        self.figures.clear();
        self.demand.clear();
        self.since = now;
    }
}

fn merge_into(figures: &mut HashMap<Key, IntervalFigures>, key: Key, taken: IntervalFigures) {
    match figures.get_mut(&key) {
        Some(earlier) => earlier.merge(taken),
        None if taken.is_active() => {
            figures.insert(key, taken);
        }
        None => {}
    }
}

fn endpoint_load(
    node: &str,
    service: &str,
    figures: &IntervalFigures,
    interval: Duration,
    ewma: Duration,
) -> pb::EndpointLoad {
    let (latency_bucket_index, latency_bucket_count) = figures.latency.to_sparse();
    let percentile = |q| figures.latency.quantile_micros(q).unwrap_or(0.0).round() as u64;
    pb::EndpointLoad {
        node_id: node.to_owned(),
        service: service.to_owned(),
        requests: figures.latency.count(),
        errors: figures.errors,
        in_flight: figures.in_flight,
        latency_p50_us: percentile(0.5),
        latency_p99_us: percentile(0.99),
        ewma_us: u64::try_from(ewma.as_micros()).unwrap_or(u64::MAX),
        in_flight_max: figures.in_flight_max,
        in_flight_mean_milli: figures.in_flight_mean_milli(interval),
        latency_bucket_index,
        latency_bucket_count,
        orca: figures.orca.map(orca_summary),
    }
}

fn orca_summary(orca: OrcaFigures) -> pb::OrcaSummary {
    pb::OrcaSummary {
        cpu_utilization: orca.cpu_utilization,
        application_utilization: orca.application_utilization,
        mem_utilization: orca.mem_utilization,
        rps: orca.rps,
        reports: orca.reports,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use meridian_shared::domain::{Node, NodeStatus};

    use super::*;
    use crate::endpoint::UpstreamSettings;
    use crate::table::{TableData, TableSource};

    pub(in crate::load_report) const ECHO: &str = "demo.v1.Echo";
    const HANDLER: &str = "meridian.v1.MessageHandler";

    pub(in crate::load_report) fn identity() -> ProxyIdentity {
        ProxyIdentity {
            id: "proxy-1".into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
        }
    }

    /// A table of version `version` whose nodes serve both services.
    pub(in crate::load_report) fn table(
        version: u64,
        nodes: &[&str],
        previous: Option<&ProxyTable>,
    ) -> ProxyTable {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let node = Node {
                    id: (*id).to_owned(),
                    address: format!("127.0.0.1:{}", 9000 + i),
                    region: "eu-west".into(),
                    services: vec![ECHO.into(), HANDLER.into()],
                    status: NodeStatus::Healthy,
                    ..Default::default()
                };
                ((*id).to_owned(), node)
            })
            .collect();
        let data = TableData {
            version,
            federation: "prod".into(),
            nodes,
            ..Default::default()
        };
        ProxyTable::build(
            data,
            &identity(),
            previous,
            TableSource::Stream,
            &UpstreamSettings::default(),
        )
    }

    pub(in crate::load_report) fn load_of(
        table: &ProxyTable,
        service: &str,
        node: &str,
    ) -> Arc<CallLoad> {
        Arc::clone(&table.service(service).unwrap().metrics_of(node).load)
    }

    fn entry<'a>(report: &'a pb::LoadReport, node: &str, service: &str) -> &'a pb::EndpointLoad {
        report
            .endpoints
            .iter()
            .find(|e| e.node_id == node && e.service == service)
            .unwrap_or_else(|| panic!("no entry for {node} {service} in {report:?}"))
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_report_waits_until_it_covers_the_shortest_span_the_control_plane_takes() {
        let started = Instant::now();
        let undelivered = Undelivered::new(started);
        tokio::time::sleep_until(undelivered.ready_at()).await;
        let report = undelivered.report(&identity(), None, Instant::now());
        // The control plane refuses reports under 100 ms (its MIN_INTERVAL_MS).
        assert_eq!(report.interval_ms, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_has_one_entry_per_node_and_service_with_traffic() {
        let table = table(1, &["eu-1", "eu-2"], None);
        let mut undelivered = Undelivered::new(Instant::now());
        for _ in 0..3 {
            load_of(&table, ECHO, "eu-1").record(0, Duration::from_millis(2));
        }
        load_of(&table, HANDLER, "eu-1").record(14, Duration::from_millis(5));
        tokio::time::advance(Duration::from_secs(5)).await;

        undelivered.gather(Some(&table));
        let report = undelivered.report(&identity(), Some(&table), Instant::now());
        assert_eq!(report.proxy_id, "proxy-1");
        assert_eq!(report.federation, "prod");
        assert_eq!(report.region, "eu-west");
        assert_eq!(report.interval_ms, 5_000);
        assert_eq!(report.endpoints.len(), 2, "eu-2 had no traffic: {report:?}");
        let echo = entry(&report, "eu-1", ECHO);
        assert_eq!((echo.requests, echo.errors), (3, 0));
        assert_eq!(echo.latency_bucket_count.iter().sum::<u64>(), 3);
        assert!(echo.latency_p50_us > 1_800 && echo.latency_p50_us < 2_200);
        assert_eq!(echo.orca, None);
        let handler = entry(&report, "eu-1", HANDLER);
        assert_eq!((handler.requests, handler.errors), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_report_carries_each_tiers_demand_until_delivered() {
        use meridian_shared::domain::{RateLimitPolicy, RateLimitTier, ServicePolicy};

        let mut data = table(1, &["eu-1"], None).data.clone();
        let tier = |name: &str| RateLimitTier {
            name: name.into(),
            calls_per_second: 1.0,
            burst: 2,
        };
        data.services.insert(
            ECHO.into(),
            ServicePolicy {
                name: ECHO.into(),
                rate_limit: RateLimitPolicy {
                    tiers: vec![tier("free"), tier("pro")],
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let table = ProxyTable::build(
            data,
            &identity(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let limiter = &table.service(ECHO).unwrap().rate_limit;
        let free = http::HeaderMap::new();
        let outcomes: Vec<bool> = (0..5).map(|_| limiter.admit(&free).is_ok()).collect();
        let mut undelivered = Undelivered::new(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        undelivered.gather(Some(&table));
        let report = undelivered.report(&identity(), Some(&table), Instant::now());
        let demand: Vec<_> = report
            .tier_demand
            .iter()
            .map(|d| (d.tier.as_str(), d.admitted, d.refused))
            .collect();
        let admitted = outcomes.iter().filter(|ok| **ok).count() as u64;
        assert!((1..5).contains(&admitted), "{outcomes:?}");
        assert_eq!(demand, [("free", admitted, 5 - admitted), ("pro", 0, 0)]);

        undelivered.delivered(Instant::now());
        undelivered.gather(Some(&table));
        let report = undelivered.report(&identity(), Some(&table), Instant::now());
        assert!(
            report
                .tier_demand
                .iter()
                .all(|d| d.admitted + d.refused == 0),
            "delivered demand is not sent twice: {report:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_report_is_merged_into_the_next() {
        let table = table(1, &["eu-1"], None);
        let load = load_of(&table, ECHO, "eu-1");
        let mut undelivered = Undelivered::new(Instant::now());
        load.record(0, Duration::from_millis(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        undelivered.gather(Some(&table));
        let lost = undelivered.report(&identity(), Some(&table), Instant::now());
        assert_eq!(entry(&lost, "eu-1", ECHO).requests, 1);

        // No answer came: the next report carries both intervals.
        load.record(0, Duration::from_millis(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        undelivered.gather(Some(&table));
        let next = undelivered.report(&identity(), Some(&table), Instant::now());
        assert_eq!(entry(&next, "eu-1", ECHO).requests, 2);
        assert_eq!(next.interval_ms, 2_000);

        // Answered: the figures are gone and the next interval starts now.
        undelivered.delivered(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        undelivered.gather(Some(&table));
        let after = undelivered.report(&identity(), Some(&table), Instant::now());
        assert!(after.endpoints.is_empty(), "{after:?}");
        assert_eq!(after.interval_ms, 1_000);
    }

    #[tokio::test(start_paused = true)]
    async fn figures_survive_a_table_update_and_a_removed_node_is_reported_once_more() {
        let first = table(1, &["eu-1", "eu-2"], None);
        let mut undelivered = Undelivered::new(Instant::now());
        undelivered.gather(Some(&first));
        let eu1 = load_of(&first, ECHO, "eu-1");
        let eu2 = load_of(&first, ECHO, "eu-2");
        eu1.record(0, Duration::from_millis(1));
        eu2.record(0, Duration::from_millis(1));

        // Version 2 drops eu-2; calls it finished before that are still reported.
        let second = table(2, &["eu-1"], Some(&first));
        assert!(
            Arc::ptr_eq(&eu1, &load_of(&second, ECHO, "eu-1")),
            "eu-1's figures carry over"
        );
        eu1.record(0, Duration::from_millis(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        undelivered.gather(Some(&second));
        let report = undelivered.report(&identity(), Some(&second), Instant::now());
        assert_eq!(entry(&report, "eu-1", ECHO).requests, 2);
        assert_eq!(entry(&report, "eu-2", ECHO).requests, 1);
        undelivered.delivered(Instant::now());

        undelivered.gather(Some(&second));
        let report = undelivered.report(&identity(), Some(&second), Instant::now());
        assert!(report.endpoints.is_empty(), "eu-2 is forgotten: {report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_with_calls_in_flight_is_reported_without_finished_calls() {
        let table = table(1, &["eu-1"], None);
        let load = load_of(&table, ECHO, "eu-1");
        let mut undelivered = Undelivered::new(Instant::now());
        let _held = load.start();
        tokio::time::advance(Duration::from_secs(2)).await;
        undelivered.gather(Some(&table));
        let report = undelivered.report(&identity(), Some(&table), Instant::now());
        let echo = entry(&report, "eu-1", ECHO);
        assert_eq!(
            (echo.requests, echo.in_flight, echo.in_flight_max),
            (0, 1, 1)
        );
        assert_eq!(echo.in_flight_mean_milli, 1_000);
        assert_eq!(
            echo.ewma_us, 1_000,
            "the untouched latency estimate's seed, 1 ms"
        );
    }
}
