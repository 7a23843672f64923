//! Scaling: what the proxies' load reports say about each service, what the autoscaler
//! decides from it, and how a decision is carried out.
//!
//! - [`load`]: every replica aggregates the `ReportLoad` streams it holds over a sliding
//!   window and publishes a compact summary under `{prefix}v1/load/{replica}`; the leader
//!   merges all replicas' summaries into a [`ServiceLoad`] per service (and per region
//!   for `GetGlobalMetrics`).
//! - [`engine`]: the pure decision rule, given a policy, the observed load, the node count
//!   and the time: the HPA rule per target with tolerance, stabilisation windows, step
//!   limit, min/max, scheduled minimums, cooldown, and the forecast of predictive scaling.
//! - [`record`]: each service's decisions (bounded history), cooldown start and retry
//!   time, stored under `{prefix}v1/scaling/{service}`.
//! - [`actuator`]: carrying a decision out (an allowed program or webhook) and recording
//!   the outcome.
//! - [`autoscaler`]: the leader reconciler that turns the engine's recommendations into
//!   recorded decisions and actuations, and retries failed ones.
//!
//! The types here are what those parts exchange.

pub mod actuator;
pub mod autoscaler;
pub mod engine;
pub mod load;
pub mod record;

use std::time::{Duration, SystemTime};

/// One service's load over the aggregation window, all regions (or one region) together.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceLoad {
    /// The span the figures cover.
    pub window: Duration,
    /// Calls completed per second, every proxy together.
    pub calls_per_second: f64,
    /// Failed calls over all calls, 0..1.
    pub error_rate: f64,
    /// Merged from the proxies' histograms; `None` without completed calls.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Mean over the reporting nodes, percent: ORCA utilisation (application, else cpu)
    /// where a node reports it, else its in-flight over its capacity; `None` when neither
    /// is known for any node.
    pub utilization_percent: Option<f64>,
    /// Mean requests in flight per reporting node (time-weighted, every proxy together).
    pub in_flight_per_node: f64,
    /// Nodes that appear in the window's reports.
    pub nodes_reporting: u32,
}

/// What the autoscaler sees of a service at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub at: SystemTime,
    /// Usable nodes serving the service now (healthy or not yet checked).
    pub current_nodes: u32,
    /// `None` when no proxy reported on the service in the window.
    pub load: Option<ServiceLoad>,
}
