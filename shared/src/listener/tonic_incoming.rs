//! The limits of [`crate::config::ListenerLimits`] for a tonic server, which has knobs for
//! the HTTP/2 settings (streams, header list, keep-alive, h2's own reset bounds) but none
//! for the number of connections, the handshake deadline or idleness.
//!
//! [`LimitedIncoming`] is the stream of connections to give to
//! `serve_with_incoming_shutdown`: it accepts with backoff ([`BackoffAcceptor`]), closes a
//! connection over the cap at once, runs each handshake (TLS, then the HTTP/2 preface) in
//! its own task under the handshake deadline, and yields [`LimitedIo`]s. Each carries its
//! [`ConnectionActivity`] in its connect info; [`CallTrackingLayer`] takes it out of every
//! request (putting tonic's own connect info back, for `remote_addr()` and the TLS peer)
//! and counts the call. A watcher task per connection shuts the socket down when the
//! connection has been idle too long or resets too many calls: tonic gives no handle to
//! send a GOAWAY, so the close is a TCP shutdown, done only when no call is open (idle) or
//! the client is abusive (resets).

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use super::{
    BackoffAcceptor, ConnectionActivity, ConnectionCap, ConnectionPermit, ListenerMetrics,
    PrefacedIo, StreamGuard, TrackedBody, read_preface,
};
use crate::config::ListenerLimits;

/// Finished handshakes waiting for the server to take them.
const READY_BUFFER: usize = 16;

/// The connections of a listener, within its limits. Dropping it stops accepting.
pub struct LimitedIncoming<S> {
    ready: mpsc::Receiver<LimitedIo<S>>,
    _accept_loop: AbortOnDropHandle<()>,
}

impl<S> LimitedIncoming<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Starts accepting on `listener` (named `what` in logs). `handshake` turns an
    /// accepted socket into the stream to serve (e.g. the TLS handshake); it runs under the
    /// handshake deadline together with the preface read. Call inside the tokio runtime.
    pub fn new<F, Fut>(
        listener: TcpListener,
        what: &'static str,
        limits: &ListenerLimits,
        metrics: ListenerMetrics,
        handshake: F,
    ) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = io::Result<S>> + Send + 'static,
    {
        let (tx, ready) = mpsc::channel(READY_BUFFER);
        let acceptor = BackoffAcceptor::new(listener, what, metrics.clone());
        let settings = Settings {
            cap: ConnectionCap::new(limits.max_connections as usize),
            handshake_timeout: limits.handshake_timeout(),
            idle_timeout: limits.idle_timeout(),
            max_premature_resets: limits.max_premature_resets,
            metrics,
        };
        let accept_loop = tokio::spawn(accept_loop(acceptor, settings, Arc::new(handshake), tx));
        LimitedIncoming {
            ready,
            _accept_loop: AbortOnDropHandle::new(accept_loop),
        }
    }
}

impl<S> Stream for LimitedIncoming<S> {
    type Item = Result<LimitedIo<S>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|next| next.map(Ok))
    }
}

struct Settings {
    cap: ConnectionCap,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    max_premature_resets: u32,
    metrics: ListenerMetrics,
}

async fn accept_loop<S, F, Fut>(
    mut acceptor: BackoffAcceptor,
    settings: Settings,
    handshake: Arc<F>,
    ready: mpsc::Sender<LimitedIo<S>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
    let settings = Arc::new(settings);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = acceptor.accept() => accepted,
            () = ready.closed() => return,
        };
        let Some(permit) = settings.cap.try_acquire() else {
            settings.metrics.refused_over_limit.increment(1);
            tracing::debug!(%peer, "connection refused: listener_limits.max_connections are open");
            continue;
        };
        tokio::spawn(open(
            tcp,
            peer,
            permit,
            Arc::clone(&settings),
            Arc::clone(&handshake),
            ready.clone(),
        ));
    }
}

