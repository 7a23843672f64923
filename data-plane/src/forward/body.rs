//! The bodies a forwarded call streams through, wrapped without copying a byte.
//!
//! The response body ([`ObservedBody`]) is wrapped so that the proxy knows when the call
//! really ends: it keeps the endpoint's in-flight count until then, records the call's
//! gRPC status (from the trailers, or the headers of a trailers-only response), latency
//! and ORCA load report (the node's `endpoint-load-metrics-bin` trailer, passed on to the
//! client untouched), gives back its slot under the service's concurrency limit
//! ([`crate::admission`]), enforces the caller's deadline mid-stream by ending the stream with
//! `DEADLINE_EXCEEDED` trailers, the stream idle timeout ([`super::idle`]) by ending it
//! with `UNAVAILABLE` trailers, and the message size limit by ending it with
//! `RESOURCE_EXHAUSTED` trailers (dropping the node's stream, which resets it).
//!
//! The request body ([`LimitedBody`]) follows the message prefixes of what the client
//! sends ([`MessageFrames`]) and fails before passing on the frame where a message over
//! the limit begins: the HTTP/2 client then resets the stream to the node, so none of
//! that message's payload reaches it. Both bodies of a call share its [`CallShared`]: its
//! [`Oversize`], so whichever direction went over, the caller gets `RESOURCE_EXHAUSTED`
//! and both streams end; and its [`Activity`], which every frame either way stamps for
//! the idle timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::clock;
use crate::wire::{ResponseBody, StreamError};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::framing::{Direction, MessageFrames, Oversize, TooLarge};
use super::idle::{Activity, CallTimer, Expired};
use super::status::code_of;
use crate::admission::concurrency::ConcurrencyPermit;
use crate::endpoint::OwnedInFlight;
use crate::error::RequestError;
use crate::load_report::LoadInFlight;
use crate::table::RouteMetrics;

/// What one call's request and response bodies share.
#[derive(Debug, Default)]
pub struct CallShared {
    /// The oversized message that ended the call, if any.
    pub oversize: Oversize,
    /// When a frame last passed, either way.
    pub activity: Activity,
}

pin_project_lite::pin_project! {
    pub struct ObservedBody {
        // `None` once the proxy ended the call itself: dropping the node's stream resets it.
        inner: Option<ResponseBody>,
        // The call's one timer: wakes at the earlier of the deadline and the idle time.
        timer: Option<CallTimer>,
        call: Option<Call>,
        frames: MessageFrames,
        shared: Arc<CallShared>,
    }

    impl PinnedDrop for ObservedBody {
        fn drop(this: Pin<&mut Self>) {
            // A body dropped before its end: the client went away mid-stream (CANCELLED),
            // or the proxy retried the call elsewhere after this trailers-only answer.
            if let Some(call) = this.project().call.take() {
                let code = call.header_status.unwrap_or(tonic::Code::Cancelled as i32);
                call.finish(code);
            }
        }
    }
}

/// What to record when the call ends.
pub struct Call {
    /// The call in flight on the endpoint and in its service's load figures.
    pub _in_flight: (OwnedInFlight, LoadInFlight),
    pub metrics: Arc<RouteMetrics>,
    pub started: Instant,
    /// The status from a trailers-only response, if it was one.
    pub header_status: Option<i32>,
    /// The call's slot under its service's concurrency limit, held until the call ends.
    pub admission: Option<ConcurrencyPermit>,
    /// And under the fallback service's that served it, if any.
    pub fallback_admission: Option<ConcurrencyPermit>,
}

impl Call {
    /// Hands the node's reported utilisation to its endpoint (this call still counts as
    /// in flight there, so it is left out of the count).
    pub fn report_load(&self, utilization: f64) {
        let endpoint = self._in_flight.0.endpoint();
        let others = endpoint.in_flight().saturating_sub(1);
        endpoint.reported.record(utilization, others);
    }

    fn finish(self, code: i32) {
        self.metrics.record(code, clock::since(self.started));
    }
}

impl ObservedBody {
    /// The node's response body, ending when the call's `timer` expires (its deadline,
    /// or its idle timeout); its messages may be at most `max_message_bytes`, and `shared`
    /// is shared with the call's request body.
    pub fn new(
        inner: ResponseBody,
        timer: Option<CallTimer>,
        call: Call,
        max_message_bytes: u32,
        shared: Arc<CallShared>,
    ) -> Self {
        ObservedBody {
            inner: Some(inner),
            timer,
            call: Some(call),
            frames: MessageFrames::new(Direction::Response, max_message_bytes),
            shared,
        }
    }
}

