//! A tonic client transport over an endpoint's pooled connection, so RouteMessage calls
//! share the connection (and its accounting) with transparent traffic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;

use crate::endpoint::Endpoint;
use crate::endpoint::connection::UpstreamBody;

#[derive(Debug, Clone)]
pub struct EndpointChannel(pub Arc<Endpoint>);

impl tower::Service<http::Request<UpstreamBody>> for EndpointChannel {
    type Response = http::Response<Incoming>;
    type Error = tonic::Status;
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
                .map_err(|failure| tonic::Status::unavailable(failure.error.to_string()))
        })
    }
}
