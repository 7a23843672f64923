//! The server side of a client connection, over `h2` directly: one future per connection
//! that accepts its streams, drives every stream's call and response, and sends the
//! keep-alive PINGs, all in the connection's one task.
//!
//! hyper's HTTP/2 server spawned a task per stream, boxed each call's future and moved it
//! between them; the proxy's profile put task spawn and free, memmove and the allocator
//! among its largest costs. Here a stream is one entry of the connection's
//! [`FuturesUnordered`] (one allocation, woken on its own), and the work of a call is:
//!
//! 1. build `Request<RecvBody>` from the request h2 accepted and give it to the handler;
//! 2. while the call runs, watch for the client's RST_STREAM: a reset drops the call's
//!    future at once (as hyper did, so a guard inside it sees a call cancelled before its
//!    answer);
//! 3. send the response head (ending the stream if the body is already empty), with a
//!    `date` header when it has none (as hyper added);
//! 4. pump the body with [`send_body`] as the client's window allows.
//!
//! What hyper also did and this does not need: strip connection-specific headers from
//! responses (the proxy's responses never carry them: h2 refuses them from nodes, and
//! the proxy's own services do not set them), set `content-length` from an exact size
//! hint (gRPC bodies have none), and serve CONNECT (not enabled).
//!
//! The settings are hyper's defaults where the listener sets none (1 MiB stream and
//! connection windows, 16 KiB frames, 400 KiB send buffer per stream, 1,024 local
//! error resets), so clients see the same SETTINGS as before. The keep-alive PING goes
//! out every interval whatever the traffic (hyper skipped it while frames arrived): one
//! PING per connection per `keepalive_interval` costs nothing worth tracking reads for.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::Reason;
use h2::server::SendResponse;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::keepalive::{Keepalive, KeepaliveSettings};
use super::{RecvBody, SendBody, send_body};

const WINDOW: u32 = 1024 * 1024;
const MAX_FRAME: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// How the connections of a listener are served: their HTTP/2 settings and keep-alive.
#[derive(Clone, Debug)]
pub struct Http2Server {
    builder: h2::server::Builder,
    keepalive: Option<KeepaliveSettings>,
}

impl Http2Server {
    /// A server allowing `max_concurrent_streams` calls at once per connection and
    /// request headers up to `max_header_list_size` bytes; with `keepalive_interval`,
    /// it PINGs every connection that often and closes one whose client does not
    /// answer within `keepalive_timeout`.
    pub fn new(
        max_concurrent_streams: u32,
        max_header_list_size: u32,
        keepalive_interval: Option<Duration>,
        keepalive_timeout: Duration,
    ) -> Self {
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(WINDOW)
            .initial_connection_window_size(WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_concurrent_streams(max_concurrent_streams)
            .max_header_list_size(max_header_list_size);
        Http2Server {
            builder,
            keepalive: keepalive_interval.map(|interval| KeepaliveSettings {
                interval,
                timeout: keepalive_timeout,
            }),
        }
    }

    /// The HTTP/2 handshake on `io` (which starts with the client's preface), then a
    /// connection that serves each call with `handler`.
    pub async fn handshake<T, H>(&self, io: T, handler: H) -> Result<Connection<T, H>, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin,
        H: Handler,
    {
        let mut conn = self.builder.handshake(io).await?;
        let keepalive = match (self.keepalive, conn.ping_pong()) {
            (Some(settings), Some(ping_pong)) => Some(Keepalive::new(settings, ping_pong)),
            _ => None,
        };
        Ok(Connection {
            conn,
            handler,
            streams: FuturesUnordered::new(),
            keepalive,
        })
    }
}

/// What answers the calls of a connection: a function from a request to the future of
/// its response.
pub trait Handler {
    type Body: Body<Data = Bytes>;
    type Call: Future<Output = Response<Self::Body>>;

