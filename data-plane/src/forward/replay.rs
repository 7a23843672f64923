//! Keeping an idempotent call's request body so it can be replayed on another node, within
//! the proxy's [`BufferBudget`].
//!
//! The rule for what is kept: **one message, ending the body**. A body is read frame by
//! frame, each frame's bytes reserved from the budget and its message prefixes checked
//! against the size limit ([`MessageFrames`]). Buffering stops, and the call streams
//! through without retries after a node has seen it, when
//! - a second message begins: the body is a client stream, and the proxy never holds a
//!   stream back (even under a `pkg.Service/*` idempotency rule);
//! - the first message is complete but the body does not end within [`END_GRACE`]: the
//!   method may be a stream whose client waits for an answer before sending more (a
//!   unary client sends its end of stream right behind its message);
//! - a reservation would go over the per-call or the proxy-wide cap ([`OverCap`]).
//!
//! What was read so far goes first, then the rest of the body, as it arrives
//! ([`PrefixedBody`]). Only a body that ended is kept for replays ([`ReplayBuffer`]); its
//! reservation is given back when the last copy of it is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{BoxError, CallShared, LimitedBody};
use super::framing::MessageFrames;
use crate::error::RequestError;
use crate::retry::{BufferBudget, OverCap, Reservation};

/// How long the end of a body may come after its first message before the call is taken
/// for a stream.
pub const END_GRACE: Duration = Duration::from_millis(50);

/// A body read for replay.
pub enum Buffered<B> {
    /// The whole body, kept.
    Replayable(Arc<ReplayBuffer>),
    /// Not kept: forwarded as it streams; why.
    Streamed(PrefixedBody<B>, NotKept),
}

/// Why a body was not kept for replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotKept {
    OverCap(OverCap),
    /// More than one message, or no end after the first.
    Stream,
}

impl NotKept {
    pub fn as_str(self) -> &'static str {
        match self {
            NotKept::OverCap(cap) => cap.as_str(),
            NotKept::Stream => "stream",
        }
    }
}

/// A whole request body, kept for replays, and the bytes it holds of the budget.
#[derive(Debug)]
pub struct ReplayBuffer {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    _reservation: Reservation,
}

impl ReplayBuffer {
    /// A body replaying this buffer from its start.
    pub fn body(self: &Arc<Self>) -> ReplayBody {
        ReplayBody {
            buffer: Arc::clone(self),
            next: 0,
        }
    }
}

/// Reads `body` for replay (see the module doc for when it is kept). `frames` follows its
/// messages; a message over the limit fails the call before anything is sent.
pub async fn read_for_replay<B>(
    mut body: B,
    mut frames: MessageFrames,
    budget: &Arc<BufferBudget>,
    shared: Arc<CallShared>,
    service: &str,
) -> Result<Buffered<B>, RequestError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut reservation = budget.reservation();
    let mut chunks = Vec::new();
    let not_kept = loop {
        let first_message_done = frames.messages_begun() > 0 && frames.at_message_boundary();
        let next = if first_message_done && !body.is_end_stream() {
            match tokio::time::timeout(END_GRACE, body.frame()).await {
                Ok(next) => next,
                Err(_) => break NotKept::Stream,
            }
        } else {
            body.frame().await
        };
        let frame = match next {
            None => {
                return Ok(Buffered::Replayable(Arc::new(ReplayBuffer {
                    chunks,
                    trailers: None,
                    _reservation: reservation,
                })));
            }
            Some(Err(e)) => {
                return Err(RequestError::BadRequest(format!(
                    "the request body could not be read: {}",
                    e.into()
                )));
            }
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers end a body.
                return Ok(Buffered::Replayable(Arc::new(ReplayBuffer {
                    chunks,
                    trailers: frame.into_trailers().ok(),
                    _reservation: reservation,
                })));
            }
        };
        frames.observe(&data).map_err(|too_large| {
            shared.oversize.record(too_large);
            RequestError::message_too_large(service.to_owned(), too_large)
        })?;
        let over_cap = reservation.grow(data.len() as u64);
        chunks.push(data);
        if let Err(cap) = over_cap {
            break NotKept::OverCap(cap);
        }
        if frames.messages_begun() > 1 {
            break NotKept::Stream;
        }
    };
    let rest = LimitedBody::new(body, frames, shared);
    Ok(Buffered::Streamed(
        PrefixedBody {
            prefix: chunks.into_iter(),
            reservation: Some(reservation),
            rest,
        },
        not_kept,
    ))
}

