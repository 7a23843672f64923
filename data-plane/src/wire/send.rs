//! Writing a body onto an HTTP/2 stream: DATA frames as the peer's window allows, then
//! the trailers (or an empty DATA frame that ends the stream).
//!
//! [`SendBody`] is a named future (not an `async fn`) so that a connection driving many
//! streams can hold it in its own per-stream state without boxing it.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::Body;

/// Why a body was not written to its end.
#[derive(Debug, thiserror::Error)]
pub enum SendBodyError {
    #[error("the peer reset the stream ({0})")]
    Reset(Reason),
    #[error("the HTTP/2 stream failed: {0}")]
    Stream(#[from] h2::Error),
    #[error("the body failed: {0}")]
    Body(Box<dyn StdError + Send + Sync>),
}

/// Sends `body` on `stream` to its end. A peer that resets the stream stops it at once
/// (the body is dropped with the future, which ends what feeds it); a body that fails
/// resets the stream with the reason of the HTTP/2 error found in its error's sources (an
/// upstream reset passes on as the same reset), else `INTERNAL_ERROR`.
pub fn send_body<B>(body: B, stream: SendStream<Bytes>) -> SendBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    SendBody {
        body,
        stream,
        waiting_for_room: false,
        sent_a_frame: false,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`send_body`].
    pub struct SendBody<B> {
        #[pin]
        body: B,
        stream: SendStream<Bytes>,
        // Room was asked for the next frame and has not come yet.
        waiting_for_room: bool,
        // A frame went out: the next waits for room.
        sent_a_frame: bool,
    }
}

impl<B> Future for SendBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<(), SendBodyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Poll::Ready(reset) = this.stream.poll_reset(cx) {
                return Poll::Ready(Err(reset_error(reset)));
            }
            // Wait for room before taking the next frame, so a peer that stops reading
            // stops this reader too. h2 buffers a frame beyond the window; one is enough
            // to wait for. The first frame does not wait: h2 gives no room to a request
            // whose HEADERS are still queued, and waiting for it would send a unary
            // call's one DATA frame in a write (and a packet) of its own.
            if *this.sent_a_frame && !*this.waiting_for_room {
                this.stream.reserve_capacity(1);
                *this.waiting_for_room = this.stream.capacity() == 0;
            }
            while *this.waiting_for_room {
                match ready!(this.stream.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => *this.waiting_for_room = false,
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Err(SendBodyError::Reset(Reason::CANCEL))),
                }
            }
            let frame = match ready!(this.body.as_mut().poll_frame(cx)) {
                None => {
                    this.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    let e = e.into();
                    this.stream.send_reset(reason_of(&*e));
                    return Poll::Ready(Err(SendBodyError::Body(e)));
                }
                Some(Ok(frame)) => frame,
            };
            *this.sent_a_frame = true;
            match frame.into_data() {
                Ok(data) => {
                    let end = this.body.is_end_stream();
                    this.stream.send_data(data, end)?;
                    if end {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        this.stream.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// The reason of the first HTTP/2 reset among `error` and its sources (as hyper looked
/// for it: an upstream stream's reset passes on as the same reset), else
/// `INTERNAL_ERROR`.
pub(super) fn reason_of(error: &(dyn StdError + 'static)) -> Reason {
    std::iter::successors(Some(error), |&e| e.source())
        .find_map(|e| {
            e.downcast_ref::<h2::Error>()
                .and_then(h2::Error::reason)
                .or_else(|| {
                    e.downcast_ref::<super::StreamError>()
                        .and_then(super::StreamError::reason)
                })
        })
        .unwrap_or(Reason::INTERNAL_ERROR)
}

fn reset_error(reset: Result<Reason, h2::Error>) -> SendBodyError {
    match reset {
        Ok(reason) => SendBodyError::Reset(reason),
        Err(e) => SendBodyError::Stream(e),
    }
}
