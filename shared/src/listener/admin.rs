//! Limits of the admin HTTP listeners (`/metrics`, `/ready`, `/live`, `/debug/*`), which
//! serve a scraper or an operator, never many clients: at most [`ADMIN_MAX_CONNECTIONS`]
//! connections (more are closed at once), and a connection on which nothing was read or
//! written for [`ADMIN_IDLE_TIMEOUT`] is closed, so a client that connects and stalls,
//! or sends its request a byte at a time, cannot hold the port.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

use super::{BackoffAcceptor, ConnectionCap, ConnectionPermit, ListenerMetrics};

/// Admin connections held at once.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// An admin connection with no byte read or written for this long is closed.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin listener for `axum::serve`.
pub struct AdminListener {
    acceptor: BackoffAcceptor,
    local: SocketAddr,
    cap: ConnectionCap,
    metrics: ListenerMetrics,
}

impl AdminListener {
    /// `metrics_prefix` names the counters, e.g. `meridian_proxy_admin`.
    pub fn new(
        listener: TcpListener,
        what: &'static str,
        metrics_prefix: &str,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let metrics = ListenerMetrics::new(metrics_prefix);
        Ok(AdminListener {
            acceptor: BackoffAcceptor::new(listener, what, metrics.clone()),
            local,
            cap: ConnectionCap::new(ADMIN_MAX_CONNECTIONS),
            metrics,
        })
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (AdminIo, SocketAddr) {
        loop {
            let (tcp, peer) = self.acceptor.accept().await;
            match self.cap.try_acquire() {
                Some(permit) => {
                    let io = AdminIo {
                        tcp,
                        _permit: permit,
                        idle: Box::pin(tokio::time::sleep(ADMIN_IDLE_TIMEOUT)),
                    };
                    return (io, peer);
                }
                None => {
                    self.metrics.refused_over_limit.increment(1);
                    tracing::debug!(%peer, "admin connection refused: {ADMIN_MAX_CONNECTIONS} are open");
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// An admin connection, failed with `TimedOut` once idle for [`ADMIN_IDLE_TIMEOUT`].
pub struct AdminIo {
    tcp: TcpStream,
    _permit: ConnectionPermit,
    idle: Pin<Box<Sleep>>,
}

impl AdminIo {
    /// `poll` made progress: push the deadline back; it is pending: check the deadline.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.idle
                    .as_mut()
                    .reset(Instant::now() + ADMIN_IDLE_TIMEOUT);
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "admin connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for AdminIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.tcp).poll_read(cx, buf);
        self.watch(cx, poll)
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_stalled_admin_connection_is_closed_and_a_flood_is_capped() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = AdminListener::new(tcp, "test admin", "test_admin").unwrap();
        let router = axum::Router::new().route("/live", axum::routing::get(|| async { "live" }));
        tokio::spawn(async move { axum::serve(listener, router).await });

        tokio::time::pause();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET /li").await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(ADMIN_IDLE_TIMEOUT * 2, stalled.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        tokio::time::resume();

        let mut flood = tokio::task::JoinSet::new();
        for _ in 0..ADMIN_MAX_CONNECTIONS + 8 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            flood.spawn(async move {
                let mut buf = [0u8; 8];
                let read = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf));
                (matches!(read.await, Ok(Ok(0))), tcp)
            });
        }
        let mut closed = 0;
        let mut held = Vec::new();
        while let Some(done) = flood.join_next().await {
            let (was_closed, tcp) = done.unwrap();
            closed += usize::from(was_closed);
            held.push(tcp);
        }
        assert_eq!(closed, 8);
    }
}
