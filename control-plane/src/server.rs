//! Running the control plane: open the store, start the follower, the table publisher,
//! the leader election and its reconcilers, and serve gRPC (routing streams, node
//! registry, Admin, health, reflection) and HTTP (/metrics, /live, /ready, and the
//! dashboard at `/`) until the shutdown signal, then stop everything gracefully. `/ready`
//! turns true once the topology was loaded from the store, and false again (503) from the
//! shutdown signal on. The gRPC listener holds `[listener_limits]`: tonic's HTTP/2
//! settings for streams, header list and keep-alive, and `meridian_shared::listener`'s
//! incoming stream for the connection cap, the handshake and idle timeouts and the
//! rapid-reset defence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::v1::admin_server::AdminServer;
use meridian_proto::v1::node_registry_server::NodeRegistryServer;
use meridian_shared::admin_http::{self, BindError, Readiness};
use meridian_shared::config::{ControlPlaneConfig, StoreBackend, StoreConfig};
use meridian_shared::domain::limits::routing_message_limit;
use meridian_shared::listener::{CallTrackingLayer, LimitedIncoming, ListenerMetrics};
use meridian_shared::telemetry::{self, PrometheusHandle};
use meridian_shared::tls::{ClientTls, ClientTlsFiles, PeerIdentity, ServerTls, TlsConfigError};
use meridian_shared::{Backoff, Shutdown};
use tokio::net::TcpListener;
use tonic_health::ServingStatus;

