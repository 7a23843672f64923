//! Load aggregation: what the proxies' `ReportLoad` streams say about each service.
//!
//! Every replica keeps a sliding [`window`] of the reports it receives (checked by
//! [`report`]), and [`publish`]es a compact summary of it under `{prefix}v1/load/{replica}`
//! once per report interval. [`LoadView`] answers for the whole federation: this
//! replica's window, fresh from memory, [`merge`]d with the other replicas' stored
//! summaries (read with one prefix get, cached for a report interval). A new leader reads
//! those summaries on its first question, so it starts warm.
//!
//! The window is [`WINDOW`] long (a constant: long enough for a stable rate, short
//! enough that the autoscaler sees a change within a minute). Rates are over the time
//! the samples cover, not the nominal window (see [`merge`]).
//!
//! Operators see the aggregation on `/metrics`: `meridian_control_load_pairs` and
//! `meridian_control_load_proxies` (what the window tracks, against its caps),
//! `meridian_control_load_reports_truncated_total` (reports the caps cut short) and
//! `meridian_control_load_endpoints_ignored_total` (endpoints naming nodes outside the
//! report's federation, or none at all).

pub mod merge;
pub mod publish;
pub mod report;
pub mod window;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use self::publish::LoadSummary;
use self::report::CheckedReport;
use self::window::{LoadWindow, NodeLoad, WindowFull};
use super::ServiceLoad;
use crate::dynconfig::DynamicConfig;
use crate::keys::Keys;
use crate::store::Store;
use crate::topology::StateHandle;

/// How far back load figures reach.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The report interval when the dynamic configuration leaves it at 0.
pub const DEFAULT_REPORT_INTERVAL_MS: u32 = 5_000;

/// The interval proxies are asked to report at (and summaries are published at).
pub fn report_interval_ms(config: &DynamicConfig) -> u32 {
    match config.load_report_interval_ms {
        0 => DEFAULT_REPORT_INTERVAL_MS,
        ms => ms,
    }
}

struct Shared {
    replica: String,
    keys: Keys,
    store: Arc<dyn Store>,
    state: StateHandle,
    window: Mutex<LoadWindow>,
    /// The other replicas' node loads and when they were read.
    others: tokio::sync::Mutex<Option<(Instant, Vec<NodeLoad>)>>,
    last_full_warning: Mutex<Option<Instant>>,
}

/// This replica's aggregator: takes in checked reports, publishes its summary, and
/// hands out [`LoadView`]s.
#[derive(Clone)]
pub struct LoadAggregator {
    shared: Arc<Shared>,
}

impl LoadAggregator {
    pub fn new(replica: String, keys: Keys, store: Arc<dyn Store>, state: StateHandle) -> Self {
        LoadAggregator {
            shared: Arc::new(Shared {
                replica,
                keys,
                store,
                state,
                window: Mutex::new(LoadWindow::new(WINDOW)),
                others: tokio::sync::Mutex::new(None),
                last_full_warning: Mutex::new(None),
            }),
        }
    }

    /// Adds a report received now. Endpoints of nodes this replica's topology does not
    /// place in the report's federation are left out: a proxy credential scoped to one
    /// federation cannot change another's load figures, nor invent nodes. What the window
    /// has no room for is logged (at most once per [`WINDOW`]), not refused: the proxy
    /// did nothing wrong.
    pub fn record(&self, mut report: CheckedReport) {
        let before = report.endpoints.len();
        {
            let state = self.shared.state.borrow();
            report.endpoints.retain(|e| {
                state
                    .nodes
                    .get(&e.node_id)
                    .is_some_and(|n| n.value.federation == report.federation)
            });
        }
        let foreign = before - report.endpoints.len();
        if foreign > 0 {
            metrics::counter!("meridian_control_load_endpoints_ignored_total")
                .increment(foreign as u64);
            tracing::debug!(proxy = %report.proxy_id, federation = %report.federation, foreign, "load report names nodes not in its federation; those endpoints are ignored");
        }
        let proxy = report.proxy_id.clone();
        if let Err(full) = self.shared.record(report, SystemTime::now()) {
            metrics::counter!("meridian_control_load_reports_truncated_total").increment(1);
            self.shared.warn_full(&proxy, full);
        }
    }

