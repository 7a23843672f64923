//! Writing a body onto an HTTP/2 stream: DATA frames as the peer's window allows, then
//! the trailers (or an empty DATA frame that ends the stream).

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
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// Sends a body on a stream to its end. A peer that resets the stream stops it at once
/// (the body is dropped, which ends what feeds it); a body that fails resets the stream
/// with `INTERNAL_ERROR`, or with the reason of the HTTP/2 error it carries.
#[derive(Debug)]
pub struct SendBody<B> {
    body: B,
    stream: SendStream<Bytes>,
}

impl<B> SendBody<B> {
    pub fn new(body: B, stream: SendStream<Bytes>) -> Self {
        SendBody { body, stream }
    }
}

/// Sends `body` on `stream` to its end (see [`SendBody`]).
pub fn send_body<B>(body: B, stream: SendStream<Bytes>) -> SendBody<B> {
    SendBody::new(body, stream)
}

impl<B> Future for SendBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<(), SendBodyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let SendBody { body, stream } = self.get_mut();
        loop {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(match reset {
                    Ok(reason) => SendBodyError::Reset(reason),
                    Err(e) => SendBodyError::Stream(e),
                }));
            }
            // Wait for room before taking the next frame, so a peer that stops reading
            // stops this reader too. h2 buffers a frame beyond the window: waiting for one
            // byte is enough.
            stream.reserve_capacity(1);
            if stream.capacity() == 0 {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Poll::Ready(Err(e.into())),
                    None => return Poll::Ready(Err(SendBodyError::Reset(Reason::CANCEL))),
                }
            }
            let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                None => {
                    stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => {
                    let e = e.into();
                    let reason = e
                        .downcast_ref::<h2::Error>()
                        .and_then(h2::Error::reason)
                        .unwrap_or(Reason::INTERNAL_ERROR);
                    stream.send_reset(reason);
                    return Poll::Ready(Err(SendBodyError::Body(e)));
                }
                Some(Ok(frame)) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    stream.send_data(data, end)?;
                    if end {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        stream.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}