use crate::admin::{AdminService, MetricsSources, ScalingContext};
use crate::auth::{AuthError, AuthLayer, Authenticator, SharedAuthenticator};
use crate::dashboard::{self, Dashboard};
use crate::discovery::DiscoveryService;
use crate::discovery::proxies::ProxyRegistry;
use crate::discovery::session::SessionContext;
use crate::discovery::wire::DiscoveryRoutes;
use crate::events::EventLog;
use crate::keys::Keys;
use crate::leader::{LeaderElection, LeaderHandle, reconcilers};
use crate::registry::RegistryService;
use crate::registry::held::HeldNodes;
use crate::reload::{ConfigReloader, LoadConfig};
use crate::replica_lease::ReplicaLease;
use crate::routing::TablePublisher;
use crate::scaling::actuator::{Actuators, Allowlist, Execution};
use crate::scaling::autoscaler::{Autoscaler, Engines};
use crate::scaling::load::LoadView;
use crate::scaling::load::{LoadAggregator, publish};
use crate::scaling::record::Records;
use crate::store::Store;
use crate::store::embedded::{EmbeddedError, EmbeddedStore};
use crate::store::etcd::EtcdStore;
use crate::store::etcd_access::{EtcdAccess, EtcdAccessError, EtcdConnectError};
use crate::store::etcd_rotation;
use crate::topology::{StateFollower, StateHandle, TopologyWriter};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("TLS of the gRPC listener (--tls-cert, --tls-key, --tls-client-ca): {0}")]
    Tls(#[from] TlsConfigError),
    #[error("TLS of the HTTP listener (http_tls, --http-tls-cert, --http-tls-key): {0}")]
    HttpTls(TlsConfigError),
    #[error("the CA of scaling webhooks (scaling.webhook_ca, --scaling-webhook-ca): {0}")]
    WebhookTls(TlsConfigError),
    #[error("cannot open the embedded store: {0}")]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    EtcdAccess(#[from] EtcdAccessError),
    #[error(transparent)]
    EtcdRefused(#[from] EtcdConnectError),
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
    /// The credentials in force; a configuration reload replaces them.
    auth: SharedAuthenticator,
    /// Reloads the configuration on SIGHUP or a file change, once enabled.
    reloader: Option<ConfigReloader>,
    /// TLS of the gRPC listener, when configured.
    tls: Option<ServerTls>,
    /// TLS of the HTTP listener, when configured.
    http_tls: Option<ServerTls>,
    grpc: TcpListener,
    http: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
}

impl ControlPlane {
    /// Loads the tokens and binds the gRPC and HTTP listeners named in `config`.
    pub async fn bind(
        config: ControlPlaneConfig,
        metrics: PrometheusHandle,
    ) -> Result<Self, ServeError> {
        initial_metrics();
        let auth = Authenticator::load(&config.auth)?;
        if auth.is_empty() {
            tracing::warn!(
                "no credentials are configured: every Admin, NodeRegistry and RoutingDiscovery call will be refused (add [[auth.tokens]] or --tokens-file)"
            );
        }
        let tls = config
            .tls
            .as_ref()
            .map(|t| ServerTls::load(t.files()))
            .transpose()?;
        let http_tls = config
            .http_tls
            .as_ref()
            .map(|t| ServerTls::load(t.files()))
            .transpose()
            .map_err(ServeError::HttpTls)?;
        let grpc = admin_http::bind(config.listen.grpc, "listen.grpc (--grpc-addr)").await?;
        let http = admin_http::bind(config.listen.http, "listen.http (--http-addr)").await?;
        Ok(ControlPlane {
            config,
            auth: SharedAuthenticator::new(auth),
            reloader: None,
            tls,
            http_tls,
            grpc,
            http,
            metrics,
            readiness: Readiness::default(),
        })
    }

    /// Reloads the configuration with `load` on SIGHUP or when `config_file` or the
    /// tokens file changes (see [`crate::reload`]). SIGHUP no longer ends the process.
    /// Fails only when SIGHUP cannot be listened for.
    pub fn reload_with(
        mut self,
        load: LoadConfig,
        config_file: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let reloader = ConfigReloader::new(load, config_file, &self.config, self.auth.clone())?;
        self.reloader = Some(reloader);
        Ok(self)
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
        let auth = AuthLayer::new(self.auth, certificate_names);
        let dashboard = Dashboard::new(auth.clone());
        dashboard::warn_if_exposed(http_addr, self.http_tls.is_some());
        // The HTTP endpoints outlive the gRPC drain, so `/ready` can say 503 while it runs.
        self.readiness.drain_on(&shutdown);
        let http_stop = Shutdown::new();
        let http = tokio::spawn(admin_http::serve(
            self.http,
            "meridian_control_http",
            admin_http::router(self.metrics, &[], self.readiness.clone()).merge(dashboard.router()),
            self.http_tls,
            http_stop.clone(),
        ));
        let Some(store) = open_store(&self.config, &shutdown).await? else {
            http_stop.trigger();
            return Ok(());
        };
        let parts = Parts::start(&self.config, store, &shutdown)?;
        if let Some(reloader) = self.reloader {
            tokio::spawn(reloader.run(parts.events.clone(), shutdown.clone()));
        }
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_service_status("", ServingStatus::Serving).await;
        // v1 and v1alpha: grpcurl builds before 1.8.8 (and other older clients) ask v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let (reflection, reflection_v1alpha) =
            (reflection().build_v1()?, reflection().build_v1alpha()?);
        let admin = Arc::new(AdminService {
            state: parts.state.clone(),
            writer: parts.writer.clone(),
            events: parts.events.clone(),
            proxies: Arc::clone(&parts.proxies),
            store: Arc::clone(&parts.store),
            scaling: parts.scaling.clone(),
            shutdown: shutdown.clone(),
            metrics: MetricsSources {
                load: parts.load.view(),
                tables: parts.tables.clone(),
            },
        });
        dashboard.attach(Arc::clone(&admin));
        tokio::spawn(mark_ready(
            parts.state.clone(),
            self.readiness.clone(),
            shutdown.clone(),
        ));
        let registry = RegistryService::new(
            parts.held.clone(),
            parts.writer.clone(),
            parts.state.clone(),
            shutdown.clone(),
        );
        let discovery = DiscoveryService::new(
            parts.session_context(&shutdown),
            parts.state.clone(),
            parts.load.clone(),
        );

        tracing::info!(
            replica = %self.config.replica_id,
            grpc = %grpc_addr,
            security = grpc_security(&self.config),
            http = %http_addr,
            store = ?self.config.store.backend,
            prefix = %self.config.store.prefix,
            "control plane serving"
        );
        let limits = &self.config.listener_limits;
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            .http2_keepalive_interval(Some(limits.keepalive_interval()))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout()))
            .trace_fn(telemetry::grpc_request_span)
            .layer(CallTrackingLayer)
            .layer(auth)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            // Tables and topology listings of a federation at its configured limits are
            // larger than gRPC's 4 MiB default; requests keep the default.
            .add_service(
                AdminServer::from_arc(admin).max_encoding_message_size(routing_message_limit()),
            )
            .add_service(NodeRegistryServer::new(registry))
            .add_service(DiscoveryRoutes::new(discovery));
        let metrics = ListenerMetrics::new("meridian_control");
        let what = "listen.grpc";
        let served = match self.tls {
            Some(tls) => {
                let incoming = LimitedIncoming::new(self.grpc, what, limits, metrics, move |tcp| {
                    let tls = tls.clone();
                    async move { tls.accept(tcp).await }
                });
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.wait_owned())
                    .await
            }
            None => {
                let incoming = LimitedIncoming::new(self.grpc, what, limits, metrics, |tcp| {
                    std::future::ready(Ok(tcp))
                });
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.wait_owned())
                    .await
            }
        };
        http_stop.trigger();
        served.map_err(|source| ServeError::Grpc {
            addr: grpc_addr,
            source,
        })?;
        http.await
            .ok()
            .transpose()
            .map_err(|source| ServeError::Http {
                addr: http_addr,
                source,
            })?;
        tracing::info!("control plane stopped");
        Ok(())
    }
}

