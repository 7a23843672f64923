//! Request metrics of one service on one endpoint: calls by gRPC status, and latency.
//! The handles are made when the table is built, so the request path records with atomic
//! operations instead of building label strings per call. They also hold the
//! (node, service) figures of the load reports ([`CallLoad`]); a new table version reuses
//! the previous one's `RouteMetrics`, so those figures survive table updates.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use meridian_shared::telemetry::{LatencyFamily, LatencySeries};
use metrics::Counter;

use crate::forward::status::code_name;
use crate::load_report::CallLoad;

/// `meridian_proxy_request_duration_seconds`, recorded on the request path.
pub static REQUEST_DURATION: LatencyFamily = LatencyFamily::new(
    "meridian_proxy_request_duration_seconds",
    "Latency of the calls (forwarded and RouteMessage) that reached a node, from the call's start to the end of the response.",
    &["service", "node"],
);

/// The latency histograms the proxy's `/metrics` renders after the recorder's text.
pub static LATENCY_FAMILIES: &[&LatencyFamily] = &[&REQUEST_DURATION];

#[derive(Debug)]
pub struct RouteMetrics {
    service: String,
    node: String,
    latency: Arc<LatencySeries>,
    /// By gRPC code 0..=16, made on first use.
    codes: [OnceLock<Counter>; 17],
    /// What the load reports say of this service on this node.
    pub load: Arc<CallLoad>,
}

impl RouteMetrics {
    pub fn new(service: &str, node: &str) -> Self {
        RouteMetrics {
            latency: REQUEST_DURATION.series(&[service, node]),
            service: service.to_owned(),
            node: node.to_owned(),
            codes: Default::default(),
            load: Arc::new(CallLoad::new(service, node)),
        }
    }

    /// The service whose calls these are.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The node that serves them.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Records a finished call.
    pub fn record(&self, code: i32, latency: Duration) {
        self.load.record(code, latency);
        self.latency.record(latency);
        let index = usize::try_from(code).ok().filter(|c| *c < 17).unwrap_or(2);
        self.codes[index]
            .get_or_init(|| {
                metrics::counter!(
                    "meridian_proxy_requests_total",
                    "service" => self.service.clone(),
                    "node" => self.node.clone(),
                    "code" => code_name(tonic::Code::from(index as i32))
                )
            })
            .increment(1);
    }
}
