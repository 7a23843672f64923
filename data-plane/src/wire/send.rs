//! Writing a body onto an HTTP/2 stream: DATA frames as the peer's window allows, then
//! the trailers (or an empty DATA frame that ends the stream).

use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;

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

/// Sends `body` on `stream` to its end. A peer that resets the stream stops it at once
/// (the body is dropped, which ends what feeds it); a body that fails resets the stream
/// with `INTERNAL_ERROR`, or with the reason of the HTTP/2 error it carries.
pub async fn send_body<B>(body: B, mut stream: SendStream<Bytes>) -> Result<(), SendBodyError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = pin!(body);
    loop {
        // Wait for room before taking the next frame, so a peer that stops reading stops
        // this reader too. h2 buffers a frame beyond the window; one is enough to wait for.
        stream.reserve_capacity(1);
        if stream.capacity() == 0 {
            poll_fn(|cx| loop {
                if let Poll::Ready(reset) = stream.poll_reset(cx) {
                    return Poll::Ready(Err(reset_error(reset)));
                }
                match stream.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(0))) => continue,
                    Poll::Ready(Some(Ok(_))) => return Poll::Ready(Ok(())),
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(SendBodyError::Reset(Reason::CANCEL)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await?;
        }
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(reset_error(reset)));
            }
            body.as_mut().poll_frame(cx).map(Ok)
        })
        .await?;
        let frame = match frame {
            None => {
                stream.send_data(Bytes::new(), true)?;
                return Ok(());
            }
            Some(Err(e)) => {
                let e = e.into();
                let reason = e
                    .downcast_ref::<h2::Error>()
                    .and_then(h2::Error::reason)
                    .unwrap_or(Reason::INTERNAL_ERROR);
                stream.send_reset(reason);
                return Err(SendBodyError::Body(e));
            }
            Some(Ok(frame)) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                stream.send_data(data, end)?;
                if end {
                    return Ok(());
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers)?;
                    return Ok(());
                }
            }
        }
    }
}

fn reset_error(reset: Result<Reason, h2::Error>) -> SendBodyError {
    match reset {
        Ok(reason) => SendBodyError::Reset(reason),
        Err(e) => SendBodyError::Stream(e),
    }
}
