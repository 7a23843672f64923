//! The response body streamed back to the client, wrapped so that the proxy knows when
//! the call really ends: it keeps the endpoint's in-flight count until then, records the
//! call's gRPC status (from the trailers, or the headers of a trailers-only response),
//! latency and ORCA load report (the node's `endpoint-load-metrics-bin` trailer, passed
//! on to the client untouched), gives back its slot under the service's concurrency
//! limit ([`crate::admission`]), and enforces the caller's deadline mid-stream by ending
//! the stream with `DEADLINE_EXCEEDED` trailers.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::status::code_of;
use crate::admission::concurrency::ConcurrencyPermit;
use crate::endpoint::OwnedInFlight;
use crate::load_report::LoadInFlight;
use crate::table::RouteMetrics;

pin_project_lite::pin_project! {
    pub struct ObservedBody {
        #[pin]
        inner: Incoming,
        #[pin]
        deadline: Option<Sleep>,
        call: Option<Call>,
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
}

impl Call {
    fn finish(self, code: i32) {
        self.metrics.record(code, self.started.elapsed());
    }
}

impl ObservedBody {
    pub fn new(inner: Incoming, deadline: Option<Instant>, call: Call) -> Self {
        ObservedBody {
            inner,
            deadline: deadline.map(tokio::time::sleep_until),
            call: Some(call),
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        if this.call.is_none() {
            return Poll::Ready(None);
        }
        if let Some(deadline) = this.deadline.as_mut().as_pin_mut()
            && deadline.poll(cx).is_ready()
        {
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
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    let code =
                        code_of(trailers.get("grpc-status")).unwrap_or(tonic::Code::Unknown as i32);
                    call.metrics.load.observe_orca_headers(trailers);
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
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The status of a response head (set only for trailers-only responses).
pub fn header_status(headers: &HeaderMap) -> Option<i32> {
    code_of(headers.get("grpc-status"))
}
