//! A stream as a call holds it, on either side of the proxy: a counted handle
//! ([`StreamRef`]), the incoming body ([`IncomingBody`]: an answer from a node, a
//! request from a client) and the pump that writes an outgoing body as the peer's
//! windows allow ([`poll_send_body`]).

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::StreamError;
use super::conn::{Role, Shared};
use super::error::reason_of;

/// A handle to one stream of a connection; the stream is forgotten (reset first if it
/// is still open) when the last handle goes.
#[derive(Debug)]
pub struct StreamRef<R: Role> {
    pub shared: Arc<Shared<R>>,
    pub id: u32,
}

impl<R: Role> StreamRef<R> {
    /// A handle counted when the stream was opened.
    pub(super) fn opened(shared: &Arc<Shared<R>>, id: u32) -> StreamRef<R> {
        StreamRef {
            shared: Arc::clone(shared),
            id,
        }
    }
}

impl<R: Role> Clone for StreamRef<R> {
    fn clone(&self) -> Self {
        self.shared.lock().add_ref(self.id);
        StreamRef::opened(&self.shared, self.id)
    }
}

impl<R: Role> Drop for StreamRef<R> {
    fn drop(&mut self) {
        self.shared.lock().drop_ref(self.id);
    }
}

/// The body the peer sends on a stream: its DATA frames and trailers. What the reader
/// takes is given back to the peer's windows, so a reader that stops reading stops the
/// peer at one stream window. Dropped before its end, the role decides
/// ([`Role::body_dropped`]): a node's answer is reset, a client's request is given back
/// as it comes.
#[derive(Debug)]
pub struct IncomingBody<R: Role> {
    stream: StreamRef<R>,
    done: bool,
}

impl<R: Role> IncomingBody<R> {
    /// The body of `stream`, already over when `done`.
    pub(super) fn new(stream: StreamRef<R>, done: bool) -> Self {
        IncomingBody { stream, done }
    }
}

impl<R: Role> Drop for IncomingBody<R> {
    fn drop(&mut self) {
        if !self.done {
            self.stream.shared.lock().body_dropped(self.stream.id);
        }
    }
}

impl<R: Role> Body for IncomingBody<R> {
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
        let mut conn = self.stream.shared.lock();
        let frame = ready!(conn.poll_data(id, cx));
        // Ended with its last DATA frame, or with trailers, an error or nothing.
        let done = match &frame {
            Some(Ok(frame)) if frame.is_data() => conn.body_read(id),
            _ => true,
        };
        drop(conn);
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

/// Why an outgoing body was not sent to its end.
#[derive(Debug, thiserror::Error)]
pub enum SendBodyError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the body failed: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
}

/// Writes an outgoing body onto its stream as the peer's windows allow; `pending` holds a
/// DATA frame's payload the windows did not take yet, and whether it ends the body. A
/// stream that fails stops it (the body is dropped with its sender, which ends what
/// feeds it); a body that fails resets the stream with the reason of the HTTP/2 error
/// found in its error's sources (a reset passes on as the same reset), else
/// INTERNAL_ERROR.
pub fn poll_send_body<R, B>(
    mut body: Pin<&mut B>,
    stream: &StreamRef<R>,
    pending: &mut Option<(Bytes, bool)>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SendBodyError>>
where
    R: Role,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    loop {
        if let Some((data, end)) = pending.as_mut() {
            let end = *end;
            ready!(
                stream
                    .shared
                    .lock()
                    .poll_send_data(stream.id, cx, data, end)
            )?;
            *pending = None;
            if end {
                return Poll::Ready(Ok(()));
            }
        }
        let frame = match body.as_mut().poll_frame(cx) {
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
                *pending = Some((Bytes::new(), true));
                continue;
            }
            Some(Err(e)) => {
                let e = e.into();
                stream.shared.lock().reset(stream.id, reason_of(&*e));
                return Poll::Ready(Err(SendBodyError::Body(e)));
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => *pending = Some((data, body.is_end_stream())),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.shared.lock().send_trailers(stream.id, &trailers);
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}
