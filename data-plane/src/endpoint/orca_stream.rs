//! The ORCA out-of-band stream of one endpoint: when a service's adaptive policy sets
//! `oob_report_interval_ms`, the proxy keeps one
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` stream open to each of its nodes
//! and feeds every report to the endpoint's [`ReportedLoad`], the estimate the
//! `endpoint-load-metrics-bin` trailers feed. A node without traffic from this proxy is
//! then still re-measured, and one that sends no trailers is measured at all.
//!
//! Off the request path: the stream is a task of its own, over the endpoint's pooled
//! connection ([`EndpointChannel`]); a report costs the request path nothing but the
//! relaxed atomic loads it already does.
//!
//! Lifetime: the [`OrcaStream`] is part of the endpoint's live state, shared (`Arc`)
//! across table versions like its connection and counters; each table build says whether
//! the stream should run and at what interval ([`OrcaStream::keep`]); when the endpoint
//! leaves the table (its last table version and in-flight call are gone) the stream is
//! dropped and its task aborted, which cancels the call at the node.
//!
//! Failures: a node answering UNIMPLEMENTED (it serves no ORCA) is not asked again until
//! its endpoint is rebuilt, and this is logged once, at debug; any other failure, or the
//! node ending the stream, is retried with jittered exponential backoff (0.5 s to 30 s). A
//! stream that goes silent for three intervals (and at least 5 s) is cancelled and
//! reopened. A report larger than [`MAX_REPORT_BYTES`] fails the stream (and is retried
//! like any failure).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::xds::orca::OrcaLoadReport;
use meridian_proto::xds::orca_service::OrcaLoadReportRequest;
use meridian_proto::xds::orca_service::open_rca_service_client::OpenRcaServiceClient;
use meridian_shared::backoff::Backoff;
use tokio::task::JoinHandle;
use tonic::Code;

use super::ReportedLoad;
use super::channel::EndpointChannel;
use super::connection::Connection;
use crate::load_report::orca::utilization_of;

/// The largest report the proxy decodes, bytes (a report is a few scalars and maps of
/// named metrics; 64 KiB is far more than any real one).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Shortest pause before reopening a failed stream.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest pause before reopening a failed stream.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The least time a stream may go without a report before it is reopened.
const MIN_SILENCE: Duration = Duration::from_secs(5);

/// One endpoint's out-of-band ORCA stream, running or not.
#[derive(Debug, Default)]
pub struct OrcaStream {
    /// The running task and the interval it asked for. Locked only by table builds.
    running: Mutex<Option<(Duration, JoinHandle<()>)>>,
    /// The node answered UNIMPLEMENTED: it is not asked again.
    unsupported: Arc<AtomicBool>,
}

/// What a stream's task needs of the endpoint: where to call, and where reports go.
#[derive(Debug, Clone)]
pub struct OrcaFeed {
    pub node_id: String,
    pub connection: Arc<Connection>,
    pub origin: http::Uri,
    pub reported: Arc<ReportedLoad>,
    /// This proxy's calls in flight to the node.
    pub in_flight: Arc<AtomicU32>,
}

// === impl OrcaStream ===

impl OrcaStream {
    /// Runs the stream asking for a report every `interval`, or none (`None`): starts it,
    /// restarts it when the interval changed, stops it. Needs a Tokio runtime to start
    /// one; without, or for a node that does not serve ORCA, nothing runs.
    pub fn keep(&self, interval: Option<Duration>, feed: impl FnOnce() -> OrcaFeed) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        match (&*running, interval) {
            (Some((current, task)), Some(wanted)) if *current == wanted && !task.is_finished() => {
                return;
            }
            (None, None) => return,
            _ => {}
        }
        if let Some((_, task)) = running.take() {
            task.abort();
        }
        let Some(interval) = interval else { return };
        if self.unsupported.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(run(feed(), interval, Arc::clone(&self.unsupported)));
        *running = Some((interval, task));
    }

    /// Whether a stream task is running (open, or waiting to reopen).
    pub fn is_running(&self) -> bool {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .as_ref()
            .is_some_and(|(_, task)| !task.is_finished())
    }

    /// Whether the node answered UNIMPLEMENTED (to the stream or a probe).
    pub fn unsupported(&self) -> bool {
        self.unsupported.load(Ordering::Relaxed)
    }

    /// Records that the node answered UNIMPLEMENTED to a probe; whether it was news.
    pub fn mark_unsupported(&self) -> bool {
        !self.unsupported.swap(true, Ordering::Relaxed)
    }
}

impl Drop for OrcaStream {
    fn drop(&mut self) {
        let running = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some((_, task)) = running.take() {
            task.abort();
        }
    }
}

/// How one opening of the stream ended.
enum Ended {
    /// The node serves no ORCA.
    Unimplemented,
    /// It could not be opened, failed, went silent, or the node ended it.
    Failed(String),
}

/// Keeps the stream open, reopening it with backoff, until aborted or the node says it
/// serves no ORCA.
async fn run(feed: OrcaFeed, interval: Duration, unsupported: Arc<AtomicBool>) {
    let open = metrics::gauge!("meridian_proxy_orca_streams", "node" => feed.node_id.clone());
    let _closed = SetOnDrop(open.clone());
    let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
    loop {
        match open_once(&feed, interval, &open, &mut backoff).await {
            Ended::Unimplemented => {
                if unsupported.swap(true, Ordering::Relaxed) {
                    return;
                }
                tracing::debug!(node = %feed.node_id, "node does not serve xds.service.orca.v3.OpenRcaService (UNIMPLEMENTED); its load is known from ORCA trailers only, and the proxy asks again only when the node's endpoint is rebuilt");
                return;
            }
            Ended::Failed(reason) => {
                let delay = backoff.next_delay();
                tracing::debug!(node = %feed.node_id, %reason, ?delay, "ORCA stream ended; reopening after a pause");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Sets its gauge to 0 when dropped (the task ended or was aborted).
struct SetOnDrop(metrics::Gauge);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.set(0.0);
    }
}

/// Opens the stream once and feeds its reports until it ends.
async fn open_once(
    feed: &OrcaFeed,
    interval: Duration,
    open: &metrics::Gauge,
    backoff: &mut Backoff,
) -> Ended {
    let mut client = OpenRcaServiceClient::with_origin(
        EndpointChannel(Arc::clone(&feed.connection)),
        feed.origin.clone(),
    )
    .max_decoding_message_size(MAX_REPORT_BYTES);
    let request = OrcaLoadReportRequest {
        report_interval: prost_types::Duration::try_from(interval).ok(),
        request_cost_names: Vec::new(),
    };
    let mut reports = match client.stream_core_metrics(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ended::Unimplemented,
        Err(status) => return Ended::Failed(status.to_string()),
    };
    open.set(1.0);
    let _closed = SetOnDrop(open.clone());
    let received = metrics::counter!("meridian_proxy_orca_stream_reports_total", "node" => feed.node_id.clone());
    let silence = (interval * 3).max(MIN_SILENCE);
    loop {
        let report = match tokio::time::timeout(silence, reports.message()).await {
            Ok(Ok(Some(report))) => report,
            Ok(Ok(None)) => return Ended::Failed("the node ended the stream".into()),
            Ok(Err(status)) if status.code() == Code::Unimplemented => {
                return Ended::Unimplemented;
            }
            Ok(Err(status)) => return Ended::Failed(status.to_string()),
            Err(_) => return Ended::Failed(format!("no report for {silence:?}")),
        };
        backoff.reset();
        received.increment(1);
        feed_report(feed, &report);
    }
}

/// Hands a report to the endpoint's estimate, as having come while this proxy's calls now
/// in flight were in flight.
fn feed_report(feed: &OrcaFeed, report: &OrcaLoadReport) {
    let in_flight = feed.in_flight.load(Ordering::Relaxed);
    feed.reported
        .record_out_of_band(utilization_of(report), in_flight);
}
