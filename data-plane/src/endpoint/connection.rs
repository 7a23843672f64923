//! The pooled HTTP/2 connections to one endpoint. gRPC multiplexes requests to a node over
//! HTTP/2 connections; the proxy keeps a small pool of them per worker thread (see
//! `server.rs`: each worker runs its own single-threaded runtime and serves the client
//! connections handed to it), and a call goes over one of its worker's. A call, its client
//! connection and its upstream connection then live on one thread: no lock of the
//! connection is contended across cores and no wake-up crosses them. Each connection is
//! opened on first use and reopened when it closes. The request path loads the current
//! connection lock-free (`ArcSwapOption`) and clones its handle; only (re)connecting takes
//! a lock, so concurrent requests to a node that is down open one connection attempt per
//! slot, not one each. The connections speak HTTP/2 through the proxy's own client
//! ([`crate::wire::client`]): the call's own future sends the request and waits for the
//! answer.
//!
//! **One slow reader must not stall the other callers.** A response's data waits in the
//! proxy until its client reads it, and until then it holds both its stream's and its
//! connection's HTTP/2 flow-control window. With hyper's defaults, which the proxy used
//! before (2 MiB per stream, 5 MiB per connection), three clients that stop reading large
//! responses used up the whole connection window, and every other call to the node over
//! that connection stalled. So:
//! - each stream's window is `stream_window_bytes` and the connection's is that times
//!   `max_streams_per_connection` ([`PoolSettings`]): the calls a connection carries can
//!   never use up its window together, whatever their clients do; what the proxy holds
//!   for clients that do not read is at most a stream window per call;
//! - a connection carries at most `max_streams_per_connection` calls; the next call goes
//!   over the worker's next connection to the node, opened then (up to the pool's size;
//!   past it, over the connection carrying the fewest). A call keeps its place on its
//!   connection until its response ends ([`StreamSlot`], given back with
//!   [`Connection::end_stream`]).
//!
//! A connection to a node of a service with an `[[upstream_tls]]` rule does TLS (ALPN
//! `h2`) right after the TCP connect, within the same connect timeout; whether it does is
//! fixed when the endpoint is created (see `upstream_tls.rs`).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use meridian_shared::config::UpstreamLimits;
use meridian_shared::tls::ClientTls;
use tokio::net::TcpStream;

use crate::wire::{ClientConnection, ResponseBody, SendError, StreamError};

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
        source: StreamError,
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

/// How the connections to one node are pooled and sized (from `[upstream]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Calls one connection carries before the next call goes over another.
    pub max_streams_per_connection: u32,
    /// Connections per worker.
    pub connections_per_worker: usize,
    /// HTTP/2 window of each call's response, bytes.
    pub stream_window_bytes: u32,
    /// HTTP/2 window of a whole connection, bytes.
    pub connection_window_bytes: u32,
}

impl PoolSettings {
    /// The pool `limits` describe: `max_connections_per_endpoint` shared by the workers,
    /// at least one each.
    pub fn from_limits(limits: &UpstreamLimits) -> Self {
        let per_worker = limits.max_connections_per_endpoint as usize / worker_count();
        PoolSettings {
            max_streams_per_connection: limits.max_streams_per_connection,
            connections_per_worker: per_worker.max(1),
            stream_window_bytes: limits.stream_window_bytes,
            connection_window_bytes: limits.connection_window_bytes(),
        }
    }
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings::from_limits(&UpstreamLimits::default())
    }
}

#[derive(Debug)]
pub struct Connection {
    address: String,
    tls: Option<UpstreamTlsTarget>,
    settings: PoolSettings,
    /// Each worker's connections, indexed by the worker's index.
    per_worker: Box<[WorkerPool]>,
}

/// One worker's connections to the node, filled in order.
#[derive(Debug)]
struct WorkerPool {
    slots: Box<[Slot]>,
}

/// One connection of a worker's pool.
#[derive(Debug, Default)]
struct Slot {
    sender: ArcSwapOption<ClientConnection>,
    connecting: tokio::sync::Mutex<()>,
    /// Calls over this connection whose response has not ended.
    streams: AtomicU32,
}

/// The connection a call went over; given back with [`Connection::end_stream`] when the
/// call's response ends, so the connection can take another call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a stream slot must be given back with Connection::end_stream"]
pub struct StreamSlot {
    worker: u32,
    slot: u32,
}

