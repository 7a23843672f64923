//! Running the control plane: bind its two listeners, serve gRPC (health and reflection
//! today; discovery, registry and Admin as they land) and HTTP (/metrics, /live, /ready)
//! until the shutdown signal, then stop both gracefully.

use std::net::SocketAddr;

use meridian_shared::Shutdown;
use meridian_shared::admin_http::{self, BindError, Readiness};
use meridian_shared::config::ControlPlaneConfig;
use meridian_shared::telemetry::{self, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server on {addr} failed: {source}")]
    Grpc {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("the HTTP server on {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A control plane whose listeners are bound (so their real addresses are known, even
/// when configured with port 0) and that is ready to serve.
pub struct ControlPlane {
    config: ControlPlaneConfig,
    grpc: TcpListener,
    http: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
}

impl ControlPlane {
    /// Binds the gRPC and HTTP listeners named in `config`.
    pub async fn bind(
        config: ControlPlaneConfig,
        metrics: PrometheusHandle,
    ) -> Result<Self, ServeError> {
        let grpc = admin_http::bind(config.listen.grpc, "listen.grpc (--grpc-addr)").await?;
        let http = admin_http::bind(config.listen.http, "listen.http (--http-addr)").await?;
        Ok(ControlPlane {
            config,
            grpc,
            http,
            metrics,
            readiness: Readiness::default(),
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` fires, then drains both servers.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let (grpc_addr, http_addr) = (self.grpc_addr(), self.http_addr());
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let grpc = tonic::transport::Server::builder()
            .trace_fn(telemetry::grpc_request_span)
            .add_service(health_service)
            .add_service(reflection)
            .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), shutdown.wait_owned());
        let http = admin_http::serve(
            self.http,
            admin_http::router(self.metrics, self.readiness.clone()),
            shutdown.clone(),
        );

        self.readiness.set(true);
        tracing::info!(
            replica = %self.config.replica_id,
            grpc = %grpc_addr,
            http = %http_addr,
            store = ?self.config.store.backend,
            "control plane serving"
        );
        let (grpc, http) = tokio::join!(grpc, http);
        grpc.map_err(|source| ServeError::Grpc {
            addr: grpc_addr,
            source,
        })?;
        http.map_err(|source| ServeError::Http {
            addr: http_addr,
            source,
        })?;
        tracing::info!("control plane stopped");
        Ok(())
    }
}
