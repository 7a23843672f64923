//! Long-lived calls end when their credential goes: a streaming call admitted under a
//! token that a reload removes (or whose role no longer allows the method) ends with
//! `UNAUTHENTICATED` / `PERMISSION_DENIED` at once, instead of streaming on for as long as
//! the client keeps it open. Only the streams that can live for hours are watched
//! ([`LONG_STREAMS`]); a unary call is checked once, when it arrives, which is enough.
//!
//! How: the response body of such a call is wrapped; each reload wakes the wrapper
//! ([`super::SharedAuthenticator::swaps`]), which checks the call's credential against the
//! new set and, when it no longer passes, drops the handler's stream and ends the body
//! with the refusal as its trailers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio_stream::Stream;
use tokio_stream::wrappers::WatchStream;
use tonic::Status;

use super::Denied;
use super::layer::AuthLayer;

/// The calls that stay open: routing tables, load reports, node keep-alives, events.
pub const LONG_STREAMS: &[&str] = &[
    "/meridian.v1.RoutingDiscovery/StreamRoutes",
    "/meridian.v1.RoutingDiscovery/ReportLoad",
    "/meridian.v1.NodeRegistry/KeepAlive",
    "/meridian.v1.Admin/WatchEvents",
];

/// What a watched call was admitted with, to check again after a reload.
pub struct Credential {
    pub layer: AuthLayer,
    pub path: String,
    pub authorization: Option<http::HeaderValue>,
    pub certificate: Vec<String>,
}

impl Credential {
    fn still_admitted(&self) -> Result<(), Denied> {
        let authorization = self.authorization.as_ref().map(|v| v.as_bytes());
        self.layer
            .verify(&self.path, authorization, &self.certificate)
            .map(drop)
    }
}

/// The handler's response future; its body is wrapped in a [`RevocableBody`].
pub struct RevocableCall<F> {
    inner: Pin<Box<F>>,
    credential: Option<Credential>,
}

impl<F> RevocableCall<F> {
    pub fn new(inner: F, credential: Credential) -> Self {
        RevocableCall {
            inner: Box::pin(inner),
            credential: Some(credential),
        }
    }
}

impl<F, E> Future for RevocableCall<F>
where
    F: Future<Output = Result<http::Response<tonic::body::Body>, E>>,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.inner.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        let Some(credential) = self.credential.take() else {
            return Poll::Ready(Ok(response));
        };
        let swaps = WatchStream::from_changes(credential.layer.swaps());
        Poll::Ready(Ok(response.map(|inner| {
            tonic::body::Body::new(RevocableBody {
                inner: Some(inner),
                credential,
                swaps,
            })
        })))
    }
}

/// A response body that ends with the refusal once its credential stops passing.
struct RevocableBody {
    /// `None` once ended.
    inner: Option<tonic::body::Body>,
    credential: Credential,
    swaps: WatchStream<()>,
}

impl Body for RevocableBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        while let Poll::Ready(Some(())) = Pin::new(&mut this.swaps).poll_next(cx) {
            if let Err(denied) = this.credential.still_admitted() {
                tracing::info!(path = %this.credential.path, reason = %denied, "ending a stream whose credential a reload removed or no longer allows");
                this.inner = None;
                return Poll::Ready(Some(Ok(Frame::trailers(refusal(denied)))));
            }
        }
        let inner = this.inner.as_mut().expect("checked above");
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner
            .as_ref()
            .is_none_or(|inner| inner.is_end_stream())
    }
}

/// The gRPC trailers of a refusal.
fn refusal(denied: Denied) -> http::HeaderMap {
    let (parts, ()) = Status::from(denied).into_http::<()>().into_parts();
    let mut trailers = parts.headers;
    trailers.remove(http::header::CONTENT_TYPE);
    trailers
}