/// A call's place on a connection while its request is being sent; given back if the
/// send fails or is abandoned (its future dropped at the deadline).
struct Claim<'a> {
    slot: &'a Slot,
    kept: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.slot.streams.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// TLS towards a node: the configuration, and the host its certificate must name (unless
/// the configuration names another).
#[derive(Debug)]
struct UpstreamTlsTarget {
    tls: ClientTls,
    host: String,
}

impl Connection {
    /// Connections in h2c, pooled as `settings` say.
    pub fn new(address: String, settings: PoolSettings) -> Self {
        Connection {
            address,
            tls: None,
            settings,
            per_worker: (0..worker_count())
                .map(|_| WorkerPool {
                    slots: (0..settings.connections_per_worker)
                        .map(|_| Slot::default())
                        .collect(),
                })
                .collect(),
        }
    }

    /// Connections doing TLS with `tls`; the node's certificate must name `host` (the
    /// host of its address) unless `tls` names another server.
    pub fn with_tls(address: String, host: &str, tls: ClientTls, settings: PoolSettings) -> Self {
        Connection {
            tls: Some(UpstreamTlsTarget {
                tls,
                host: host.to_owned(),
            }),
            ..Connection::new(address, settings)
        }
    }

    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// Connections open now, all workers together.
    pub fn open_connections(&self) -> usize {
        self.slots()
            .filter(|slot| slot.sender.load().as_ref().is_some_and(|s| !s.is_closed()))
            .count()
    }

    /// Calls whose response has not ended, all connections together.
    pub fn open_streams(&self) -> u32 {
        self.slots()
            .map(|slot| slot.streams.load(Ordering::Relaxed))
            .sum()
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.per_worker.iter().flat_map(|pool| pool.slots.iter())
    }

    /// Gives back the place of a call whose response ended.
    pub fn end_stream(&self, stream: StreamSlot) {
        self.per_worker[stream.worker as usize].slots[stream.slot as usize]
            .streams
            .fetch_sub(1, Ordering::Relaxed);
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends `request` to the node and returns its response head (the body streams) and
    /// the connection's place the call holds until its response ends.
    ///
    /// Not an `async fn`, which would hold `request` twice in every call's future.
    #[allow(clippy::manual_async_fn)] // see above
    pub fn send(
        &self,
        request: http::Request<UpstreamBody>,
    ) -> impl Future<Output = Result<(http::Response<ResponseBody>, StreamSlot), SendFailure>> {
        async move {
            let worker = WORKER.get() % self.per_worker.len();
            let pool = &self.per_worker[worker];
            let index = pool.choose(self.settings.max_streams_per_connection);
            let own = &pool.slots[index];
            own.streams.fetch_add(1, Ordering::Relaxed);
            let mut claim = Claim {
                slot: own,
                kept: false,
            };
            // The common case, an open connection, sends at once; (re)connecting is boxed
            // so its state is not part of every call's future (nor moved with it). The
            // connection's handle is taken (the lock-free load is given back at once) and
            // its sending future awaited where it is made: bound to a local first, it
            // would take its space in this future twice.
            let open = own
                .sender
                .load()
                .as_deref()
                .filter(|s| !s.is_closed())
                .cloned();
            let response = match open {
                Some(connection) => self.sent(own, connection.send(request).await)?,
                None => Box::pin(self.send_on(own, request)).await?,
            };
            claim.kept = true;
            let stream = StreamSlot {
                worker: worker as u32,
                slot: index as u32,
            };
            Ok((response, stream))
        }
    }

    /// Sends `request` over the connection in `own`, (re)connecting it first (the slow
    /// path: the connection is not open, or closed since).
    async fn send_on(
        &self,
        own: &Slot,
        request: http::Request<UpstreamBody>,
    ) -> Result<http::Response<ResponseBody>, SendFailure> {
        let mut request = request;
        let mut reconnected = false;
        loop {
            let sender = match self.sender(own).await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(SendFailure {
                        error,
                        unsent: Some(request),
                    });
                }
            };
            match sender.send(request).await {
                // The connection closed between load and use: reconnect once.
                Err(SendError::NotSent(_, unsent)) if !reconnected => {
                    own.sender.store(None);
                    request = *unsent;
                    reconnected = true;
                }
                sent => return self.sent(own, sent),
            }
        }
    }

    /// What sending over the connection in `own` gave: the response head, or the failure
    /// (with the request when the node never saw it).
    #[allow(clippy::result_large_err)] // the error carries the request
    fn sent(
        &self,
        own: &Slot,
        sent: Result<http::Response<ResponseBody>, SendError<UpstreamBody>>,
    ) -> Result<http::Response<ResponseBody>, SendFailure> {
        sent.map_err(|e| {
            let (source, unsent) = match e {
                SendError::NotSent(source, request) => {
                    // The connection went away before this request was written.
                    own.sender.store(None);
                    (source, Some(*request))
                }
                SendError::Failed(source) => (source, None),
            };
            SendFailure {
                unsent,
                error: UpstreamError::Failed {
                    address: self.address.clone(),
                    source,
                },
            }
        })
    }

    async fn sender(&self, own: &Slot) -> Result<ClientConnection, UpstreamError> {
        if let Some(sender) = own.sender.load_full().filter(|s| !s.is_closed()) {
            return Ok((*sender).clone());
        }
        let _connecting = own.connecting.lock().await;
        if let Some(sender) = own.sender.load_full().filter(|s| !s.is_closed()) {
            return Ok((*sender).clone());
        }
        // Boxed: connecting (TCP, TLS, HTTP/2 handshakes) is rare, and its large state
        // would otherwise be part of every call's future.
        let sender = Box::pin(self.connect()).await?;
        own.sender.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn connect(&self) -> Result<ClientConnection, UpstreamError> {
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
        let settings = &self.settings;
        Ok(match &self.tls {
            None => start(stream, &self.address, settings),
            Some(target) => {
                let stream =
                    tokio::time::timeout_at(deadline, target.tls.connect(stream, &target.host))
                        .await
                        .map_err(timed_out)?
                        .map_err(|e| not_sent(format!("TLS handshake failed: {e}")))?;
                start(stream, &self.address, settings)
            }
        })
    }
}

