//! The HTTP endpoints every Meridian process serves beside its gRPC port: `/metrics`
//! (Prometheus text), `/live` (the process runs) and `/ready` (it can do its job: the
//! control plane reached its store, the proxy holds a routing table). Each binary may add
//! routes of its own (e.g. the proxy's `/debug/table`). The listener is capped and closes
//! stalled connections ([`AdminListener`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::Shutdown;
use crate::listener::AdminListener;

/// Whether the process is ready; flipped by the component that knows.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

/// `/metrics`, `/live` and `/ready`.
pub fn router(metrics: PrometheusHandle, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(AdminState { metrics, readiness })
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    state.metrics.render()
}

async fn ready(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr} ({what}): {source}; is another process using it? pick another address with the flag or config key for {what}"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub source: std::io::Error,
}

/// Binds `addr`, naming the listener in the error (`what`, e.g. "listen.http").
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, what, source })
}

/// Serves `router` on `listener` until `shutdown` fires, within the admin listener's
/// limits ([`AdminListener`]); its counters are named `{metrics_prefix}_connections_*`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics_prefix: &str,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let listener = AdminListener::new(listener, "admin HTTP", metrics_prefix)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait_owned())
        .await
}
