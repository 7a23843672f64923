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
//!
//! The listener holds `[listener_limits]` (`meridian_shared::listener`): a connection over
//! `max_connections` (one count for all workers) is closed as soon as it is accepted;
//! `accept` failures back off instead of spinning; each connection must finish its TLS
//! handshake and send the HTTP/2 preface within the handshake timeout; a connection with
//! no call open for the idle timeout gets a GOAWAY; one that cancels too many calls before
//! their answer (HTTP/2 rapid reset) is closed at once.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::Json;
use axum::routing::get;
use futures::future::Either;
use futures::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use meridian_proto::v1::message_router_server::MessageRouterServer;
use meridian_shared::Shutdown;
use meridian_shared::admin_http::{self, BindError, Readiness};
use meridian_shared::config::{ListenerLimits, ListenerTlsConfig, ProxyConfig};
use meridian_shared::credentials::{BearerAuth, CredentialError};
use meridian_shared::listener::{
    BackoffAcceptor, ConnectionActivity, ConnectionCap, ConnectionPermit, ListenerMetrics,
    PrefacedIo, StreamGuard, Tracked, TrackedBody, read_preface,
};
use meridian_shared::telemetry::PrometheusHandle;
use meridian_shared::tls::{ClientTls, ServerTls, TlsConfigError};
use tokio::net::{TcpListener, TcpStream};
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
use crate::table::{ProxyIdentity, TableHandle, route_metrics};
use crate::wire::RecvBody;
use crate::wire::server::Http2Server;

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
    /// TLS on `admin`; `None` serves plain HTTP.
    admin_tls: Option<ServerTls>,
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
        let server_tls = |tls: &Option<ListenerTlsConfig>| {
            tls.as_ref()
                .map(|tls| ServerTls::load(tls.files()))
                .transpose()
        };
        let listen_tls =
            server_tls(&config.listen_tls).map_err(tls_error("listen_tls (--tls-cert)"))?;
        let admin_tls =
            server_tls(&config.admin_tls).map_err(tls_error("admin_tls (--admin-tls-cert)"))?;
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
            admin_tls,
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

        let limits = proxy_limits_json(&self.config);
        let admin_router = admin_http::router(
            self.metrics,
            route_metrics::LATENCY_FAMILIES,
            self.readiness.clone(),
        )
        .route(
            "/debug/table",
            get({
                let table = self.table.clone();
                move || async move {
                    Json(table.current().map(|t| t.debug_json()).unwrap_or_else(
                        || serde_json::json!({ "version": 0, "note": "no routing table yet" }),
                    ))
                }
            }),
        )
        .route(
            "/debug/limits",
            get(move || {
                let limits = limits.clone();
                async move { Json(limits) }
            }),
        );
        // The admin endpoints outlive the drain, so `/ready` can say 503 while it runs.
        self.readiness.drain_on(&shutdown);
        let admin_stop = Shutdown::new();
        let admin = tokio::spawn(admin_http::serve(
            self.admin,
            "meridian_proxy_admin",
            admin_router,
            self.admin_tls,
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
        let listener = ClientListener {
            tcp: self.grpc,
            tls: self.listen_tls,
            limits: self.config.listener_limits.clone(),
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
    /// Not an `async fn`: a layer that holds the request takes its space in every
    /// call's future (see [`Forwarder::forward`]).
    fn handle(
        &self,
        request: Request<RecvBody>,
        client: SocketAddr,
    ) -> impl Future<Output = Response<ProxyBody>> {
        let path = request.uri().path();
        if LOCAL_SERVICES.iter().any(|prefix| path.starts_with(prefix)) {
            let mut local = self.local.clone();
            return Either::Left(async move {
                match local.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            });
        }
        Either::Right(self.forwarder.forward(request, Some(client)))
    }
}

/// The proxy-wide limits in force, for `/debug/limits` (a service's own limits are in
/// `/debug/table`). None of them changes on reload, so they are read once.
fn proxy_limits_json(config: &ProxyConfig) -> serde_json::Value {
    serde_json::json!({
        "listener_limits": config.listener_limits,
        "upstream": config.upstream,
        "max_message_bytes": config.max_message_bytes,
        "retry_buffer_call_bytes": config.retry_buffer_call_bytes,
        "retry_buffer_total_bytes": config.retry_buffer_total_bytes,
        "note": "proxy-wide limits; each service's own (rate, concurrency, message size, endpoint limits) are in /debug/table",
    })
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

/// The client gRPC listener and what it may hold.
struct ClientListener {
    tcp: TcpListener,
    /// TLS on every connection; `None` serves h2c.
    tls: Option<ServerTls>,
    limits: ListenerLimits,
}

/// Accepts connections until `shutdown`, then drains them for at most `grace`. A
/// connection over `max_connections` is closed at once, before any handshake; the others
/// are handed to a worker, which runs their TLS handshake and reads their HTTP/2 preface
/// under the handshake deadline, then serves them.
async fn accept_until_shutdown(
    listener: ClientListener,
    dispatch: Arc<Dispatch>,
    shutdown: &Shutdown,
    grace: Duration,
) {
    let limits = &listener.limits;
    let http2 = Http2Server::new(
        limits.max_concurrent_streams,
        limits.max_header_list_bytes,
        Some(limits.keepalive_interval()),
        limits.keepalive_timeout(),
    );
    let metrics = ListenerMetrics::new("meridian_proxy");
    let server = ConnectionServer {
        http2,
        dispatch,
        tls: listener.tls,
        limits: limits.clone(),
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
        connections: TaskTracker::new(),
        workers: Workers::start(worker_count()),
    };
    let cap = ConnectionCap::new(limits.max_connections as usize);
    let mut acceptor = BackoffAcceptor::new(listener.tcp, "listen.grpc", metrics.clone());
    loop {
        let (stream, client) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = acceptor.accept() => accepted,
        };
        let Some(permit) = cap.try_acquire() else {
            metrics.refused_over_limit.increment(1);
            tracing::debug!(%client, "connection refused: listener_limits.max_connections are open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        server.spawn(stream, client, permit);
    }
    let ConnectionServer {
        connections,
        workers,
        ..
    } = server;
    drop(acceptor);
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
    http2: Http2Server,
    dispatch: Arc<Dispatch>,
    tls: Option<ServerTls>,
    limits: ListenerLimits,
    metrics: ListenerMetrics,
    shutdown: Shutdown,
    connections: TaskTracker,
    workers: Workers,
}

/// One client connection: what its calls need, and their count.
struct ClientConnection {
    dispatch: Arc<Dispatch>,
    client: SocketAddr,
    activity: ConnectionActivity,
}

impl Tracked for ClientConnection {
    fn activity(&self) -> &ConnectionActivity {
        &self.activity
    }
}

impl ConnectionServer {
    /// Serves a TCP connection on a worker, whose runtime then drives its socket.
    fn spawn(&self, stream: TcpStream, client: SocketAddr, permit: ConnectionPermit) {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%client, error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        let connection = Arc::new(ClientConnection {
            dispatch: Arc::clone(&self.dispatch),
            client,
            activity: ConnectionActivity::new(self.limits.max_premature_resets),
        });
        let settings = ConnectionSettings {
            http2: self.http2.clone(),
            tls: self.tls.clone(),
            handshake_timeout: self.limits.handshake_timeout(),
            idle_timeout: self.limits.idle_timeout(),
            close_timeout: self.limits.keepalive_timeout(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
        };
        let (worker, load) = self.workers.least_loaded();
        let serve = async move {
            let _permit = permit;
            match TcpStream::from_std(stream) {
                Ok(tcp) => settings.open_and_serve(tcp, connection).await,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "a worker could not take a connection")
                }
            }
            load.fetch_sub(1, Ordering::Relaxed);
        };
        worker.spawn(self.connections.track_future(serve));
    }
}

/// What serving one connection needs, moved to its worker.
struct ConnectionSettings {
    http2: Http2Server,
    tls: Option<ServerTls>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    /// How long a GOAWAY'd idle connection may take to close.
    close_timeout: Duration,
    metrics: ListenerMetrics,
    shutdown: Shutdown,
}

impl ConnectionSettings {
    /// The TLS handshake (if any), the HTTP/2 preface and SETTINGS under the handshake
    /// deadline, then the connection's calls.
    async fn open_and_serve(self, tcp: TcpStream, connection: Arc<ClientConnection>) {
        match self.tls.clone() {
            Some(tls) => {
                let opening = async move { read_preface(tls.accept(tcp).await?).await };
                self.serve(opening, connection).await;
            }
            None => self.serve(read_preface(tcp), connection).await,
        }
    }

    async fn handshake<T>(
        &self,
        client: SocketAddr,
        opening: impl Future<Output = std::io::Result<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.handshake_timeout, opening).await {
            Ok(Ok(opened)) => Some(opened),
            Ok(Err(e)) => {
                self.metrics.closed_handshake_failed.increment(1);
                tracing::debug!(%client, error = %e, "client connection closed: its handshake failed");
                None
            }
            Err(_) => {
                self.metrics.closed_handshake_timeout.increment(1);
                tracing::debug!(%client, timeout = ?self.handshake_timeout, "client connection closed: no TLS handshake and HTTP/2 preface within listener_limits.handshake_timeout_ms");
                None
            }
        }
    }

    /// Opens the connection, then serves its calls until it ends, the proxy shuts down
    /// (GOAWAY), it idles past the idle timeout (GOAWAY) or resets too many calls (closed
    /// at once). Every call runs in this connection's task ([`crate::wire::server`]).
    async fn serve<S>(
        self,
        opening: impl Future<Output = std::io::Result<PrefacedIo<S>>>,
        connection: Arc<ClientConnection>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let client = connection.client;
        let watched = Arc::clone(&connection);
        let handler = move |request| {
            let mut call = StreamGuard::start(Arc::clone(&connection));
            async move {
                let conn = call.connection();
                let response = conn.dispatch.handle(request, conn.client).await;
                call.answered();
                response.map(|body| TrackedBody::new(body, Some(call)))
            }
        };
        let opened = async {
            let io = opening.await?;
            Ok(self.http2.serve(io.into_inner(), handler))
        };
        let Some(mut connection) = self.handshake(client, opened).await else {
            return;
        };
        self.metrics.open.increment(1.0);
        // What may end the connection besides itself. Polled only when one of them woke:
        // in a `select!` every wake-up of the connection (several per call) polled all
        // three, two timers and a `Notify` (~3 % of the proxy's instructions at 1x1).
        let mut watches: FuturesUnordered<Pin<Box<dyn Future<Output = Watch> + Send + '_>>> =
            FuturesUnordered::new();
        watches.push(Box::pin(async {
            self.shutdown.wait().await;
            Watch::Shutdown
        }));
        watches.push(Box::pin(async {
            watched.activity.idle_for(self.idle_timeout).await;
            Watch::Idle
        }));
        watches.push(Box::pin(async {
            watched.activity.too_many_resets().await;
            Watch::TooManyResets
        }));
        let ended = poll_fn(|cx| {
            if let Poll::Ready(result) = Pin::new(&mut connection).poll(cx) {
                return Poll::Ready(Err(result));
            }
            match watches.poll_next_unpin(cx) {
                Poll::Ready(Some(watch)) => Poll::Ready(Ok(watch)),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            }
        })
        .await;
        drop(watches);
        match ended {
            Err(result) => {
                if let Err(e) = result {
                    tracing::debug!(%client, error = %e, "client connection ended with an error");
                }
            }
            Ok(Watch::Shutdown) => {
                connection.graceful_shutdown();
                let _ = connection.await;
            }
            Ok(Watch::Idle) => {
                self.metrics.closed_idle.increment(1);
                tracing::debug!(%client, "client connection closed: no call for listener_limits.idle_timeout_seconds");
                connection.graceful_shutdown();
                let _ = tokio::time::timeout(self.close_timeout, connection).await;
            }
            Ok(Watch::TooManyResets) => {
                self.metrics.closed_premature_resets.increment(1);
                tracing::warn!(%client, resets = watched.activity.premature_resets(), "client connection closed: it cancelled too many calls before their answer (HTTP/2 rapid reset?); see listener_limits.max_premature_resets");
            }
        }
        self.metrics.open.decrement(1.0);
    }
}

/// What, besides the client, ends the serving of a connection.
enum Watch {
    /// The proxy is draining.
    Shutdown,
    /// No call for the listener's idle timeout.
    Idle,
    /// Too many calls cancelled before their answer (rapid reset).
    TooManyResets,
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