impl WorkerPool {
    /// The connection for the next call: the first carrying fewer than `max_streams`
    /// calls (opened on use if it is not open), else the one carrying the fewest.
    fn choose(&self, max_streams: u32) -> usize {
        let mut fewest = (0, u32::MAX);
        for (index, slot) in self.slots.iter().enumerate() {
            let streams = slot.streams.load(Ordering::Relaxed);
            if streams < max_streams {
                return index;
            }
            if streams < fewest.1 {
                fewest = (index, streams);
            }
        }
        fewest.0
    }
}

/// Starts HTTP/2 on a connected (and, for TLS, handshaken) stream, with the pool's
/// windows; spawns the task that drives the connection.
fn start<T>(io: T, address: &str, settings: &PoolSettings) -> ClientConnection
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    ClientConnection::start(
        io,
        address,
        settings.stream_window_bytes,
        settings.connection_window_bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(slots: usize) -> WorkerPool {
        WorkerPool {
            slots: (0..slots).map(|_| Slot::default()).collect(),
        }
    }

    #[test]
    fn calls_fill_one_connection_then_go_over_the_next() {
        let pool = pool(3);
        assert_eq!(pool.choose(2), 0);
        pool.slots[0].streams.store(2, Ordering::Relaxed);
        assert_eq!(pool.choose(2), 1, "the first connection is full");
        pool.slots[1].streams.store(2, Ordering::Relaxed);
        pool.slots[2].streams.store(3, Ordering::Relaxed);
        assert_eq!(pool.choose(2), 0, "all full: the one carrying the fewest");
        pool.slots[0].streams.store(1, Ordering::Relaxed);
        assert_eq!(pool.choose(2), 0, "a call ended: the first has room again");
    }

    #[test]
    fn the_connection_window_has_room_for_every_stream_at_its_full_window() {
        let settings = PoolSettings::from_limits(&UpstreamLimits {
            max_streams_per_connection: 10,
            stream_window_bytes: 65_535,
            max_connections_per_endpoint: 1,
            ..Default::default()
        });
        assert_eq!(settings.connection_window_bytes, 655_350);
        assert_eq!(
            settings.connections_per_worker, 1,
            "at least one per worker"
        );
    }

    #[tokio::test]
    async fn a_failed_send_gives_its_place_back() {
        // Nothing listens on port 1.
        let connection = Connection::new("127.0.0.1:1".into(), PoolSettings::default());
        let request = http::Request::new(UpstreamBody::default());
        assert!(connection.send(request).await.is_err());
        assert_eq!(connection.open_streams(), 0);
    }
}
