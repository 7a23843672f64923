//! Errors the proxy itself answers with: gRPC trailers-only responses (HTTP 200 with
//! `grpc-status` and `grpc-message` in the headers), which every gRPC client reads as the
//! call's status. The one place that turns a forwarding failure into a status.

use http::Response;
use tonic::Code;

use super::ProxyBody;

/// A trailers-only response with `code` and `message`.
pub fn trailers_only(code: Code, message: impl Into<String>) -> Response<ProxyBody> {
    metrics::counter!("meridian_proxy_local_errors_total", "code" => code_name(code)).increment(1);
    tonic::Status::new(code, message).into_http()
}

/// The numeric gRPC status in a header value, if it is one.
pub fn code_of(value: Option<&http::HeaderValue>) -> Option<i32> {
    value?.to_str().ok()?.parse().ok()
}

/// The lowercase name of a gRPC code, for metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