/// The running pieces shared by the gRPC services.
struct Parts {
    store: Arc<dyn Store>,
    state: StateHandle,
    events: EventLog,
    writer: TopologyWriter,
    proxies: Arc<ProxyRegistry>,
    tables: tokio::sync::watch::Receiver<Arc<crate::routing::Published>>,
    load: LoadAggregator,
    scaling: ScalingContext,
    held: HeldNodes,
    #[allow(dead_code)]
    leader: LeaderHandle,
}

impl Parts {
    fn start(
        config: &ControlPlaneConfig,
        store: Arc<dyn Store>,
        shutdown: &Shutdown,
    ) -> Result<Self, ServeError> {
        let keys = Keys::new(&config.store.prefix);
        let (follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
        tokio::spawn(follower.run(shutdown.clone()));
        let events = EventLog::new(Arc::clone(&store), keys.clone(), state.clone());
        let writer = TopologyWriter::new(Arc::clone(&store), keys.clone(), events.clone());
        let (publisher, tables) = TablePublisher::new(state.clone());
        tokio::spawn(publisher.run(shutdown.clone()));
        let lease = ReplicaLease::start(Arc::clone(&store), shutdown.clone());
        let proxies = Arc::new(ProxyRegistry::new(
            config.replica_id.clone(),
            keys.clone(),
            Arc::clone(&store),
            lease.clone(),
        ));
        tokio::spawn(Arc::clone(&proxies).flush_until(shutdown.clone()));
        let load = LoadAggregator::new(
            config.replica_id.clone(),
            keys.clone(),
            Arc::clone(&store),
            state.clone(),
        );
        tokio::spawn(publish::publish_until(
            load.clone(),
            lease,
            shutdown.clone(),
        ));
        let (election, leader) = LeaderElection::new(
            Arc::clone(&store),
            keys.clone(),
            config.replica_id.clone(),
            config.election.lease_ttl_seconds,
            events.clone(),
        );
        tokio::spawn(election.run(shutdown.clone()));
        let scaling = scaling_context(config, &store, &keys, &events, load.view())?;
        let autoscaler = Autoscaler {
            state: state.clone(),
            load: Arc::clone(&scaling.load),
            engines: scaling.engines.clone(),
            execution: scaling.execution.clone(),
        };
        tokio::spawn(reconcilers::run(
            leader.clone(),
            state.clone(),
            writer.clone(),
            autoscaler,
            shutdown.clone(),
        ));
        let held = HeldNodes::start(
            Arc::clone(&store),
            writer.clone(),
            config.replica_id.clone(),
            shutdown.clone(),
        );
        Ok(Parts {
            store,
            state,
            events,
            writer,
            proxies,
            tables,
            load,
            scaling,
            held,
            leader,
        })
    }

    fn session_context(&self, shutdown: &Shutdown) -> SessionContext {
        SessionContext {
            tables: self.tables.clone(),
            proxies: Arc::clone(&self.proxies),
            events: self.events.clone(),
            shutdown: shutdown.clone(),
        }
    }
}

/// The actuators the configuration allows, the scaling records, the engines, and the
/// load they decide from.
fn scaling_context(
    config: &ControlPlaneConfig,
    store: &Arc<dyn Store>,
    keys: &Keys,
    events: &EventLog,
    load: LoadView,
) -> Result<ScalingContext, ServeError> {
    let allowlist = Allowlist::new(
        config.scaling.exec_allow.clone(),
        config.scaling.webhook_allow.clone(),
    );
    let webhook_tls = config
        .scaling
        .webhook_ca
        .as_ref()
        .map(|ca| {
            ClientTls::load(ClientTlsFiles {
                ca: ca.clone(),
                cert: None,
                key: None,
                server_name: None,
            })
        })
        .transpose()
        .map_err(ServeError::WebhookTls)?;
    Ok(ScalingContext {
        execution: Execution {
            actuators: Actuators::new(allowlist).with_webhook_tls(webhook_tls),
            records: Records::new(Arc::clone(store), keys.clone()),
            events: events.clone(),
        },
        load: Arc::new(load),
        engines: Engines::default(),
    })
}

/// Opens the configured store; for etcd, retries until it answers or shutdown (`None`),
/// but fails at once when etcd refuses the credentials or the TLS handshake, and then
/// watches its TLS files for rotation.
async fn open_store(
    config: &ControlPlaneConfig,
    shutdown: &Shutdown,
) -> Result<Option<Arc<dyn Store>>, ServeError> {
    let store = &config.store;
    match store.backend {
        StoreBackend::Embedded => {
            let embedded = match &store.embedded_file {
                Some(path) => EmbeddedStore::open(path)?,
                None => EmbeddedStore::in_memory(),
            };
            Ok(Some(Arc::new(embedded)))
        }
        StoreBackend::Etcd => {
            let timeout = Duration::from_millis(u64::from(store.dial_timeout_ms));
            let access = EtcdAccess::load(store)?;
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            loop {
                match connect_etcd(store, timeout, &access).await {
                    Ok(etcd) => {
                        etcd_rotation::spawn(etcd.clone(), store, shutdown.clone());
                        return Ok(Some(Arc::new(etcd)));
                    }
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "cannot reach etcd yet; retrying (is it running? --etcd-endpoints)")
                    }
                    Err(refused) => return Err(refused.into()),
                }
                tokio::select! {
                    _ = shutdown.wait() => return Ok(None),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// An etcd client that has proved it may read under the prefix.
async fn connect_etcd(
    store: &StoreConfig,
    timeout: Duration,
    access: &EtcdAccess,
) -> Result<EtcdStore, EtcdConnectError> {
    let etcd = EtcdStore::connect_with(&store.etcd_endpoints, timeout, access).await?;
    etcd.check_access(&store.prefix).await?;
    Ok(etcd)
}

/// Series the alert rules and dashboard (deploy/observability/) read, at 0 from the start
/// so that `rate()` and the rules see a value before the first event, not nothing.
fn initial_metrics() {
    metrics::counter!("meridian_control_acks_total").absolute(0);
    metrics::counter!("meridian_control_nacks_total").absolute(0);
    metrics::gauge!("meridian_control_leader").set(0.0);
    metrics::gauge!("meridian_control_connected_proxies").set(0.0);
    for result in ["applied", "refused"] {
        metrics::counter!("meridian_control_config_reloads_total", "result" => result).absolute(0);
    }
    metrics::gauge!("meridian_control_config_last_reload_successful").set(1.0);
}

async fn mark_ready(state: StateHandle, readiness: Readiness, shutdown: Shutdown) {
    let mut changes = state.subscribe();
    tokio::select! {
        _ = shutdown.wait() => {}
        loaded = changes.wait_for(|s| s.revision > 0) => if loaded.is_ok() {
            readiness.set(true);
            tracing::info!("topology loaded from the store; ready");
        }
    }
}

/// How the gRPC listener is secured, for the start-up log line.
fn grpc_security(config: &ControlPlaneConfig) -> &'static str {
    match &config.tls {
        None if config.insecure => "plaintext (--insecure)",
        None => "plaintext (loopback)",
        Some(tls) if tls.client_ca.is_some() => "mTLS (client certificates required)",
        Some(_) => "TLS",
    }
}

/// The names of the client certificate of an mTLS connection (URI SANs, DNS SANs, CN);
/// none on plaintext or server-only TLS.
fn certificate_names(extensions: &http::Extensions) -> Vec<String> {
    PeerIdentity::from_extensions(extensions)
        .map(|peer| peer.names().map(str::to_owned).collect())
        .unwrap_or_default()
}
