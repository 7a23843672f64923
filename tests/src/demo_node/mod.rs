//! `meridian-demo-node`: a backend that behaves like a real node of a Meridian federation,
//! for demos and tests. One port serves the sample application API (`demo.v1.Echo`), the
//! knobs that break it on purpose (`demo.v1.DemoControl`), federation messages
//! (`meridian.v1.MessageHandler`), `grpc.health.v1.Health` and server reflection, in h2c
//! or (with `--tls-cert`) TLS; the node can also register itself with a control plane
//! (over https with `--control-plane-ca`) and keep its lease alive. Every response
//! carries ORCA backend metrics ([`orca`]) for the proxies' load reports, unless
//! `--no-orca-trailers`; the node also serves them out of band ([`orca_stream`],
//! `xds.service.orca.v3.OpenRcaService`) unless `--no-orca-service`.
//!
//! The binary is a thin `main` over [`DemoNode`]; [`process::DemoNodeProcess`] runs that
//! binary from tests.

pub mod behaviour;
pub mod cli;
pub mod control;
pub mod echo;
pub mod handler;
pub mod orca;
pub mod orca_stream;
pub mod process;
pub mod registration;
pub mod served_by;

use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use meridian_proto::demo::v1::demo_control_server::DemoControlServer;
use meridian_proto::demo::v1::echo_server::EchoServer;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_handler_server::MessageHandlerServer;
use meridian_proto::xds::orca_service::open_rca_service_server::OpenRcaServiceServer;
use meridian_shared::credentials::BearerAuth;
use meridian_shared::tls::{ClientTls, ServerTls, TlsConfigError};
use meridian_shared::{Shutdown, telemetry};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::server::NamedService;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::util::{MapRequestLayer, MapResponseLayer};

pub use behaviour::NodeBehaviour;
pub use cli::DemoNodeArgs;
use control::ControlService;
use echo::EchoService;
use handler::HandlerService;
use orca_stream::OrcaStreamService;
use registration::SelfRegistration;

/// The gRPC services a demo node serves, as reflection lists them (the ORCA service
/// unless `--no-orca-service`).
pub const SERVED_SERVICES: [&str; 6] = [
    <OpenRcaServiceServer<OrcaStreamService> as NamedService>::NAME,
    <EchoServer<EchoService> as NamedService>::NAME,
    <DemoControlServer<ControlService> as NamedService>::NAME,
    <MessageHandlerServer<HandlerService> as NamedService>::NAME,
    <HealthServer<HealthService> as NamedService>::NAME,
    "grpc.reflection.v1.ServerReflection",
];