/// Runs the handshake of one connection and hands it to the server.
async fn open<S, F, Fut>(
    tcp: TcpStream,
    peer: SocketAddr,
    permit: ConnectionPermit,
    settings: Arc<Settings>,
    handshake: Arc<F>,
    ready: mpsc::Sender<LimitedIo<S>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<S>> + Send + 'static,
{
    let closer = match tcp.as_fd().try_clone_to_owned() {
        Ok(fd) => std::net::TcpStream::from(fd),
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot keep a handle on a new connection; closing it (out of file descriptors?)");
            return;
        }
    };
    // gRPC writes small frames it wants sent now.
    let _ = tcp.set_nodelay(true);
    let started = async move { read_preface(handshake(tcp).await?).await };
    let io = match tokio::time::timeout(settings.handshake_timeout, started).await {
        Ok(Ok(io)) => io,
        Ok(Err(e)) => {
            settings.metrics.closed_handshake_failed.increment(1);
            tracing::debug!(%peer, error = %e, "connection closed: its handshake failed");
            return;
        }
        Err(_) => {
            settings.metrics.closed_handshake_timeout.increment(1);
            tracing::debug!(%peer, timeout = ?settings.handshake_timeout, "connection closed: no TLS handshake and HTTP/2 preface within listener_limits.handshake_timeout_ms");
            return;
        }
    };
    let activity = Arc::new(ConnectionActivity::new(settings.max_premature_resets));
    let watcher = tokio::spawn(watch(
        Arc::clone(&activity),
        closer,
        peer,
        Arc::clone(&settings),
    ));
    settings.metrics.open.increment(1.0);
    let limited = LimitedIo {
        io,
        activity,
        _permit: permit,
        _watcher: AbortOnDropHandle::new(watcher),
        open: settings.metrics.open.clone(),
    };
    let _ = ready.send(limited).await;
}

/// Shuts the connection down when it idles too long or resets too many calls.
async fn watch(
    activity: Arc<ConnectionActivity>,
    closer: std::net::TcpStream,
    peer: SocketAddr,
    settings: Arc<Settings>,
) {
    tokio::select! {
        () = activity.idle_for(settings.idle_timeout) => {
            settings.metrics.closed_idle.increment(1);
            tracing::debug!(%peer, "connection closed: no call for listener_limits.idle_timeout_seconds");
        }
        () = activity.too_many_resets() => {
            settings.metrics.closed_premature_resets.increment(1);
            tracing::warn!(%peer, resets = activity.premature_resets(), "connection closed: the client cancelled too many calls before their answer (HTTP/2 rapid reset?); see listener_limits.max_premature_resets");
        }
    }
    let _ = closer.shutdown(Shutdown::Both);
}

/// A connection within the listener's limits: its place under the cap is given back, and
/// its watcher stopped, when tonic drops it.
pub struct LimitedIo<S> {
    io: PrefacedIo<S>,
    activity: Arc<ConnectionActivity>,
    _permit: ConnectionPermit,
    _watcher: AbortOnDropHandle<()>,
    open: metrics::Gauge,
}

impl<S> Drop for LimitedIo<S> {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// tonic's connect info of the stream, with the connection's activity beside it until
/// [`CallTracking`] takes it out.
#[derive(Debug, Clone)]
pub struct LimitedConnectInfo<C> {
    inner: C,
    activity: Arc<ConnectionActivity>,
}

impl<S: Connected> Connected for LimitedIo<S> {
    type ConnectInfo = LimitedConnectInfo<S::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        LimitedConnectInfo {
            inner: self.io.connect_info(),
            activity: Arc::clone(&self.activity),
        }
    }
}

/// Counts every call of a [`LimitedIncoming`] connection on its [`ConnectionActivity`].
/// Add it first (outermost) with `Server::builder().layer(..)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTrackingLayer;

impl<S> tower::Layer<S> for CallTrackingLayer {
    type Service = CallTracking<S>;

    fn layer(&self, inner: S) -> CallTracking<S> {
        CallTracking { inner }
    }
}

#[derive(Debug, Clone)]
pub struct CallTracking<S> {
    inner: S,
}

type TrackedResponse<R> = Response<TrackedBody<R, ConnectionActivity>>;

impl<S, B, R> tower::Service<Request<B>> for CallTracking<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = TrackedResponse<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<TrackedResponse<R>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut call = take_activity(request.extensions_mut()).map(StreamGuard::start);
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            if let Some(call) = call.as_mut() {
                call.answered();
            }
            Ok(result?.map(|body| TrackedBody::new(body, call)))
        })
    }
}

/// The activity of the request's connection, leaving tonic's own connect info in its place.
fn take_activity(extensions: &mut http::Extensions) -> Option<Arc<ConnectionActivity>> {
    if let Some(info) = extensions.remove::<LimitedConnectInfo<TcpConnectInfo>>() {
        extensions.insert(info.inner);
        return Some(info.activity);
    }
    let info = extensions.remove::<LimitedConnectInfo<TlsConnectInfo<TcpConnectInfo>>>()?;
    extensions.insert(info.inner);
    Some(info.activity)
}
