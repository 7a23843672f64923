//! Load reports: what this proxy saw of each node, sent to the control plane so it can
//! aggregate load per service and region and make scaling decisions.
//!
//! - [`stats`]: the per-(node, service) figures the request path records with atomics —
//!   calls, errors, in flight (now, max, time-weighted mean), a latency histogram in the
//!   shared fixed buckets of `meridian_shared::latency_histogram` — taken and reset once
//!   per interval.
//! - [`orca`]: the ORCA backend metrics nodes attach to responses
//!   (`endpoint-load-metrics-bin`).
//! - [`report`]: the figures not yet delivered, merged across intervals, and the
//!   `LoadReport` built from them.
//! - [`client`]: the task that streams `RoutingDiscovery/ReportLoad` at the interval the
//!   control plane asks for.
//!
//! The figures are kept per (node, service): a node serving two services gets one entry
//! for each, with the calls, in-flight and latency of that service alone. They live in
//! the table's [`RouteMetrics`](crate::table::RouteMetrics), which carry over from one
//! table version to the next, so a table update loses nothing.

pub mod client;
pub mod orca;
pub mod report;
pub mod stats;

pub use self::client::LoadReporter;
pub use self::stats::{CallLoad, IntervalFigures, LoadInFlight};
