//! A TCP listener turned into a stream of TLS connections, for tonic's
//! `serve_with_incoming_shutdown` or a hyper accept loop.
//!
//! Handshakes run concurrently, each in its own task with a deadline, so one slow or silent
//! client cannot hold up the clients behind it. The number of handshakes in flight is
//! capped: past the cap the listener is not read, and the kernel's backlog absorbs (then
//! refuses) further clients. A failed handshake is logged at debug level and dropped; it is
//! the client's problem, not the server's. Connections are yielded in the order their
//! handshakes finish.
//!
//! Dropping the stream stops the accept loop and closes the listening socket at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_util::task::AbortOnDropHandle;

use super::ServerTls;

/// How long to stop accepting after `accept` failed (typically: out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Finished connections waiting for the server to take them.
const READY_BUFFER: usize = 16;

/// Bounds on the handshakes in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// A client that has not finished its handshake by then is disconnected.
    pub timeout: Duration,
    /// Handshakes in flight at once, at least 1.
    pub max_pending: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(10),
            max_pending: 256,
        }
    }
}

/// The established TLS connections of a listener. Never yields an error: the `Result` is
/// the shape tonic's `serve_with_incoming*` asks for.
pub struct TlsIncoming {
    ready: mpsc::Receiver<TlsStream<TcpStream>>,
    _accept_loop: AbortOnDropHandle<()>,
}

impl TlsIncoming {
    /// Starts accepting on `listener`. Call inside the tokio runtime.
    pub fn new(listener: TcpListener, tls: ServerTls, limits: HandshakeLimits) -> TlsIncoming {
        let (tx, ready) = mpsc::channel(READY_BUFFER);
        let accept_loop = tokio::spawn(accept_loop(listener, tls, limits, tx));
        TlsIncoming {
            ready,
            _accept_loop: AbortOnDropHandle::new(accept_loop),
        }
    }
}

impl Stream for TlsIncoming {
    type Item = Result<TlsStream<TcpStream>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|next| next.map(Ok))
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    limits: HandshakeLimits,
    ready: mpsc::Sender<TlsStream<TcpStream>>,
) {
    let max_pending = limits.max_pending.max(1);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if handshakes.len() < max_pending => match accepted {
                Ok((tcp, peer)) => {
                    handshakes.spawn(handshake(tls.acceptor(), tcp, peer, limits.timeout));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a TCP connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some(done) = handshakes.join_next() => {
                if let Ok(Some(stream)) = done
                    && ready.send(stream).await.is_err()
                {
                    return;
                }
            }
            () = ready.closed() => return,
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    // gRPC writes small frames it wants sent now.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
            None
        }
    }
}
