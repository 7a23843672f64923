//! The pooled HTTP/2 connections to one endpoint. gRPC multiplexes every request to a node
//! over one connection; the proxy keeps one such connection per worker thread (see
//! `server.rs`: each worker runs its own single-threaded runtime and serves the client
//! connections handed to it), and a call goes over its worker's. A call, its client
//! connection and its upstream connection then live on one thread: no lock of the h2
//! connection is contended across cores and no wake-up crosses them. Each connection is
//! opened on first use and reopened when it closes. The request path loads the current
//! sender lock-free (`ArcSwapOption`) and clones it; only (re)connecting takes a lock, so
//! concurrent requests to a node that is down open one connection attempt per worker, not
//! one each.
//!
//! A connection to a node of a service with an `[[upstream_tls]]` rule does TLS (ALPN
//! `h2`) right after the TCP connect, within the same connect timeout; whether it does is
//! fixed when the endpoint is created (see `upstream_tls.rs`).

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meridian_shared::tls::ClientTls;
use tokio::net::TcpStream;

/// Request body type on every upstream connection.
pub type UpstreamBody = tonic::body::Body;

/// How long connecting to a node may take, TLS handshake included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a request could not be forwarded. `NotSent` means the node never saw the request,
/// so retrying it elsewhere is always safe.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {address}: {reason}")]
    NotSent { address: String, reason: String },
    #[error("the connection to {address} failed: {source}")]
    Failed {
        address: String,
        source: hyper::Error,
    },
}

/// A request that could not be forwarded; `unsent` holds it back when the node never saw
/// it, so it can be retried elsewhere as is.
#[derive(Debug)]
pub struct SendFailure {
    pub error: UpstreamError,
    pub unsent: Option<http::Request<UpstreamBody>>,
}

thread_local! {
    /// The index of the worker this thread is, 0 on threads that are not workers.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// How many workers serve client connections: one per CPU this process may run on.
pub fn worker_count() -> usize {
    static WORKERS: OnceLock<usize> = OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Marks the calling thread as worker `index` (below [`worker_count`]): its calls use that
/// worker's connection to each node.
pub fn enter_worker(index: usize) {
    WORKER.set(index);
}

#[derive(Debug)]
pub struct Connection {
    address: String,
    tls: Option<UpstreamTlsTarget>,
    /// One connection per worker, indexed by the worker's index.
    per_worker: Box<[WorkerConnection]>,
}

/// One worker's connection to the node.
#[derive(Debug, Default)]
struct WorkerConnection {
    sender: ArcSwapOption<SendRequest<UpstreamBody>>,
    connecting: tokio::sync::Mutex<()>,
}

/// TLS towards a node: the configuration, and the host its certificate must name (unless
/// the configuration names another).
#[derive(Debug)]
struct UpstreamTlsTarget {
    tls: ClientTls,
    host: String,
}

impl Connection {
    /// A connection in h2c.
    pub fn new(address: String) -> Self {
        Connection {
            address,
            tls: None,
            per_worker: (0..worker_count())
                .map(|_| WorkerConnection::default())
                .collect(),
        }
    }

    /// A connection doing TLS with `tls`; the node's certificate must name `host` (the
    /// host of its address) unless `tls` names another server.
    pub fn with_tls(address: String, host: &str, tls: ClientTls) -> Self {
        Connection {
            tls: Some(UpstreamTlsTarget {
                tls,
                host: host.to_owned(),
            }),
            ..Connection::new(address)
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends `request` to the node and returns its response head (the body streams).
    pub async fn send(
        &self,
        request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<Incoming>, SendFailure> {
        let own = self.own();
        let mut sender = match self.sender(own).await {
            Ok(sender) => sender,
            Err(error) => {
                return Err(SendFailure {
                    error,
                    unsent: Some(request),
                });
            }
        };
        if sender.ready().await.is_err() {
            // The connection closed between load and use: reconnect once.
            own.sender.store(None);
            sender = match self.sender(own).await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(SendFailure {
                        error,
                        unsent: Some(request),
                    });
                }
            };
        }
        sender.try_send_request(request).await.map_err(|mut e| {
            let unsent = e.take_message();
            if unsent.is_some() {
                // The connection went away before this request was written.
                own.sender.store(None);
            }
            SendFailure {
                unsent,
                error: UpstreamError::Failed {
                    address: self.address.clone(),
                    source: e.into_error(),
                },
            }
        })
    }

    /// The calling worker's connection.
    fn own(&self) -> &WorkerConnection {
        &self.per_worker[WORKER.get() % self.per_worker.len()]
    }

    async fn sender(
        &self,
        own: &WorkerConnection,
    ) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        if let Some(sender) = own.sender.load_full().filter(|s| !s.is_closed()) {
            return Ok((*sender).clone());
        }
        let _connecting = own.connecting.lock().await;
        if let Some(sender) = own.sender.load_full().filter(|s| !s.is_closed()) {
            return Ok((*sender).clone());
        }
        let sender = self.connect().await?;
        own.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let not_sent = |reason: String| UpstreamError::NotSent {
            address: self.address.clone(),
            reason,
        };
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let timed_out = |_| not_sent(format!("no answer within {CONNECT_TIMEOUT:?}"));
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(&self.address))
            .await
            .map_err(timed_out)?
            .map_err(|e| not_sent(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let handshaken = match &self.tls {
            None => handshake(TokioIo::new(stream), &self.address).await,
            Some(target) => {
                let stream =
                    tokio::time::timeout_at(deadline, target.tls.connect(stream, &target.host))
                        .await
                        .map_err(timed_out)?
                        .map_err(|e| not_sent(format!("TLS handshake failed: {e}")))?;
                handshake(TokioIo::new(stream), &self.address).await
            }
        };
        handshaken.map_err(|e| not_sent(e.to_string()))
    }
}

/// The HTTP/2 handshake on a connected (and, for TLS, handshaken) stream; spawns the task
/// that drives the connection.
async fn handshake<T>(io: T, address: &str) -> hyper::Result<SendRequest<UpstreamBody>>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(io)
        .await?;
    let address = address.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%address, error = %e, "upstream connection closed");
        }
    });
    Ok(sender)
}
