//! Running the proxy: bind its listeners and serve the admin endpoints until shutdown.
//! `/ready` stays false until a routing table is loaded, which the table subscription
//! (next issue) will do; until then this proxy forwards nothing.

use std::net::SocketAddr;

use meridian_shared::Shutdown;
use meridian_shared::admin_http::{self, BindError, Readiness};
use meridian_shared::config::ProxyConfig;
use meridian_shared::telemetry::PrometheusHandle;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the admin HTTP server on {addr} failed: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A proxy whose listeners are bound.
pub struct Proxy {
    config: ProxyConfig,
    admin: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
}

impl Proxy {
    pub async fn bind(config: ProxyConfig, metrics: PrometheusHandle) -> Result<Self, ServeError> {
        let admin = admin_http::bind(config.listen.admin, "listen.admin (--admin-addr)").await?;
        Ok(Proxy {
            config,
            admin,
            metrics,
            readiness: Readiness::default(),
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` fires.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let addr = self.admin_addr();
        tracing::info!(
            proxy = %self.config.id,
            federation = %self.config.federation,
            region = %self.config.region,
            admin = %addr,
            "proxy admin endpoints serving; no routing table yet (not ready)"
        );
        let router = admin_http::router(self.metrics, self.readiness);
        admin_http::serve(self.admin, router, shutdown)
            .await
            .map_err(|source| ServeError::Admin { addr, source })
    }
}
