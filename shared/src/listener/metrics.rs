//! What a listener counts: connections refused over the cap, connections it closed and
//! why, accept errors, and the connections open. The handles are registered once when the
//! listener starts, so counting is an atomic add, never a registry look-up.

use metrics::{Counter, Gauge};

/// The counters of one listener, named `{prefix}_connections_*` and `{prefix}_accept_*`
/// (prefix `meridian_proxy` or `meridian_control`).
#[derive(Clone)]
pub struct ListenerMetrics {
    /// Connections closed at accept because `max_connections` were open.
    pub refused_over_limit: Counter,
    /// Connections closed before their TLS handshake and HTTP/2 preface were done.
    pub closed_handshake_timeout: Counter,
    /// Connections whose TLS handshake or HTTP/2 preface was wrong.
    pub closed_handshake_failed: Counter,
    /// Connections closed after `idle_timeout_seconds` with no call open.
    pub closed_idle: Counter,
    /// Connections closed for cancelling too many of their calls (rapid reset).
    pub closed_premature_resets: Counter,
    /// `accept` failures (out of file descriptors, buffers...).
    pub accept_errors: Counter,
    /// Connections open now (past the cap check).
    pub open: Gauge,
}

impl ListenerMetrics {
    pub fn new(prefix: &str) -> Self {
        let refused = format!("{prefix}_connections_refused_total");
        let closed = format!("{prefix}_connections_closed_total");
        ListenerMetrics {
            refused_over_limit: metrics::counter!(refused, "reason" => "limit"),
            closed_handshake_timeout: metrics::counter!(closed.clone(), "reason" => "handshake_timeout"),
            closed_handshake_failed: metrics::counter!(closed.clone(), "reason" => "handshake_failed"),
            closed_idle: metrics::counter!(closed.clone(), "reason" => "idle"),
            closed_premature_resets: metrics::counter!(closed, "reason" => "premature_resets"),
            accept_errors: metrics::counter!(format!("{prefix}_accept_errors_total")),
            open: metrics::gauge!(format!("{prefix}_connections_open")),
        }
    }
}
