//! The operator dashboard, served by the control plane on its HTTP port at `/`: a page
//! (HTML, JS and CSS embedded in the binary, [`assets`]) and the JSON API behind it
//! ([`api`], [`stream`]).
//!
//! The API is a thin layer over the Admin service: every route names the Admin method it
//! runs, is admitted by the same [`AuthLayer`] as the gRPC call to that method (viewer for
//! reads, operator for writes; bearer token in the `Authorization` header, never in a
//! URL) and then calls that method of the same [`AdminService`], so checks, validation,
//! events and refusals are the gRPC API's. Answers are the documents `meridianctl -o json`
//! prints.
//!
//! Limits: request bodies of [`MAX_BODY_BYTES`], [`MAX_STREAMS`] live streams per
//! replica, each Admin call within [`CALL_TIMEOUT`]. The page is only as private as the
//! HTTP port: give it a certificate (`[http_tls]`) before exposing it beyond loopback,
//! or the token crosses the network in clear (see docs/dashboard.md).

mod api;
mod assets;
mod stream;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::admin::AdminService;
use crate::auth::AuthLayer;

/// Largest request body the API reads (a reason or a failover target).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Live event streams one replica serves at once; more are refused with 429.
pub const MAX_STREAMS: usize = 32;
/// Longest an Admin call behind the API may take before it answers 504.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What the dashboard's routes share. The HTTP port serves before the store is open, so
/// the Admin service is attached once it exists; until then the API answers 503.
#[derive(Clone)]
pub struct Dashboard {
    auth: AuthLayer,
    admin: Arc<OnceLock<Arc<AdminService>>>,
    streams: Arc<Semaphore>,
}

impl Dashboard {
    /// A dashboard admitting callers with `auth`, the layer in front of the gRPC services.
    pub fn new(auth: AuthLayer) -> Self {
        Dashboard {
            auth,
            admin: Arc::new(OnceLock::new()),
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }

    /// Connects the API to the running Admin service.
    pub fn attach(&self, admin: Arc<AdminService>) {
        let _ = self.admin.set(admin);
    }

    /// The page, its assets and the API.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/v1/whoami", get(api::whoami))
            .route("/api/v1/overview", get(api::overview))
            .route("/api/v1/stream", get(stream::open))
            .route("/api/v1/nodes/{id}/drain", post(api::drain_node))
            .route("/api/v1/nodes/{id}/recover", post(api::recover_node))
            .route("/api/v1/nodes/{id}/fail", post(api::fail_node))
            .route("/api/v1/failovers", post(api::start_failover))
            .route(
                "/api/v1/failovers/{service}/clear",
                post(api::clear_failover),
            )
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::map_response(assets::api_headers))
            .with_state(self.clone());
        assets::router().merge(api)
    }
}

/// Logs a warning when the HTTP port (and so the dashboard, whose tokens would cross it in
/// clear) listens beyond loopback without TLS.
pub fn warn_if_exposed(http: std::net::SocketAddr, tls: bool) {
    if !http.ip().is_loopback() && !tls {
        tracing::warn!(
            http = %http,
            "the dashboard on the HTTP port takes bearer tokens over plain HTTP: give the port a certificate ([http_tls], --http-tls-cert and --http-tls-key), or reach it from beyond this host only through a TLS-terminating proxy or an SSH or kubectl port-forward"
        );
    }
}
