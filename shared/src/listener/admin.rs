//! Limits of the admin HTTP listeners (`/metrics`, `/ready`, `/live`, `/debug/*`, the
//! control plane's dashboard), which serve a scraper or an operator, never many clients:
//! at most [`ADMIN_MAX_CONNECTIONS`] connections (more are closed at once), and a
//! connection on which nothing was read or written for [`ADMIN_IDLE_TIMEOUT`] is closed,
//! so a client that connects and stalls, or sends its request a byte at a time, cannot
//! hold the port.
//!
//! With a certificate the listener serves HTTPS (HTTP/1.1 or HTTP/2 by ALPN): the
//! handshake runs in the connection's own task, inside the same idle limit, so a client
//! that starts one and stalls holds a slot for at most [`ADMIN_IDLE_TIMEOUT`] and never
//! delays the others. The certificate files are re-read when they change, as the gRPC
//! listener's are.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::{BackoffAcceptor, ConnectionCap, ConnectionPermit, ListenerMetrics};
use crate::tls::ServerTls;

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
    /// The certificate, when the listener serves HTTPS.
    tls: Option<ServerTls>,
}

impl AdminListener {
    /// `metrics_prefix` names the counters, e.g. `meridian_proxy_admin`; with `tls` the
    /// listener serves HTTPS.
    pub fn new(
        listener: TcpListener,
        what: &'static str,
        metrics_prefix: &str,
        tls: Option<ServerTls>,
    ) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let metrics = ListenerMetrics::new(metrics_prefix);
        Ok(AdminListener {
            acceptor: BackoffAcceptor::new(listener, what, metrics.clone()),
            local,
            cap: ConnectionCap::new(ADMIN_MAX_CONNECTIONS),
            metrics,
            tls,
        })
    }

    /// An acceptor with the current certificate, offering HTTP/2 and HTTP/1.1 (the gRPC
    /// listener's configuration offers HTTP/2 only; scrapers and browsers may want 1.1).
    fn https_acceptor(tls: &ServerTls) -> TlsAcceptor {
        let mut config = (*tls.current()).clone();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(std::sync::Arc::new(config))
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
                    let stream = match &self.tls {
                        None => AdminStream::Plain(tcp),
                        Some(tls) => {
                            AdminStream::Handshake(Box::new(Self::https_acceptor(tls).accept(tcp)))
                        }
                    };
                    let io = AdminIo {
                        stream,
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
    stream: AdminStream,
    _permit: ConnectionPermit,
    idle: Pin<Box<Sleep>>,
}

/// The bytes of an admin connection: plain, or TLS once its handshake is done.
enum AdminStream {
    Plain(TcpStream),
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<TlsStream<TcpStream>>),
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

    /// Drives a TLS handshake to its end; ready at once for a plain or established stream.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let AdminStream::Handshake(accept) = &mut self.stream else {
            return Poll::Ready(Ok(()));
        };
        let poll = Pin::new(accept.as_mut()).poll(cx).map_ok(|tls| {
            self.stream = AdminStream::Tls(Box::new(tls));
        });
        // A handshake that stalls counts against the idle limit like a stalled request.
        self.watch(cx, poll)
    }

    /// The established stream, once any handshake is done.
    fn ready_stream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<Pin<&mut (dyn AsyncReadWrite + Unpin)>>> {
        match self.poll_handshake(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let stream: &mut (dyn AsyncReadWrite + Unpin) = match &mut self.stream {
            AdminStream::Plain(tcp) => tcp,
            AdminStream::Tls(tls) => tls.as_mut(),
            AdminStream::Handshake(_) => unreachable!("the handshake finished above"),
        };
        Poll::Ready(Ok(Pin::new(stream)))
    }
}

/// What an admin connection's stream is, plain or TLS.
trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite> AsyncReadWrite for T {}

impl AsyncRead for AdminIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = match self.ready_stream(cx) {
            Poll::Ready(Ok(stream)) => stream.poll_read(cx, buf),
            other => return other.map_ok(|_| ()),
        };
        self.watch(cx, poll)
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = match self.ready_stream(cx) {
            Poll::Ready(Ok(stream)) => stream.poll_write(cx, buf),
            other => return other.map_ok(|_| 0),
        };
        self.watch(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.ready_stream(cx) {
            Poll::Ready(Ok(stream)) => stream.poll_flush(cx),
            other => other.map_ok(|_| ()),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.stream {
            AdminStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            AdminStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
            // Nothing was established: dropping the connection closes it.
            AdminStream::Handshake(_) => Poll::Ready(Ok(())),
        }
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
        let listener = AdminListener::new(tcp, "test admin", "test_admin", None).unwrap();
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

    /// Serves `/live` on a listener with a localhost certificate of a fresh CA; the
    /// address, and a client configuration trusting that CA offering only HTTP/1.1.
    async fn https_admin(dir: &std::path::Path) -> (SocketAddr, rustls::ClientConfig) {
        use crate::tls::ServerTlsFiles;
        use crate::tls::testing::TestCa;
        let ca = TestCa::new("admin test CA");
        let ca_file = ca.write(dir, "ca");
        let server = ca.localhost_server().write(dir, "server");
        let tls = ServerTls::load(ServerTlsFiles {
            cert: server.cert,
            key: server.key,
            client_ca: None,
            require_client_cert: false,
        })
        .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = AdminListener::new(tcp, "test admin", "test_admin_tls", Some(tls)).unwrap();
        let router = axum::Router::new().route("/live", axum::routing::get(|| async { "live" }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = crate::tls::ClientTls::load(crate::tls::ClientTlsFiles {
            ca: ca_file,
            cert: None,
            key: None,
            server_name: None,
        })
        .unwrap();
        let mut config = (*client.current()).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (addr, config)
    }

    const GET_LIVE: &[u8] = b"GET /live HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn with_a_certificate_it_serves_https_and_refuses_plain_http() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, client) = https_admin(dir.path()).await;

        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        tls.write_all(GET_LIVE).await.unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("live"), "{answer}");

        // A plain HTTP request gets no answer: the handshake fails and the connection closes.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(GET_LIVE).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
            .await
            .expect("the connection is closed");
        assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_closed_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, _) = https_admin(dir.path()).await;
        tokio::time::pause();
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(ADMIN_IDLE_TIMEOUT * 2, stalled.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }
}