    pub fn view(&self) -> LoadView {
        LoadView {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn report_interval(&self) -> Duration {
        self.shared.report_interval()
    }

    /// This replica's summary at `now`, and how many nodes did not fit in it.
    pub fn summary(&self, now: SystemTime) -> (LoadSummary, usize) {
        let nodes = self.shared.local(now);
        publish::summarize(&self.shared.replica, WINDOW, nodes, now)
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.shared.keys
    }
}

impl Shared {
    fn record(&self, report: CheckedReport, now: SystemTime) -> Result<(), WindowFull> {
        let mut window = self.lock();
        let result = window.record(report, now);
        let (pairs, proxies) = window.tracked();
        drop(window);
        metrics::gauge!("meridian_control_load_pairs").set(pairs as f64);
        metrics::gauge!("meridian_control_load_proxies").set(proxies as f64);
        result
    }

    fn warn_full(&self, proxy: &str, full: WindowFull) {
        let mut last = self
            .last_full_warning
            .lock()
            .expect("warning lock poisoned");
        if last.is_some_and(|at| at.elapsed() < WINDOW) {
            return;
        }
        *last = Some(Instant::now());
        tracing::warn!(
            proxy,
            "load report only partly aggregated: {full}; load figures and scaling decisions miss that traffic (meridian_control_load_reports_truncated_total counts such reports)"
        );
    }

    fn local(&self, now: SystemTime) -> Vec<NodeLoad> {
        self.lock().nodes(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LoadWindow> {
        self.window.lock().expect("load window lock poisoned")
    }

    fn report_interval(&self) -> Duration {
        let ms = report_interval_ms(&self.state.borrow().config.value);
        Duration::from_millis(u64::from(ms))
    }

    /// The other replicas' node loads, read from the store at most once per report
    /// interval; none when the store cannot be read (then this replica's own only).
    async fn others(&self, now: SystemTime) -> Vec<NodeLoad> {
        let mut cached = self.others.lock().await;
        if let Some((read_at, loads)) = cached.as_ref()
            && read_at.elapsed() < self.report_interval()
        {
            return loads.clone();
        }
        match publish::read_others(&*self.store, &self.keys, &self.replica, WINDOW, now).await {
            Ok(loads) => {
                *cached = Some((Instant::now(), loads.clone()));
                loads
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the other replicas' load summaries; load figures show this replica's reports only");
                Vec::new()
            }
        }
    }

    /// Every replica's node loads, one entry per (service, node).
    async fn all(&self, now: SystemTime) -> Vec<NodeLoad> {
        let mut loads = self.local(now);
        loads.extend(self.others(now).await);
        merge::combine(loads)
    }
}

/// The federation's load as the autoscaler and `GetGlobalMetrics` see it. Cheap to
/// clone.
#[derive(Clone)]
pub struct LoadView {
    shared: Arc<Shared>,
}

impl LoadView {
    /// Every service's load over the window, all regions together (node regions from the
    /// topology state).
    pub async fn services(&self) -> BTreeMap<String, ServiceLoad> {
        let now = SystemTime::now();
        let nodes = self.shared.all(now).await;
        let facts = merge::node_facts(&self.shared.state.borrow());
        merge::by_service(&nodes, &facts, now)
    }

    /// The same per (service, region of the nodes), for GetGlobalMetrics.
    pub async fn services_by_region(&self) -> BTreeMap<(String, String), ServiceLoad> {
        let now = SystemTime::now();
        let nodes = self.shared.all(now).await;
        let facts = merge::node_facts(&self.shared.state.borrow());
        merge::by_service_and_region(&nodes, &facts, now)
    }

    /// The window the figures cover at most.
    pub fn window(&self) -> Duration {
        WINDOW
    }
}
