//! Headers that mean something only on an HTTP/1 connection. RFC 9113 forbids them in
//! HTTP/2 (section 8.2.2): the proxy never sends them, and a request or answer that
//! carries one is malformed.

use http::{HeaderName, HeaderValue};

const CONNECTION_HEADERS: [HeaderName; 5] = [
    http::header::CONNECTION,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether a header is connection-specific: one of the HTTP/1 connection headers, or a
/// `te` other than `trailers`.
pub fn is_connection_specific(name: &HeaderName, value: &HeaderValue) -> bool {
    CONNECTION_HEADERS.contains(name) || (name == http::header::TE && value != "trailers")
}
