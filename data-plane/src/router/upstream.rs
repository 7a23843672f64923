//! A tonic client transport over an endpoint's pooled connection, so RouteMessage calls
//! share the connection (and its accounting) with transparent traffic. A call the node
//! never answered fails with [`NoAnswer`], which tonic keeps as the status's source, so
//! the router tells it from a status the node sent by its type, not its text.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;

use crate::endpoint::Endpoint;
use crate::endpoint::connection::UpstreamBody;

#[derive(Debug, Clone)]
pub struct EndpointChannel(pub Arc<Endpoint>);

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

impl tower::Service<http::Request<UpstreamBody>> for EndpointChannel {
    type Response = http::Response<Incoming>;
    type Error = NoAnswer;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<UpstreamBody>) -> Self::Future {
        let endpoint = Arc::clone(&self.0);
        Box::pin(async move {
            endpoint
                .connection
                .send(request)
                .await
                .map_err(|failure| NoAnswer(failure.error.to_string()))
        })
    }
}
