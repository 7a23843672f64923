//! Running the proxy: load the cached table, follow the control planes, report load to
//! them, serve client traffic on an HTTP/2 listener (h2c, or TLS with `[listen_tls]`) and
//! the admin endpoints (`/metrics`, `/ready`, `/live`, `/debug/table`). Calls to the
//! proxy's own services (RouteMessage, health, reflection) are answered here; every other
//! gRPC call is forwarded. On SIGTERM the proxy stops accepting, sends GOAWAY on every
//! connection, and lets in-flight calls finish within the drain grace period; `/ready`
//! answers 503 from the signal on, and the admin endpoints answer until the drain ends.
//!
//! Client connections are served by workers, one thread per CPU, each with its own
//! single-threaded runtime ([`Workers`]); the listener hands each accepted connection to
//! the worker serving the fewest, and every call of that connection — its streams, its
//! upstream connection (`endpoint/connection.rs`) — runs on that worker. A multi-threaded
//! runtime moved tasks between cores and shared each node's connection between them; a
//! thread per core does neither. The control-plane streams, load reports and admin HTTP
//! run on the main thread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meridian_proto::v1::message_router_server::MessageRouterServer;
use meridian_shared::Shutdown;
use meridian_shared::admin_http::{self, BindError, Readiness};
use meridian_shared::config::ProxyConfig;
use meridian_shared::credentials::{BearerAuth, CredentialError};
use meridian_shared::telemetry::PrometheusHandle;
use meridian_shared::tls::{ClientTls, ServerTls, TlsConfigError, TlsIncoming};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_util::task::TaskTracker;
use tonic_health::ServingStatus;
use tower::Service;

