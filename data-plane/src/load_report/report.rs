//! The figures not yet delivered to the control plane, and the `LoadReport` made of them.
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

/// Figures gathered since the last delivered report.
#[derive(Debug)]
pub struct Undelivered {
    /// When the span these figures cover began (the last delivery).
    since: Instant,
    figures: HashMap<Key, IntervalFigures>,
    /// Every load seen in a table, kept one more interval after it leaves the table so
    /// the calls it finished meanwhile are reported.
    known: HashMap<Key, Arc<CallLoad>>,
}

// === impl Undelivered ===

impl Undelivered {
    pub fn new(now: Instant) -> Self {
        Undelivered {
            since: now,
            figures: HashMap::new(),
            known: HashMap::new(),
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
        pb::LoadReport {
            proxy_id: identity.id.clone(),
            federation: identity.federation.clone(),
            region: identity.region.clone(),
            interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
            endpoints,
        }
    }

    /// The control plane answered the last report: its figures are delivered.
    pub fn delivered(&mut self, now: Instant) {
        self.figures.clear();
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
