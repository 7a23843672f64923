//! The HTTP endpoints every Meridian process serves beside its gRPC port: `/metrics`
//! (Prometheus text), `/live` (the process runs) and `/ready` (it can do its job: the
//! control plane reached its store, the proxy holds a routing table, and neither is
//! draining). Each binary may add routes of its own (e.g. the proxy's `/debug/table`).
//!
//! `/ready` answers 503 from the moment a process starts draining (SIGTERM), and the
//! endpoints keep answering while it drains, so a load balancer or Kubernetes takes it out
//! of rotation before its listeners close rather than after. The listener is capped and
//! closes stalled connections ([`AdminListener`]), and serves HTTPS when given a
//! certificate (`[http_tls]` of the control plane, `[admin_tls]` of the proxy).

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
use crate::telemetry::LatencyFamily;
use crate::tls::ServerTls;

/// Whether the process is ready; flipped by the component that knows, and off for good
/// once it drains.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Not ready from now on, whatever [`Readiness::set`] says later.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    /// Calls [`Readiness::drain`] as soon as `shutdown` fires.
    pub fn drain_on(&self, shutdown: &Shutdown) {
        let readiness = self.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shutdown.wait().await;
            readiness.drain();
        });
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    latency_families: &'static [&'static LatencyFamily],
    readiness: Readiness,
}

/// `/metrics` (the recorder's text, then `latency_families`'), `/live` and `/ready`.
pub fn router(
    metrics: PrometheusHandle,
    latency_families: &'static [&'static LatencyFamily],
    readiness: Readiness,
) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .with_state(AdminState {
            metrics,
            latency_families,
            readiness,
        })
}

async fn render_metrics(State(state): State<AdminState>) -> String {
    let mut text = state.metrics.render();
    for family in state.latency_families {
        family.render(&mut text);
    }
    text
}

async fn ready(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if state.readiness.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
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
/// limits ([`AdminListener`]), in HTTPS with `tls`; its counters are named
/// `{metrics_prefix}_connections_*`. To keep answering while the process drains, give it
/// a signal fired after the drain (e.g. a [`Shutdown`] of its own).
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics_prefix: &str,
    router: Router,
    tls: Option<ServerTls>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let listener = AdminListener::new(listener, "admin HTTP", metrics_prefix, tls)?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_turns_503_when_draining_starts_and_stays_so() {
        let readiness = Readiness::default();
        let shutdown = Shutdown::new();
        readiness.drain_on(&shutdown);
        readiness.set(true);
        let answer = |r: Readiness| async move {
            let (status, body) = ready(State(AdminState {
                metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                    .build_recorder()
                    .handle(),
                latency_families: &[],
                readiness: r,
            }))
            .await;
            (status.as_u16(), body.trim())
        };
        assert_eq!(answer(readiness.clone()).await, (200, "ready"));
        shutdown.trigger();
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert_eq!(answer(readiness.clone()).await, (503, "draining"));
        readiness.set(true);
        assert_eq!(answer(readiness).await, (503, "draining"));
    }
}
