//! The proxy's HTTP/2 client connections to nodes: the handshake, the task that drives
//! each connection (with keepalive pings), and sending one request over it. The call's
//! own future waits for the answer: no task per call, unless the request body is still
//! streaming when the answer's head comes (a client or bidi stream), which then goes on
//! in a task of its own.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::keepalive::{Keepalive, KeepaliveSettings};
use super::recv::RecvBody;
use super::send::{SendBody, send_body};

/// A PING every 20 s on each connection to a node, to be answered within 10 s.
const KEEPALIVE: KeepaliveSettings = KeepaliveSettings {
    interval: Duration::from_secs(20),
    timeout: Duration::from_secs(10),
};

/// Why a request was not answered. `NotSent` hands the request back: the node never saw
/// it (boxed: failures are rare, and the result is part of every call's future).
#[derive(Debug)]
pub enum SendError<B> {
    NotSent(h2::Error, Box<Request<B>>),
    Failed(h2::Error),
}

/// An open HTTP/2 connection to a node.
#[derive(Debug, Clone)]
pub struct ClientConnection {
    sender: SendRequest<Bytes>,
    /// Set by the connection's task when the connection ends.
    closed: Arc<AtomicBool>,
}

impl ClientConnection {
    /// The HTTP/2 handshake on a connected (and, for TLS, handshaken) `io`, with the given
    /// windows; spawns the task that drives the connection until it ends.
    pub async fn handshake<T>(
        io: T,
        address: &str,
        stream_window_bytes: u32,
        connection_window_bytes: u32,
    ) -> Result<ClientConnection, h2::Error>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(stream_window_bytes)
            .initial_connection_window_size(connection_window_bytes)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let ended = Arc::clone(&closed);
        let address = address.to_owned();
        let ping_pong = connection.ping_pong();
        tokio::spawn(async move {
            let mut keepalive = ping_pong.map(|p| Keepalive::new(KEEPALIVE, p));
            let unanswered = poll_fn(|cx| match keepalive.as_mut() {
                Some(keepalive) => keepalive.poll_unanswered(cx),
                None => Poll::Pending,
            });
            tokio::select! {
                result = &mut connection => if let Err(e) = result {
                    tracing::debug!(%address, error = %e, "upstream connection closed");
                },
                () = unanswered => {
                    tracing::debug!(%address, timeout = ?KEEPALIVE.timeout, "upstream connection closed: no answer to a keepalive PING");
                }
            }
            ended.store(true, Ordering::Relaxed);
        });
        Ok(ClientConnection { sender, closed })
    }

    /// Whether the connection has ended (its task is done).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Sends `request` and waits for the head of its answer, sending the request body
    /// meanwhile. The future holds its own handle of the connection, not `self`.
    ///
    /// Not an `async fn`, which would hold `request` twice in every call's future.
    #[allow(clippy::manual_async_fn)] // see above
    pub fn send<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<RecvBody>, SendError<B>>> + use<B>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut sender = self.sender.clone();
        async move {
            if let Err(e) = poll_fn(|cx| sender.poll_ready(cx)).await {
                return Err(SendError::NotSent(e, Box::new(request)));
            }
            let (head, body) = request.into_parts();
            let end = body.is_end_stream();
            let (response, stream) = sender
                .send_request(Request::from_parts(head, ()), end)
                .map_err(SendError::Failed)?;
            let body = (!end).then(|| send_body(body, stream));
            let head = AnswerHead { response, body }.await;
            head.map(|r| r.map(RecvBody::new))
                .map_err(SendError::Failed)
        }
    }
}

/// Waits for the head of an answer while sending the request body; a body still
/// streaming when the head comes goes on in a task of its own.
struct AnswerHead<B> {
    response: ResponseFuture,
    body: Option<SendBody<B>>,
}

impl<B> Future for AnswerHead<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<Response<h2::RecvStream>, h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(body) = self.body.as_mut()
            && let Poll::Ready(sent) = Pin::new(body).poll(cx)
        {
            if let Err(e) = sent {
                tracing::debug!(error = %e, "a request body was not sent to its end");
            }
            self.body = None;
        }
        let head = ready!(Pin::new(&mut self.response).poll(cx));
        if let Some(body) = self.body.take() {
            tokio::spawn(async move {
                if let Err(e) = body.await {
                    tracing::debug!(error = %e, "a request body was not sent to its end");
                }
            });
        }
        Poll::Ready(head)
    }
}