/// A kept body, replayed for one attempt.
#[derive(Debug)]
pub struct ReplayBody {
    buffer: Arc<ReplayBuffer>,
    next: usize,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let next = self.next;
        self.next += 1;
        let buffer = &self.buffer;
        Poll::Ready(match next.cmp(&buffer.chunks.len()) {
            std::cmp::Ordering::Less => Some(Ok(Frame::data(buffer.chunks[next].clone()))),
            std::cmp::Ordering::Equal => buffer.trailers.clone().map(|t| Ok(Frame::trailers(t))),
            std::cmp::Ordering::Greater => None,
        })
    }

    fn is_end_stream(&self) -> bool {
        self.next > self.buffer.chunks.len()
            || (self.next == self.buffer.chunks.len() && self.buffer.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let left = self.buffer.chunks.get(self.next..).unwrap_or_default();
        SizeHint::with_exact(left.iter().map(|c| c.len() as u64).sum())
    }
}

pin_project_lite::pin_project! {
    /// The frames read while trying to keep a body, then the rest of it as it arrives.
    pub struct PrefixedBody<B> {
        prefix: std::vec::IntoIter<Bytes>,
        // Held until the prefix is passed on.
        reservation: Option<Reservation>,
        #[pin]
        rest: LimitedBody<B>,
    }
}

impl<B> Body for PrefixedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(chunk) = this.prefix.next() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        *this.reservation = None;
        Poll::Ready(ready!(this.rest.poll_frame(cx)))
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.len() == 0 && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{Full, StreamBody};

    use super::*;
    use crate::forward::framing::Direction;

    fn message(len: usize) -> Bytes {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(1u8, len));
        bytes.into()
    }

    async fn read<B>(body: B, budget: &Arc<BufferBudget>) -> Result<Buffered<B>, RequestError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        let frames = MessageFrames::new(Direction::Request, 1 << 20);
        read_for_replay(body, frames, budget, Default::default(), "demo.v1.Echo").await
    }

    async fn all_bytes(body: impl Body<Data = Bytes, Error = BoxError>) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn one_message_is_kept_and_replayed_whole_each_time() {
        let budget = BufferBudget::new(1_000, 10_000);
        let Buffered::Replayable(buffer) = read(Full::new(message(100)), &budget).await.unwrap()
        else {
            panic!("one message within the caps is kept");
        };
        assert_eq!(budget.in_use(), 105);
        for _ in 0..2 {
            assert_eq!(all_bytes(buffer.body()).await, message(100));
        }
        drop(buffer);
        assert_eq!(budget.in_use(), 0, "released with the buffer");
    }

    #[tokio::test]
    async fn a_body_over_the_call_cap_streams_whole_without_being_kept() {
        let budget = BufferBudget::new(64, 10_000);
        let whole = message(200);
        let frames: Vec<Result<_, std::convert::Infallible>> = whole
            .chunks(50)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(frames));
        let Buffered::Streamed(streamed, why) = read(body, &budget).await.unwrap() else {
            panic!("over the call cap");
        };
        assert_eq!(why, NotKept::OverCap(OverCap::Call));
        assert!(budget.in_use() <= 64);
        assert_eq!(all_bytes(streamed).await, whole, "nothing lost or repeated");
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test]
    async fn a_second_message_makes_it_a_stream() {
        let budget = BufferBudget::new(1_000, 10_000);
        let frames: Vec<Result<_, std::convert::Infallible>> = vec![
            Ok(Frame::data(message(10))),
            Ok(Frame::data(message(10))),
            Ok(Frame::data(message(10))),
        ];
        let body = StreamBody::new(futures::stream::iter(frames));
        let Buffered::Streamed(streamed, why) = read(body, &budget).await.unwrap() else {
            panic!("a client stream is never kept");
        };
        assert_eq!(why, NotKept::Stream);
        assert_eq!(all_bytes(streamed).await.len(), 45);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_end_after_its_first_message_is_a_stream() {
        let budget = BufferBudget::new(1_000, 10_000);
        // One message, then the client waits (a bidi call waiting for its answer).
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        sender.send(Ok(Frame::data(message(10)))).await.unwrap();
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let Buffered::Streamed(_, why) = read(body, &budget).await.unwrap() else {
            panic!("not kept: it would wait forever");
        };
        assert_eq!(why, NotKept::Stream);
        drop(sender);
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_before_anything_is_kept() {
        let budget = BufferBudget::new(1 << 30, 1 << 30);
        let frames = MessageFrames::new(Direction::Request, 64);
        let shared = Arc::new(CallShared::default());
        let refused = read_for_replay(
            Full::new(message(65)),
            frames,
            &budget,
            Arc::clone(&shared),
            "demo.v1.Echo",
        )
        .await
        .err()
        .expect("over the limit");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(shared.oversize.get().map(|o| o.length), Some(65));
        assert_eq!(budget.in_use(), 0);
    }
}
