//! A response body that keeps its call counted as open until the body ends, so a
//! connection whose only call is a long server stream is not taken for idle.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

use super::{StreamGuard, Tracked};

pin_project_lite::pin_project! {
    /// `body`, with the guard of its call dropped when the body is.
    pub struct TrackedBody<B, T: Tracked> {
        #[pin]
        body: B,
        call: Option<StreamGuard<T>>,
    }
}

impl<B, T: Tracked> TrackedBody<B, T> {
    /// `call` is `None` for a connection nobody tracks.
    pub fn new(body: B, call: Option<StreamGuard<T>>) -> Self {
        TrackedBody { body, call }
    }
}

impl<B: Body, T: Tracked> Body for TrackedBody<B, T> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