/// Ends a call idle for `timeout`: the node's stream is dropped (reset), the caller gets
/// the one error edge's UNAVAILABLE as trailers.
fn end_idle(
    inner: &mut Option<ResponseBody>,
    call: &mut Option<Call>,
    timeout: Duration,
) -> Frame<Bytes> {
    *inner = None;
    let (node, service) = match call.take() {
        Some(call) => {
            let names = (
                call.metrics.node().to_owned(),
                call.metrics.service().to_owned(),
            );
            call.finish(tonic::Code::Unavailable as i32);
            names
        }
        None => Default::default(),
    };
    let status = RequestError::StreamIdle {
        node,
        service,
        timeout,
    }
    .into_status();
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
    }
    Frame::trailers(trailers)
}

/// Ends the call for an oversized message: the node's stream is dropped (reset), the
/// caller gets the one error edge's RESOURCE_EXHAUSTED as trailers.
fn end_oversized(
    inner: &mut Option<ResponseBody>,
    call: &mut Option<Call>,
    too_large: TooLarge,
) -> Frame<Bytes> {
    *inner = None;
    let service = match call.take() {
        Some(call) => {
            let service = call.metrics.service().to_owned();
            call.finish(tonic::Code::ResourceExhausted as i32);
            service
        }
        None => String::new(),
    };
    let status = RequestError::message_too_large(service, too_large).into_status();
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        trailers.insert("grpc-status", HeaderValue::from_static("8"));
    }
    Frame::trailers(trailers)
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.project();
        if this.call.is_none() {
            return Poll::Ready(None);
        }
        // The request went over the limit (and was cut) while the response streamed.
        if let Some(too_large) = this.shared.oversize.get() {
            return Poll::Ready(Some(Ok(end_oversized(this.inner, this.call, too_large))));
        }
        if let Some(timer) = this.timer.as_mut()
            && let Poll::Ready(expired) = timer.poll_expired(&this.shared.activity, cx)
        {
            match expired {
                Expired::Deadline => {
                    if let Some(call) = this.call.take() {
                        call.finish(tonic::Code::DeadlineExceeded as i32);
                    }
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("4"));
                    trailers.insert(
                        "grpc-message",
                        HeaderValue::from_static("deadline exceeded while streaming the response"),
                    );
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Expired::Idle(idle) => {
                    return Poll::Ready(Some(Ok(end_idle(this.inner, this.call, idle))));
                }
            }
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if this.timer.as_ref().is_some_and(CallTimer::watches_idle) {
                    this.shared.activity.touch();
                }
                if let Some(data) = frame.data_ref()
                    && let Err(too_large) = this.frames.observe(data)
                {
                    this.shared.oversize.record(too_large);
                    return Poll::Ready(Some(Ok(end_oversized(this.inner, this.call, too_large))));
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    let code =
                        code_of(trailers.get(&GRPC_STATUS)).unwrap_or(tonic::Code::Unknown as i32);
                    if let Some(utilization) = call.metrics.load.observe_orca_headers(trailers) {
                        call.report_load(utilization);
                    }
                    call.finish(code);
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.take() {
                    call.finish(tonic::Code::Unavailable as i32);
                }
            }
            None => {
                if let Some(call) = this.call.take() {
                    let code = call.header_status.unwrap_or(tonic::Code::Unknown as i32);
                    call.finish(code);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.call.is_none() || self.inner.as_ref().is_none_or(|i| i.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|i| i.size_hint())
            .unwrap_or_default()
    }
}

pin_project_lite::pin_project! {
    /// A request body on its way to a node, its messages held to the limit, each frame
    /// stamping the call's activity.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        frames: MessageFrames,
        shared: Arc<CallShared>,
    }
}

impl<B> LimitedBody<B> {
    /// `inner`'s frames from here on, following messages from `frames` (fresh for a whole
    /// body, or where buffering left off).
    pub fn new(inner: B, frames: MessageFrames, shared: Arc<CallShared>) -> Self {
        LimitedBody {
            inner,
            frames,
            shared,
        }
    }
}

impl<B> Body for LimitedBody<B>
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
        // The response went over the limit: the request stream ends too.
        if let Some(too_large) = this.shared.oversize.get() {
            return Poll::Ready(Some(Err(too_large.into())));
        }
        let frame = ready!(this.inner.poll_frame(cx)).map(|f| f.map_err(Into::into));
        if frame.is_some() {
            this.shared.activity.touch();
        }
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(too_large) = this.frames.observe(data)
        {
            // Failing here, before the frame is passed on, makes the HTTP/2 client reset
            // the stream to the node: the oversized message's payload never leaves.
            this.shared.oversize.record(too_large);
            return Poll::Ready(Some(Err(too_large.into())));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status trailer (or trailers-only header) of a gRPC answer, made once.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// What a request body's errors may be: anything tonic's body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The status of a response head (set only for trailers-only responses).
pub fn header_status(headers: &HeaderMap) -> Option<i32> {
    code_of(headers.get(&GRPC_STATUS))
}
