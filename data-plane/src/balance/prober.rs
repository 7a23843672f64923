//! Prequal's asynchronous probes for the adaptive balancer (policy `probes_per_call` > 0).
//! A probe asks one node for its load — one ORCA report over
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`, then the call is cancelled —
//! and keeps its requests in flight from every client (named metric `in_flight`) and its
//! recent latency (`latency_ms`) in the endpoint's [`ProbedLoad`](crate::endpoint::probed_load),
//! its utilisation in the endpoint's reported load. That is what a proxy cannot see
//! itself: the load other proxies put on a node, and the state of a node it sends nothing.
//!
//! **Rate.** Off the request path: a pick only adds one to a counter of calls
//! ([`Prober::count_call`]). A background task wakes every [`TICK`], turns the calls
//! since into probes at `probes_per_call` (the remainder carried over), each to a node
//! drawn at random from the balancer's endpoints, and also probes every node whose latest
//! probe is older than `probe_idle_interval_ms` (the floor, so idle nodes are known too).
//! At most [`MAX_PROBES_IN_FLIGHT`] probes are outstanding; each gives up after
//! [`PROBE_TIMEOUT`]; a node answering UNIMPLEMENTED is marked as serving no ORCA and not
//! probed again until its endpoint is rebuilt.
//!
//! **Hot threshold.** After each round the task computes the `probe_hot_quantile` of the
//! fresh probes' in-flight ([`hot_threshold`]) and publishes it in an atomic the picks
//! read.
//!
//! The task belongs to the balancer (one table version of one service) and is aborted when
//! the balancer is dropped; the probes' results belong to the endpoints and outlive it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use meridian_proto::xds::orca::OrcaLoadReport;
use meridian_proto::xds::orca_service::OrcaLoadReportRequest;
use meridian_proto::xds::orca_service::open_rca_service_client::OpenRcaServiceClient;
use meridian_shared::domain::AdaptivePolicy;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::endpoint::Endpoint;
use crate::endpoint::channel::EndpointChannel;
use crate::endpoint::orca_stream::MAX_REPORT_BYTES;
use crate::endpoint::probed_load::hot_threshold;
use crate::load_report::orca::utilization_of;

/// How often the prober turns counted calls into probes.
pub const TICK: Duration = Duration::from_millis(20);
/// Most probes outstanding at once, per balancer.
pub const MAX_PROBES_IN_FLIGHT: usize = 16;
/// How long a probe waits for its report.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// The named ORCA metric holding a node's requests in flight from every client.
pub const IN_FLIGHT_METRIC: &str = "in_flight";
/// The named ORCA metric holding a node's recent latency, ms.
pub const LATENCY_METRIC: &str = "latency_ms";

/// The probes of one adaptive balancer: the call counter the picks bump, the hot
/// threshold they read, and the task that sends the probes.
#[derive(Debug)]
pub struct Prober {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What the picks and the task share.
#[derive(Debug)]
struct Shared {
    /// Picks since the task last looked.
    calls: AtomicU64,
    /// `f64` bits of the in-flight above which a probed node is hot; NaN: none yet.
    hot_threshold: AtomicU64,
}

/// The probing settings of a policy.
#[derive(Debug, Clone, Copy)]
struct Settings {
    per_call: f64,
    idle_interval_ns: i64,
    ttl_ns: i64,
    quantile: f64,
}

// === impl Prober ===

impl Prober {
    /// Starts probing `endpoints` as `policy` says; `None` when the policy sends no probes
    /// or there is no Tokio runtime to run them on.
    pub fn start(endpoints: &[Arc<Endpoint>], policy: &AdaptivePolicy) -> Option<Prober> {
        if !policy.probes() || endpoints.is_empty() {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let settings = Settings {
            per_call: policy.probes_per_call,
            idle_interval_ns: nanos(policy.probe_idle_interval()),
            ttl_ns: nanos(policy.report_ttl()),
            quantile: policy.effective_probe_hot_quantile(),
        };
        let shared = Arc::new(Shared {
            calls: AtomicU64::new(0),
            hot_threshold: AtomicU64::new(f64::NAN.to_bits()),
        });
        let task = runtime.spawn(probe_loop(
            endpoints.to_vec(),
            settings,
            Arc::clone(&shared),
        ));
        Some(Prober { shared, task })
    }

    /// Counts a pick; the task turns counted picks into probes.
    pub fn count_call(&self) {
        self.shared.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The in-flight above which a probed node is hot; `None` until two nodes are probed.
    pub fn hot_threshold(&self) -> Option<f64> {
        let threshold = f64::from_bits(self.shared.hot_threshold.load(Ordering::Relaxed));
        (!threshold.is_nan()).then_some(threshold)
    }
}

#[cfg(test)]
impl Prober {
    /// A prober whose hot threshold is `threshold` and that sends nothing.
    pub fn fixed(threshold: f64) -> Prober {
        let shared = Arc::new(Shared {
            calls: AtomicU64::new(0),
            hot_threshold: AtomicU64::new(threshold.to_bits()),
        });
        Prober {
            shared,
            task: tokio::spawn(async {}),
        }
    }

    /// Picks counted and not yet turned into probes.
    pub fn counted(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Probes at the policy's rate and floor until aborted.
async fn probe_loop(endpoints: Vec<Arc<Endpoint>>, settings: Settings, shared: Arc<Shared>) {
    let outstanding = Arc::new(AtomicUsize::new(0));
    let mut owed = 0.0;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let calls = shared.calls.swap(0, Ordering::Relaxed);
        let by_rate;
        (by_rate, owed) = probes_due(owed, calls, settings.per_call);
        for _ in 0..by_rate {
            let endpoint = &endpoints[rand::random_range(0..endpoints.len())];
            send_probe(endpoint, &outstanding);
        }
        for endpoint in &endpoints {
            let stale = endpoint
                .probed
                .age_ns()
                .is_none_or(|age| age > settings.idle_interval_ns);
            if stale {
                send_probe(endpoint, &outstanding);
            }
        }
        let mut pool: Vec<f64> = endpoints
            .iter()
            .filter_map(|e| e.probed.fresh(e.in_flight(), settings.ttl_ns))
            .map(|probe| probe.in_flight)
            .collect();
        let threshold = hot_threshold(&mut pool, settings.quantile).unwrap_or(f64::NAN);
        shared
            .hot_threshold
            .store(threshold.to_bits(), Ordering::Relaxed);
    }
}

/// The probes to send for `calls` picks at `per_call` each, with `owed` carried over from
/// the last tick, and what is carried to the next. Never more than
/// [`MAX_PROBES_IN_FLIGHT`] at once, and the excess of a burst is dropped, not paid back
/// later.
fn probes_due(owed: f64, calls: u64, per_call: f64) -> (usize, f64) {
    let owed = (owed + calls as f64 * per_call).min(MAX_PROBES_IN_FLIGHT as f64);
    let due = owed.floor();
    (due as usize, owed - due)
}

/// Sends one probe to `endpoint` in a task of its own, unless the node serves no ORCA or
/// [`MAX_PROBES_IN_FLIGHT`] are outstanding.
fn send_probe(endpoint: &Arc<Endpoint>, outstanding: &Arc<AtomicUsize>) {
    if endpoint.orca_stream.unsupported() || !endpoint.is_ready() {
        return;
    }
    let taken = outstanding.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n < MAX_PROBES_IN_FLIGHT).then_some(n + 1)
    });
    if taken.is_err() {
        return;
    }
    let endpoint = Arc::clone(endpoint);
    let outstanding = Arc::clone(outstanding);
    tokio::spawn(async move {
        probe(&endpoint).await;
        outstanding.fetch_sub(1, Ordering::Relaxed);
    });
}

/// One probe: the node's first ORCA report, then the call is cancelled (dropped).
async fn probe(endpoint: &Endpoint) {
    let ours = endpoint.in_flight();
    let mut client = OpenRcaServiceClient::with_origin(
        EndpointChannel(Arc::clone(&endpoint.connection)),
        endpoint.origin(),
    )
    .max_decoding_message_size(MAX_REPORT_BYTES);
    let request = OrcaLoadReportRequest {
        // The node answers at once; the interval only matters if the call were kept.
        report_interval: prost_types::Duration::try_from(Duration::from_secs(1)).ok(),
        request_cost_names: Vec::new(),
    };
    let first = tokio::time::timeout(PROBE_TIMEOUT, async {
        client
            .stream_core_metrics(request)
            .await?
            .into_inner()
            .message()
            .await
    })
    .await;
    match first {
        Ok(Ok(Some(report))) => keep(endpoint, &report, ours),
        Ok(Err(status)) if status.code() == Code::Unimplemented => {
            if endpoint.orca_stream.mark_unsupported() {
                tracing::debug!(node = %endpoint.node.id, "node does not serve xds.service.orca.v3.OpenRcaService (UNIMPLEMENTED); it is not probed again until its endpoint is rebuilt");
            }
        }
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
            metrics::counter!("meridian_proxy_probes_failed_total", "node" => endpoint.node.id.clone())
                .increment(1);
        }
    }
}

/// Keeps what a probe's report says.
fn keep(endpoint: &Endpoint, report: &OrcaLoadReport, ours: u32) {
    metrics::counter!("meridian_proxy_probes_total", "node" => endpoint.node.id.clone())
        .increment(1);
    endpoint
        .reported
        .record_out_of_band(utilization_of(report), ours);
    let Some(&in_flight) = report.named_metrics.get(IN_FLIGHT_METRIC) else {
        return;
    };
    let latency_ms = report
        .named_metrics
        .get(LATENCY_METRIC)
        .copied()
        .unwrap_or(0.0);
    endpoint
        .probed
        .record(in_flight.max(0.0) as u32, latency_ms / 1e3, ours);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_follow_the_call_rate_with_the_remainder_carried_over() {
        // A quarter of a probe per call: 10 calls make 2 probes and half a probe owed.
        let (due, owed) = probes_due(0.0, 10, 0.25);
        assert_eq!((due, owed), (2, 0.5));
        let (due, owed) = probes_due(owed, 2, 0.25);
        assert_eq!((due, owed), (1, 0.0), "the half carried over completes one");
        assert_eq!(
            probes_due(0.0, 0, 0.25),
            (0, 0.0),
            "no calls, no probes by rate"
        );
        // A burst of 10,000 calls at 2 per call: at most the cap, nothing kept for later.
        assert_eq!(probes_due(0.0, 10_000, 2.0), (MAX_PROBES_IN_FLIGHT, 0.0));
    }
}
