//! gRPC status codes as the forwarding path reads and labels them: the numeric code in a
//! `grpc-status` header, and each code's name for metric labels. The statuses the proxy
//! itself answers with are made in one place, [`crate::error`].

use tonic::Code;

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