use crate::endpoint::connection::{enter_worker, worker_count};
use crate::endpoint::{UpstreamSettings, UpstreamTls};
use crate::forward::{ForwardSettings, Forwarder, ProxyBody};
use crate::load_report::LoadReporter;
use crate::reload::{LoadConfig, ProxyReloader};
use crate::router::Router;
use crate::table::subscription::{Subscription, report_table_age};
use crate::table::{ProxyIdentity, TableHandle};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{section}: {source}")]
    Tls {
        /// The configuration section whose files are at fault.
        section: &'static str,
        source: TlsConfigError,
    },
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the admin HTTP server on {addr} failed: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Paths the proxy answers itself instead of forwarding.
const LOCAL_SERVICES: [&str; 4] = [
    "/meridian.v1.MessageRouter/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// A proxy whose listeners are bound.
pub struct Proxy {
    config: ProxyConfig,
    /// The proxy-role credential presented to the control plane.
    auth: BearerAuth,
    grpc: TcpListener,
    /// TLS on `grpc`; `None` serves h2c.
    listen_tls: Option<ServerTls>,
    control_plane_tls: Option<ClientTls>,
    upstream_tls: UpstreamTls,
    admin: TcpListener,
    metrics: PrometheusHandle,
    readiness: Readiness,
    table: TableHandle,
    /// Reloads the configuration on SIGHUP or a file change, once enabled.
    reloader: Option<ProxyReloader>,
}

impl Proxy {
    /// Reads the control-plane credential and the TLS files, and binds the listeners named
    /// in `config`.
    pub async fn bind(config: ProxyConfig, metrics: PrometheusHandle) -> Result<Self, ServeError> {
        initial_metrics();
        let auth = BearerAuth::from_file_or_env(config.token_file.as_deref())?;
        if !auth.is_some() {
            tracing::warn!(
                "no control-plane credential: the control plane will refuse the routing stream (set MERIDIAN_TOKEN or --token-file to a proxy-role token)"
            );
        }
        let tls_error = |section| move |source| ServeError::Tls { section, source };
        let listen_tls = config
            .listen_tls
            .as_ref()
            .map(|tls| ServerTls::load(tls.files()))
            .transpose()
            .map_err(tls_error("listen_tls (--tls-cert)"))?;
        let control_plane_tls = config
            .control_plane_tls
            .as_ref()
            .map(|tls| ClientTls::load(tls.files()))
            .transpose()
            .map_err(tls_error("control_plane_tls (--control-plane-ca)"))?;
        let upstream_tls = UpstreamTls::load(&config.upstream_tls)
            .map_err(tls_error("upstream_tls (--upstream-ca)"))?;
        let grpc = admin_http::bind(config.listen.grpc, "listen.grpc (--grpc-addr)").await?;
        let admin = admin_http::bind(config.listen.admin, "listen.admin (--admin-addr)").await?;
        Ok(Proxy {
            config,
            auth,
            grpc,
            listen_tls,
            control_plane_tls,
            upstream_tls,
            admin,
            metrics,
            readiness: Readiness::default(),
            table: TableHandle::default(),
            reloader: None,
        })
    }

    /// Reloads the configuration with `load` on SIGHUP or when `config_file` or the token
    /// file changes (see [`crate::reload`]). SIGHUP no longer ends the process. Fails only
    /// when SIGHUP cannot be listened for.
    pub fn reload_with(
        mut self,
        load: LoadConfig,
        config_file: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        let reloader = ProxyReloader::new(load, config_file, &self.config, self.auth.clone())?;
        self.reloader = Some(reloader);
        Ok(self)
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown`, then drains.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let (grpc_addr, admin_addr) = (self.grpc_addr(), self.admin_addr());
        let identity = Arc::new(ProxyIdentity {
            id: self.config.id.clone(),
            federation: self.config.federation.clone(),
            region: self.config.region.clone(),
            zone: self.config.zone.clone(),
        });
        let subscription = Subscription {
            identity: (*identity).clone(),
            auth: self.auth.clone(),
            control_planes: self.config.control_planes.clone(),
            control_plane_tls: self.control_plane_tls.clone(),
            upstream: UpstreamSettings {
                tls: self.upstream_tls.clone(),
                limits: self.config.upstream.clone(),
            },
            cache: self.config.table_cache.clone(),
            table: self.table.clone(),
            readiness: self.readiness.clone(),
        };
        subscription.load_cache();
        tokio::spawn(subscription.run(shutdown.clone()));
        let reporter = LoadReporter {
            identity: (*identity).clone(),
            auth: self.auth.clone(),
            control_planes: self.config.control_planes.clone(),
            control_plane_tls: self.control_plane_tls.clone(),
            table: self.table.clone(),
        };
        tokio::spawn(reporter.run(shutdown.clone()));
        tokio::spawn(report_table_age(self.table.clone(), shutdown.clone()));
        if let Some(reloader) = self.reloader {
            tokio::spawn(reloader.run(shutdown.clone()));
        }

        let admin_router = admin_http::router(self.metrics, self.readiness.clone()).route(
            "/debug/table",
            get({
                let table = self.table.clone();
                move || async move {
                    Json(table.current().map(|t| t.debug_json()).unwrap_or_else(
                        || serde_json::json!({ "version": 0, "note": "no routing table yet" }),
                    ))
                }
            }),
        );
        // The admin endpoints outlive the drain, so `/ready` can say 503 while it runs.
        self.readiness.drain_on(&shutdown);
        let admin_stop = Shutdown::new();
        let admin = tokio::spawn(admin_http::serve(
            self.admin,
            admin_router,
            admin_stop.clone(),
        ));

        let dispatch = Arc::new(Dispatch {
            local: local_services(&self.table, &identity, self.config.max_message_bytes).await?,
            forwarder: Forwarder::new(
                self.table.clone(),
                Arc::clone(&identity),
                ForwardSettings::from_config(&self.config),
            ),
        });
        tracing::info!(
            proxy = %identity.id,
            federation = %identity.federation,
            region = %identity.region,
            zone = %identity.zone,
            grpc = %grpc_addr,
            tls = self.listen_tls.is_some(),
            admin = %admin_addr,
            control_planes = ?self.config.control_planes,
            "proxy serving"
        );
        let grace = Duration::from_secs(u64::from(self.config.drain_grace_seconds));
        let listener = match self.listen_tls {
            Some(tls) => ClientListener::Tls(tls.incoming(self.grpc)),
            None => ClientListener::Plain(self.grpc),
        };
        accept_until_shutdown(listener, dispatch, &shutdown, grace).await;
        admin_stop.trigger();
        admin
            .await
            .ok()
            .transpose()
            .map_err(|source| ServeError::Admin {
                addr: admin_addr,
                source,
            })?;
        tracing::info!("proxy stopped");
        Ok(())
    }
}

/// Series the alert rules and dashboard (deploy/observability/) read, at 0 from the start
/// so that `rate()` and the rules see a value before the first event, not nothing.
fn initial_metrics() {
    for result in ["applied", "refused"] {
        metrics::counter!("meridian_proxy_table_updates_total", "result" => result).absolute(0);
        metrics::counter!("meridian_proxy_config_reloads_total", "result" => result).absolute(0);
    }
    for to in ["open", "closed"] {
        metrics::counter!("meridian_proxy_breaker_transitions_total", "to" => to).absolute(0);
    }
    metrics::counter!("meridian_proxy_retries_total").absolute(0);
    metrics::counter!("meridian_proxy_retries_refused_total").absolute(0);
    metrics::gauge!("meridian_proxy_config_last_reload_successful").set(1.0);
}

/// Routes a call to the proxy's own services or to the forwarder.
struct Dispatch {
    local: tonic::service::Routes,
    forwarder: Forwarder,
}

impl Dispatch {
    async fn handle(&self, request: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
        let path = request.uri().path();
        if LOCAL_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
            let mut local = self.local.clone();
            return match local.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        }
        self.forwarder.forward(request, Some(client)).await
    }
}

async fn local_services(
    table: &TableHandle,
    identity: &Arc<ProxyIdentity>,
    max_message_bytes: u32,
) -> Result<tonic::service::Routes, ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health
        .set_service_status("meridian.v1.MessageRouter", ServingStatus::Serving)
        .await;
    // v1 and v1alpha: grpcurl builds before 1.8.8 (and other older clients) ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection, reflection_v1alpha) =
        (reflection().build_v1()?, reflection().build_v1alpha()?);
    let router = MessageRouterServer::new(Router::new(
        table.clone(),
        Arc::clone(identity),
        max_message_bytes,
    ))
    .max_decoding_message_size(max_message_bytes as usize);
    Ok(tonic::service::Routes::new(router)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .prepare())
}

/// The client gRPC listener: TCP connections served in h2c, or TLS connections yielded
/// once their handshake (run concurrently, off this loop) is done.
enum ClientListener {
    Plain(TcpListener),
    Tls(TlsIncoming),
}

/// Accepts connections until `shutdown`, then drains them for at most `grace`.
async fn accept_until_shutdown(
    mut listener: ClientListener,
    dispatch: Arc<Dispatch>,
    shutdown: &Shutdown,
    grace: Duration,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let server = ConnectionServer {
        http2,
        dispatch,
        shutdown: shutdown.clone(),
        connections: TaskTracker::new(),
        workers: Workers::start(worker_count()),
    };
    loop {
        match &mut listener {
            ClientListener::Plain(tcp) => {
                let (stream, client) = tokio::select! {
                    _ = shutdown.wait() => break,
                    accepted = tcp.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                server.spawn_tcp(stream, client);
            }
            ClientListener::Tls(incoming) => {
                let stream: TlsStream<TcpStream> = tokio::select! {
                    _ = shutdown.wait() => break,
                    next = incoming.next() => match next {
                        Some(Ok(stream)) => stream,
                        Some(Err(never)) => match never {},
                        None => {
                            tracing::error!("the TLS listener stopped accepting");
                            break;
                        }
                    },
                };
                match stream.get_ref().0.peer_addr() {
                    Ok(client) => server.spawn_with(client, move || Ok(stream)),
                    Err(e) => tracing::debug!(error = %e, "a TLS client left after its handshake"),
                }
            }
        }
    }
    let ConnectionServer {
        connections,
        workers,
        ..
    } = server;
    drop(listener);
    connections.close();
    let in_flight = connections.len();
    if in_flight > 0 {
        tracing::info!(connections = in_flight, grace = ?grace, "draining client connections");
    }
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "drain grace period over; closing the remaining connections");
    }
    workers.stop();
}

/// Serves client connections, each in a task on one of `workers`, tracked by
/// `connections`, until `shutdown` (then with a graceful GOAWAY).
struct ConnectionServer {
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    dispatch: Arc<Dispatch>,
    shutdown: Shutdown,
    connections: TaskTracker,
    workers: Workers,
}

impl ConnectionServer {
    /// Serves a TCP connection on a worker, whose runtime then drives its socket.
    fn spawn_tcp(&self, stream: TcpStream, client: SocketAddr) {
        match stream.into_std() {
            Ok(stream) => self.spawn_with(client, move || TcpStream::from_std(stream)),
            Err(e) => tracing::warn!(%client, error = %e, "cannot hand a connection to a worker"),
        }
    }

    /// Serves a connection on a worker; `open` runs there and gives the stream.
    fn spawn_with<S, F>(&self, client: SocketAddr, open: F)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        F: FnOnce() -> std::io::Result<S> + Send + 'static,
    {
        let dispatch = Arc::clone(&self.dispatch);
        let http2 = self.http2.clone();
        let shutdown = self.shutdown.clone();
        let (worker, load) = self.workers.least_loaded();
        let serve = async move {
            let stream = match open() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "a worker could not take a connection");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |request| {
                let dispatch = Arc::clone(&dispatch);
                // Boxed so the task hyper spawns per stream holds a pointer, not the whole
                // (large) future.
                Box::pin(async move { Ok::<_, Infallible>(dispatch.handle(request, client).await) })
            });
            let connection = http2.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%client, error = %e, "client connection ended with an error");
                    }
                }
                _ = shutdown.wait() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            load.fetch_sub(1, Ordering::Relaxed);
        };
        worker.spawn(self.connections.track_future(serve));
    }
}

/// The worker threads: each runs a single-threaded runtime until [`Workers::stop`], and
/// counts the client connections it serves.
struct Workers {
    runtimes: Vec<(tokio::runtime::Handle, Arc<AtomicUsize>)>,
    stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    fn start(count: usize) -> Workers {
        let mut workers = Workers {
            runtimes: Vec::with_capacity(count),
            stop: Vec::with_capacity(count),
        };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a worker runtime builds (it only needs the OS's I/O and timers)");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            workers
                .runtimes
                .push((runtime.handle().clone(), Arc::default()));
            workers.stop.push(stop);
            std::thread::Builder::new()
                .name(format!("meridian-worker-{index}"))
                .spawn(move || {
                    enter_worker(index);
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                })
                .expect("the OS starts a worker thread");
        }
        workers
    }

    /// The worker serving the fewest connections, counting one more for the caller.
    fn least_loaded(&self) -> (&tokio::runtime::Handle, Arc<AtomicUsize>) {
        let (handle, load) = self
            .runtimes
            .iter()
            .min_by_key(|(_, load)| load.load(Ordering::Relaxed))
            .expect("at least one worker");
        load.fetch_add(1, Ordering::Relaxed);
        (handle, Arc::clone(load))
    }

    /// Ends the workers' runtimes, dropping whatever they still run.
    fn stop(self) {
        for stop in self.stop {
            let _ = stop.send(());
        }
    }
}