    fn call(&mut self, request: Request<RecvBody>) -> Self::Call;
}

impl<H, F, B> Handler for H
where
    H: FnMut(Request<RecvBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
{
    type Body = B;
    type Call = F;

    fn call(&mut self, request: Request<RecvBody>) -> F {
        self(request)
    }
}

/// One served connection: resolves when it closed (after a graceful shutdown, once its
/// last call ended), or failed. Dropping it closes the socket and drops its calls.
pub struct Connection<T, H: Handler> {
    conn: h2::server::Connection<T, Bytes>,
    handler: H,
    streams: FuturesUnordered<Stream<H::Call, H::Body>>,
    keepalive: Option<Keepalive>,
}

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    /// Sends GOAWAY: no new call is accepted, the ones in flight finish, then the
    /// connection closes.
    pub fn graceful_shutdown(&mut self) {
        self.conn.graceful_shutdown();
    }
}

impl<T, H> Future for Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler + Unpin,
    <H::Body as Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(keepalive) = &mut this.keepalive
            && keepalive.poll_unanswered(cx).is_ready()
        {
            tracing::debug!(
                timeout = ?keepalive.settings().timeout,
                "client connection closed: no answer to a keep-alive PING (listener_limits.keepalive_timeout_seconds)"
            );
            this.keepalive = None;
            this.conn.abrupt_shutdown(Reason::NO_ERROR);
        }
        loop {
            // The calls first, so what they write goes out in the same pass below.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            // Reads and writes the socket, and yields the next new stream.
            match this.conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    let call = this.handler.call(request.map(RecvBody::new));
                    this.streams.push(Stream::Calling { call, respond });
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// === impl Stream ===

pin_project_lite::pin_project! {
    /// One call of a connection, from its request to the end of its response.
    #[project = StreamProj]
    enum Stream<F, B> {
        Calling {
            #[pin]
            call: F,
            respond: SendResponse<Bytes>,
        },
        Sending {
            #[pin]
            body: SendBody<B>,
        },
    }
}

impl<F, B> Future for Stream<F, B>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (body, stream) = match self.as_mut().project() {
            StreamProj::Calling { call, respond } => {
                // The client may cancel while the call runs: drop it then, before it
                // can see the reset itself (its request body fails) and answer, so the
                // call counts as cancelled before its answer.
                if let Poll::Ready(reset) = respond.poll_reset(cx) {
                    tracing::trace!(?reset, "call cancelled by the client");
                    return Poll::Ready(());
                }
                let Poll::Ready(response) = call.poll(cx) else {
                    return Poll::Pending;
                };
                let (head, body) = response.into_parts();
                let end = body.is_end_stream();
                let mut head = Response::from_parts(head, ());
                head.headers_mut()
                    .entry(http::header::DATE)
                    .or_insert_with(date::now);
                match respond.send_response(head, end) {
                    Ok(_) if end => return Poll::Ready(()),
                    Ok(stream) => (body, stream),
                    Err(e) => {
                        tracing::debug!(error = %e, "a response head could not be sent");
                        respond.send_reset(Reason::INTERNAL_ERROR);
                        return Poll::Ready(());
                    }
                }
            }
            StreamProj::Sending { body } => {
                if let Err(e) = std::task::ready!(body.poll(cx)) {
                    tracing::debug!(error = %e, "a response body was not sent to its end");
                }
                return Poll::Ready(());
            }
        };
        // The call's future is dropped here; its body goes on alone.
        self.set(Stream::Sending {
            body: send_body(body, stream),
        });
        self.poll(cx)
    }
}

// === mod date ===

