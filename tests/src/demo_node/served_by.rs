//! The `x-served-by: <node id>` trailer on every response, so a test behind a proxy can
//! tell which node answered even when the call failed.
//!
//! tonic lets a handler set headers, and trailers only on errors; so this is a layer
//! around the whole server that rewrites responses instead: it adds the trailer to the
//! body's trailers frame, or to the headers of a trailers-only response (an error answered
//! without a body, where the headers are the trailers).

use http::HeaderValue;
use http_body_util::BodyExt;

/// The trailer naming the node that served a call.
pub const SERVED_BY: &str = "x-served-by";

/// `response` with the [`SERVED_BY`] trailer set to `node_id`.
pub fn add_served_by(
    response: http::Response<tonic::body::Body>,
    node_id: &HeaderValue,
) -> http::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    if parts.headers.contains_key("grpc-status") {
        parts.headers.insert(SERVED_BY, node_id.clone());
        return http::Response::from_parts(parts, body);
    }
    let node_id = node_id.clone();
    let body = body.map_frame(move |mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            trailers.insert(SERVED_BY, node_id.clone());
        }
        frame
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}