/// The largest message the node's Echo service takes (64 MiB; tonic's default is 4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// How long a stopping node waits for clients to close their connections. A client that
/// never answers the server's GOAWAY (a hung or blocked process) would otherwise keep the
/// node alive after SIGTERM.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// What stops a demo node.
#[derive(Debug, thiserror::Error)]
pub enum DemoNodeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node id {0:?} cannot be sent as the x-served-by trailer (not visible ASCII)")]
    NodeId(String),
    #[error(transparent)]
    ControlPlaneUrl(#[from] registration::InvalidUrl),
    #[error("{flag}: {source}")]
    Tls {
        flag: &'static str,
        source: TlsConfigError,
    },
    #[error(transparent)]
    Credential(#[from] meridian_shared::credentials::CredentialError),
    #[error("building the reflection service failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving gRPC on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
}

/// A bound, not yet serving, demo node.
pub struct DemoNode {
    listener: TcpListener,
    /// TLS on `listener`; `None` serves h2c.
    tls: Option<ServerTls>,
    addr: SocketAddr,
    served_by: HeaderValue,
    /// `--plain`: no `x-served-by` or ORCA trailers.
    plain: bool,
    /// `--no-orca-trailers`: no ORCA trailers (other headers still).
    orca_trailers: bool,
    /// Serve `OpenRcaService` (not with `--no-orca-service`).
    orca_service: bool,
    behaviour: Arc<NodeBehaviour>,
    health: HealthReporter,
    registration: Option<SelfRegistration>,
    /// Other service names Echo answers under (`--echo-alias`).
    echo_aliases: Arc<[String]>,
}

impl DemoNode {
    /// Binds the port and sets the starting behaviour from `args`.
    pub async fn bind(args: DemoNodeArgs) -> Result<Self, DemoNodeError> {
        let served_by = HeaderValue::from_str(&args.id)
            .ok()
            .filter(|_| !args.id.is_empty())
            .ok_or_else(|| DemoNodeError::NodeId(args.id.clone()))?;
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| DemoNodeError::Bind {
                    addr: args.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| DemoNodeError::Bind {
                addr: args.listen,
                source,
            })?;
        let tls_error = |flag| move |source| DemoNodeError::Tls { flag, source };
        let tls = args
            .listener_tls()
            .map(|tls| ServerTls::load(tls.files()))
            .transpose()
            .map_err(tls_error("--tls-cert"))?;
        let control_plane_tls = args
            .control_plane_tls()
            .map(|tls| ClientTls::load(tls.files()))
            .transpose()
            .map_err(tls_error("--control-plane-ca"))?;
        let health = HealthReporter::new();
        let behaviour = Arc::new(NodeBehaviour::new(
            args.id.clone(),
            args.latency_ms,
            args.error_rate,
            health.clone(),
            args.register_with.is_some(),
        ));
        behaviour.set_serving(!args.unhealthy).await;
        behaviour.set_utilization(args.utilization);
        behaviour.set_capacity(args.capacity);
        behaviour.set_workers(args.workers);
        if let Some(after) = args.degrade_after_seconds {
            behaviour.degrade_after(
                std::time::Duration::from_secs_f64(after.max(0.0)),
                args.degrade_factor,
            );
        }
        let registration = match &args.register_with {
            Some(url) => Some(SelfRegistration::new(
                url,
                control_plane_tls.as_ref(),
                BearerAuth::from_file_or_env(args.token_file.as_deref())?,
                node_spec(&args, addr),
                args.ttl_seconds,
                behaviour.keep_alive(),
            )?),
            None => None,
        };
        Ok(DemoNode {
            listener,
            tls,
            addr,
            served_by,
            plain: args.plain,
            orca_trailers: !args.no_orca_trailers,
            orca_service: !args.no_orca_service,
            behaviour,
            health,
            registration,
            echo_aliases: args.echo_aliases.into(),
        })
    }

    /// The address the node listens on (with the port picked when it asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves (and keeps the registration alive) until `shutdown`, then deregisters and
    /// drains.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), DemoNodeError> {
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        let orca_name = <OpenRcaServiceServer<OrcaStreamService> as NamedService>::NAME;
        for name in SERVED_SERVICES {
            if name != orca_name || self.orca_service {
                reflection = reflection.with_service_name(name);
            }
        }
        let reflection = reflection.build_v1()?;
        let registration = self
            .registration
            .map(|registration| tokio::spawn(registration.run(shutdown.clone())));

        let served_by = self.served_by;
        tracing::info!(
            node = %self.behaviour.node_id(),
            addr = %self.addr,
            tls = self.tls.is_some(),
            "demo node serving"
        );
        let (addr, stop) = (self.addr, shutdown.wait_owned());
        let echo_aliases = Arc::clone(&self.echo_aliases);
        let router = tonic::transport::Server::builder()
            .trace_fn(telemetry::grpc_request_span)
            .layer(MapRequestLayer::new(move |request| {
                echo::unalias(request, &echo_aliases)
            }))
            .layer(MapResponseLayer::new({
                let behaviour = Arc::clone(&self.behaviour);
                let plain = self.plain;
                let orca_trailers = self.orca_trailers;
                move |response| {
                    if plain {
                        return response;
                    }
                    let mut response = served_by::add_served_by(response, &served_by);
                    response.headers_mut().insert(
                        behaviour::ADMITTED_HEADER,
                        HeaderValue::from(behaviour.admitted()),
                    );
                    response.headers_mut().insert(
                        behaviour::RECEIVED_BYTES_HEADER,
                        HeaderValue::from(behaviour.received_bytes()),
                    );
                    response.headers_mut().insert(
                        behaviour::ORCA_STREAMS_HEADER,
                        HeaderValue::from(behaviour.orca_streams()),
                    );
                    if !orca_trailers {
                        return response;
                    }
                    orca::add_load_report(response, &behaviour)
                }
            }))
            .add_service(HealthServer::new(HealthService::from_health_reporter(
                self.health,
            )))
            .add_service(reflection)
            // Large messages pass, so tests of a proxy's size limits see the proxy's
            // refusal, never the node's.
            .add_service(
                EchoServer::new(EchoService::new(Arc::clone(&self.behaviour)))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(DemoControlServer::new(ControlService::new(Arc::clone(
                &self.behaviour,
            ))))
            .add_service(MessageHandlerServer::new(HandlerService::new(Arc::clone(
                &self.behaviour,
            ))))
            .add_optional_service(self.orca_service.then(|| {
                OpenRcaServiceServer::new(OrcaStreamService::new(
                    Arc::clone(&self.behaviour),
                    shutdown.clone(),
                ))
            }));
        let (listener, tls) = (self.listener, self.tls);
        let server = async move {
            match tls {
                Some(tls) => {
                    router
                        .serve_with_incoming_shutdown(tls.incoming(listener), stop)
                        .await
                }
                None => {
                    // Without TCP_NODELAY a response's trailers, written after its headers
                    // and data, wait for the peer's delayed ACK (up to 40 ms): the tail of
                    // every latency measured through this node.
                    let incoming = TcpListenerStream::new(listener).map(|accepted| {
                        accepted.inspect(|tcp| {
                            let _ = tcp.set_nodelay(true);
                        })
                    });
                    router.serve_with_incoming_shutdown(incoming, stop).await
                }
            }
        };
        let served = tokio::select! {
            served = server => served.map_err(|source| DemoNodeError::Serve { addr, source }),
            () = drain_deadline(&shutdown) => {
                tracing::warn!(
                    "connections still open {DRAIN_DEADLINE:?} after shutdown; stopping anyway"
                );
                Ok(())
            }
        };
        // Stops the registration too when serving failed on its own.
        shutdown.trigger();
        if let Some(registration) = registration {
            let _ = registration.await;
        }
        tracing::info!("demo node stopped");
        served
    }
}

/// Fires [`DRAIN_DEADLINE`] after `shutdown`.
async fn drain_deadline(shutdown: &Shutdown) {
    shutdown.wait().await;
    tokio::time::sleep(DRAIN_DEADLINE).await;
}

/// The node as it registers itself: reachable at the bound address.
fn node_spec(args: &DemoNodeArgs, addr: SocketAddr) -> pb::Node {
    pb::Node {
        id: args.id.clone(),
        address: addr.to_string(),
        federation: args.federation.clone().unwrap_or_default(),
        region: args.region.clone().unwrap_or_default(),
        zone: args.zone.clone().unwrap_or_default(),
        services: args.services.clone(),
        weight: args.weight,
        ..Default::default()
    }
}
