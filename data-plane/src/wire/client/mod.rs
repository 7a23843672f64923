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
use h2::Reason;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use driver::{Driver, MAX_HEADER_LIST};

pub use super::error::StreamError;
use super::keepalive::KeepaliveSettings;
use state::Shared;

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
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::new(stream_window_bytes, connection_window_bytes));
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
            let stream = StreamRef { shared, id };
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

/// A handle to one stream of a connection; the stream is forgotten (reset first if it
/// is still open) when the last handle goes.
#[derive(Debug)]
struct StreamRef {
    shared: Arc<Shared>,
    id: u32,
}

impl Clone for StreamRef {
    fn clone(&self) -> Self {
        self.shared.lock().add_ref(self.id);
        StreamRef {
            shared: Arc::clone(&self.shared),
            id: self.id,
        }
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        self.shared.lock().drop_ref(self.id);
    }
}

/// Waits for the head of an answer while sending the request body; a body still
/// streaming when the head comes goes on in a task of its own.
struct AnswerHead<B> {
    stream: Option<StreamRef>,
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
        Poll::Ready(Ok(head.map(|()| ResponseBody { stream, done: end })))
    }
}

/// Writes a request body onto its stream as the node's windows allow.
struct BodySender<B> {
    body: B,
    /// A DATA frame's payload the windows did not take yet, and whether it ends the body.
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

    /// Sends the body to its end. A stream that fails stops it (the body is dropped with
    /// the sender, which ends what feeds it); a body that fails resets the stream with
    /// the reason of the HTTP/2 error found in its error's sources, else INTERNAL_ERROR.
    fn poll_send(
        &mut self,
        stream: &StreamRef,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BodyError>> {
        loop {
            if let Some((data, end)) = self.pending.as_mut() {
                let end = *end;
                ready!(
                    stream
                        .shared
                        .lock()
                        .poll_send_data(stream.id, cx, data, end)
                )?;
                self.pending = None;
                if end {
                    return Poll::Ready(Ok(()));
                }
            }
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                // Waiting for the body: a failure of the stream must end the wait.
                Poll::Pending => {
                    return match stream.shared.lock().poll_failed(stream.id, cx) {
                        Some(error) => Poll::Ready(Err(error.into())),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(frame) => frame,
            };
            let frame = match frame {
                None => {
                    self.pending = Some((Bytes::new(), true));
                    continue;
                }
                Some(Err(e)) => {
                    let e = e.into();
                    stream
                        .shared
                        .lock()
                        .reset(stream.id, crate::wire::error::reason_of(&*e));
                    return Poll::Ready(Err(BodyError::Body(e)));
                }
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => self.pending = Some((data, self.body.is_end_stream())),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.shared.lock().send_trailers(stream.id, &trailers);
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// Why a request body was not sent to its end.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the request body failed: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
}

/// An answer's DATA frames and trailers. What the reader takes is given back to the
/// node's windows, so a reader that stops reading stops the node at one stream window;
/// dropping the body before its end resets the stream.
#[derive(Debug)]
pub struct ResponseBody {
    stream: StreamRef,
    done: bool,
}

impl Drop for ResponseBody {
    /// An answer dropped before its end resets its stream, so the node stops sending and
    /// a request body still streaming stops too (its sender holds the stream open).
    fn drop(&mut self) {
        if !self.done {
            self.stream
                .shared
                .lock()
                .reset(self.stream.id, Reason::CANCEL);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let id = self.stream.id;
        let mut state = self.stream.shared.lock();
        let frame = ready!(state.poll_data(id, cx));
        // Ended with its last DATA frame, or with trailers, an error or nothing.
        let done = match &frame {
            Some(Ok(frame)) if frame.is_data() => state.answer_read(id),
            _ => true,
        };
        drop(state);
        self.done = done;
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests;