/// The `date` header, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    use http::HeaderValue;

    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }

    pub(super) fn now() -> HeaderValue {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let formatted = httpdate::fmt_http_date(now);
                *cached = (
                    second,
                    HeaderValue::from_str(&formatted).expect("an HTTP date is a header value"),
                );
            }
            cached.1.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::HeaderMap;
    use http_body_util::{BodyExt, Full};
    use tokio::sync::Notify;

    use super::*;

    fn server(keepalive: Option<Duration>) -> Http2Server {
        Http2Server::new(100, 16 * 1024, keepalive, Duration::from_secs(1))
    }

    /// Serves `handler` on one end of an in-memory pipe; the client's end, its handshake
    /// done and its connection driven in a task, and the served connection's outcome.
    async fn serve<H>(
        server: Http2Server,
        handler: H,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    )
    where
        H: Handler + Unpin + Send + 'static,
        H::Call: Send,
        H::Body: Send,
        <H::Body as Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move { server.handshake(server_io, handler).await?.await });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        (client, served)
    }

    fn post(path: &str) -> Request<()> {
        Request::post(format!("http://proxy{path}"))
            .body(())
            .unwrap()
    }

    /// Echoes the request body and ends with a `grpc-status` trailer.
    async fn echo(
        request: Request<RecvBody>,
    ) -> Response<impl Body<Data = Bytes, Error = std::convert::Infallible>> {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = Full::new(body).with_trailers(std::future::ready(Some(Ok(trailers))));
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap()
    }

    async fn read_body(body: &mut h2::RecvStream) -> Vec<u8> {
        let mut read = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.unwrap();
            let _ = body.flow_control().release_capacity(data.len());
            read.extend_from_slice(&data);
        }
        read
    }

    #[tokio::test]
    async fn a_call_gets_its_response_body_and_trailers() {
        let (client, _served) = serve(server(None), echo).await;
        let mut client = client.ready().await.unwrap();
        // Larger than one frame and than h2's default window, so flow control is used.
        let payload = vec![7u8; 100_000];
        let (response, mut request_body) = client
            .send_request(post("/demo.v1.Echo/Say"), false)
            .unwrap();
        request_body
            .send_data(Bytes::from(payload.clone()), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert!(
            response.headers().contains_key("date"),
            "hyper sent a date header; still sent"
        );
        let mut body = response.into_body();
        assert_eq!(read_body(&mut body).await, payload);
        let trailers = body.trailers().await.unwrap().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
    }

    #[tokio::test]
    async fn many_calls_run_at_once_on_one_connection() {
        let (client, _served) = serve(server(None), echo).await;
        let calls = (0..50u8).map(|n| {
            let client = client.clone();
            async move {
                let mut client = client.ready().await.unwrap();
                let (response, mut body) = client
                    .send_request(post("/demo.v1.Echo/Say"), false)
                    .unwrap();
                body.send_data(Bytes::from(vec![n; 10]), true).unwrap();
                let mut response = response.await.unwrap().into_body();
                assert_eq!(read_body(&mut response).await, vec![n; 10]);
            }
        });
        futures::future::join_all(calls).await;
    }

    /// A call that never answers; counts its futures alive and tells when one started.
    struct Hanging {
        alive: Arc<AtomicUsize>,
        started: Arc<Notify>,
    }

    impl Drop for Hanging {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_client_reset_drops_the_call() {
        let alive = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Notify::new());
        let handler = {
            let (alive, started) = (Arc::clone(&alive), Arc::clone(&started));
            move |_request: Request<RecvBody>| {
                alive.fetch_add(1, Ordering::SeqCst);
                let hanging = Hanging {
                    alive: Arc::clone(&alive),
                    started: Arc::clone(&started),
                };
                async move {
                    hanging.started.notify_one();
                    std::future::pending::<()>().await;
                    drop(hanging);
                    Response::new(Full::new(Bytes::new()))
                }
            }
        };
        let (client, served) = serve(server(None), handler).await;
        let mut client = client.ready().await.unwrap();
        let (_response, mut request_body) = client.send_request(post("/slow"), false).unwrap();
        started.notified().await;
        assert_eq!(alive.load(Ordering::SeqCst), 1);
        request_body.send_reset(Reason::CANCEL);
        tokio::time::timeout(Duration::from_secs(10), async {
            while alive.load(Ordering::SeqCst) != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the reset call's future is dropped");
        assert!(!served.is_finished(), "the connection goes on");
    }

    #[tokio::test]
    async fn a_graceful_shutdown_lets_the_call_in_flight_finish_then_closes() {
        let (gate, opened) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let handler = {
            let (gate, opened) = (Arc::clone(&gate), Arc::clone(&opened));
            move |_request: Request<RecvBody>| {
                let (gate, opened) = (Arc::clone(&gate), Arc::clone(&opened));
                async move {
                    opened.notify_one();
                    gate.notified().await;
                    Response::new(Full::new(Bytes::from_static(b"answer")))
                }
            }
        };
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let mut connection = server(None).handshake(server_io, handler).await?;
            tokio::select! {
                result = &mut connection => return result,
                _ = stopped => connection.graceful_shutdown(),
            }
            connection.await
        });
        let (client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let (response, _) = client.send_request(post("/slow"), true).unwrap();
        opened.notified().await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !served.is_finished(),
            "the call in flight holds the connection open"
        );
        gate.notify_one();
        let mut body = response
            .await
            .expect("the call in flight is answered")
            .into_body();
        assert_eq!(read_body(&mut body).await, b"answer");
        let closed = tokio::time::timeout(Duration::from_secs(10), served).await;
        assert!(
            matches!(closed, Ok(Ok(Ok(())))),
            "then the connection closes cleanly: {closed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_no_ping_is_closed() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let served = tokio::spawn(async move {
            server(Some(Duration::from_secs(5)))
                .handshake(server_io, echo)
                .await?
                .await
        });
        // The client's connection is driven for the handshake only, so PINGs go unanswered.
        let mut client = Box::pin(h2::client::handshake(client_io));
        let (_client, _connection) = client.as_mut().await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(30), served).await;
        assert!(closed.is_ok(), "closed after the interval and the timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_answering_pings_stays_connected() {
        let (_client, served) = serve(server(Some(Duration::from_secs(5))), echo).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!served.is_finished(), "twelve PINGs answered");
    }
}
