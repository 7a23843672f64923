//! The proxy's HTTP/2 client connections to nodes, over its own framing
//! ([`crate::wire::frame`]) and HPACK ([`crate::wire::hpack`]) rather than a general
//! HTTP/2 client: a call encodes its request's HEADERS and writes its DATA straight into
//! the connection's outgoing buffer, and its own future waits for the answer; one task
//! per connection ([`driver`]) writes that buffer, reads the node's frames and hands them
//! to the streams. No task per call, unless the request body is still streaming when the
//! answer's head comes (a client or bidi stream), which then goes on in a task of its own.
//!
//! What the connection does, beside passing calls: flow control both ways (the windows
//! the pool sets for what the node sends; the node's windows for request bodies), the
//! node's stream limit (a call waits for a free stream), GOAWAY (calls the node did not
//! take fail with REFUSED_STREAM, and the connection takes no new ones), resets both
//! ways (dropping an answer before its end resets its stream), and a keepalive PING.

mod driver;
mod state;

use std::error::Error as StdError;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use driver::{Driver, MAX_HEADER_LIST};

use super::conn::Shared;
pub use super::error::StreamError;
use super::keepalive::KeepaliveSettings;
use super::stream::{IncomingBody, SendBodyError, StreamRef, poll_send_body};
use state::Client;

/// A PING every 20 s on each connection to a node, to be answered within 10 s.
const KEEPALIVE: KeepaliveSettings = KeepaliveSettings {
    interval: Duration::from_secs(20),
    timeout: Duration::from_secs(10),
};

/// Why a request was not answered. `NotSent` hands the request back: the node never saw
/// it (boxed: failures are rare, and the result is part of every call's future).
#[derive(Debug)]
pub enum SendError<B> {
    NotSent(StreamError, Box<Request<B>>),
    Failed(StreamError),
}

/// An open HTTP/2 connection to a node.
#[derive(Debug, Clone)]
pub struct ClientConnection {
    shared: Arc<Shared<Client>>,
}

impl ClientConnection {
    /// Starts HTTP/2 on a connected (and, for TLS, handshaken) `io`, with the given
    /// windows for what the node sends: writes the preface and spawns the task that
    /// drives the connection until it ends. Calls can go at once; the node's SETTINGS
    /// apply when they come.
    pub fn start<T>(
        io: T,
        address: &str,
        stream_window_bytes: u32,
        connection_window_bytes: u32,
    ) -> ClientConnection
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(state::shared(stream_window_bytes, connection_window_bytes));
        shared.lock().write_preface(MAX_HEADER_LIST);
        let driver = Driver::new(io, Arc::clone(&shared), address.to_owned(), KEEPALIVE);
        tokio::spawn(driver.run());
        ClientConnection { shared }
    }

    /// Whether the connection takes no more calls (it failed, or the node is going away).
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Sends `request` and waits for the head of its answer, sending the request body
    /// meanwhile. The future holds its own handle of the connection, not `self`.
    ///
    /// Not an `async fn`, which would hold `request` twice in every call's future.
    #[allow(clippy::manual_async_fn)] // see above
    pub fn send<B>(
        &self,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, SendError<B>>> + use<B>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let shared = Arc::clone(&self.shared);
        async move {
            // The head alone is borrowed while waiting: the body need not be `Sync`.
            let (head, body) = request.into_parts();
            let end = body.is_end_stream();
            let opened = poll_fn(|cx| shared.lock().poll_open(cx, &head, end)).await;
            let id = match opened {
                Ok(id) => id,
                Err(e) => {
                    return Err(SendError::NotSent(
                        e,
                        Box::new(Request::from_parts(head, body)),
                    ));
                }
            };
            let stream = StreamRef::opened(&shared, id);
            let body = (!end).then(|| BodySender::new(body));
            AnswerHead {
                stream: Some(stream),
                body,
            }
            .await
            .map_err(SendError::Failed)
        }
    }
}

/// Waits for the head of an answer while sending the request body; a body still
/// streaming when the head comes goes on in a task of its own.
struct AnswerHead<B> {
    stream: Option<StreamRef<Client>>,
    body: Option<BodySender<B>>,
}

impl<B> Future for AnswerHead<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<Response<ResponseBody>, StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let stream = this.stream.as_ref().expect("polled after completion");
        if let Some(body) = this.body.as_mut()
            && let Poll::Ready(sent) = body.poll_send(stream, cx)
        {
            if let Err(e) = sent {
                tracing::debug!(error = %e, "a request body was not sent to its end");
            }
            this.body = None;
        }
        let (head, end) = ready!(stream.shared.lock().poll_head(stream.id, cx))?;
        let stream = this.stream.take().expect("checked above");
        if let Some(mut body) = this.body.take() {
            let sending = stream.clone();
            tokio::spawn(async move {
                if let Err(e) = poll_fn(|cx| body.poll_send(&sending, cx)).await {
                    tracing::debug!(error = %e, "a request body was not sent to its end");
                }
            });
        }
        Poll::Ready(Ok(head.map(|()| ResponseBody::new(stream, end))))
    }
}

/// A request body to send, and a DATA frame's payload the node's windows did not take
/// yet (with whether it ends the body).
struct BodySender<B> {
    body: B,
    pending: Option<(Bytes, bool)>,
}

impl<B> BodySender<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn new(body: B) -> Self {
        BodySender {
            body,
            pending: None,
        }
    }

    /// Sends the body to its end ([`poll_send_body`]).
    fn poll_send(
        &mut self,
        stream: &StreamRef<Client>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendBodyError>> {
        poll_send_body(Pin::new(&mut self.body), stream, &mut self.pending, cx)
    }
}

/// An answer's DATA frames and trailers; dropping it before its end resets the stream.
pub type ResponseBody = IncomingBody<Client>;

#[cfg(test)]
mod tests;
