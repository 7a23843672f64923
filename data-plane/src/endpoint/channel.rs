//! A tonic client transport over an endpoint's pooled connections, so RouteMessage calls
//! (and the ORCA out-of-band stream, [`super::orca_stream`]) share them (and their
//! accounting) with transparent traffic; a call keeps its place on its connection until
//! its response body is dropped ([`AnswerBody`]). A call the node
//! never answered fails with [`NoAnswer`], which tonic keeps as the status's source, so
//! the router tells it from a status the node sent by its type, not its text.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::wire::{ResponseBody, StreamError};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::connection::UpstreamBody;
use super::{Connection, StreamSlot};

/// gRPC calls over the connections of one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointChannel(pub Arc<Connection>);

/// The node did not answer: it could not be reached or its connection failed. No
/// `source`, so tonic does not map it to a status of its own.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NoAnswer(pub String);

impl NoAnswer {
    /// The `NoAnswer` behind a status tonic made of it, if it was one.
    pub fn behind(status: &tonic::Status) -> Option<&NoAnswer> {
        std::error::Error::source(status)?.downcast_ref()
    }
}

/// A node's answer, holding its call's place on the connection until dropped.
#[derive(Debug)]
pub struct AnswerBody {
    inner: ResponseBody,
    connection: Arc<Connection>,
    stream: StreamSlot,
}

impl Drop for AnswerBody {
    fn drop(&mut self) {
        self.connection.end_stream(self.stream);
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl tower::Service<http::Request<UpstreamBody>> for EndpointChannel {
    type Response = http::Response<AnswerBody>;
    type Error = NoAnswer;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<UpstreamBody>) -> Self::Future {
        let connection = Arc::clone(&self.0);
        Box::pin(async move {
            let (response, stream) = connection
                .send(request)
                .await
                .map_err(|failure| NoAnswer(failure.error.to_string()))?;
            Ok(response.map(|inner| AnswerBody {
                inner,
                connection,
                stream,
            }))
        })
    }
}
