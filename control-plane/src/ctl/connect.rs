//! Connecting `meridianctl` to a control plane, and its errors.

use std::time::Duration;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use super::CtlArgs;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "invalid control-plane address {addr:?}: {source}; expected e.g. http://127.0.0.1:7700"
    )]
    BadAddress {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error(
        "cannot reach the control plane at {addr}: {source}; is meridian-control running? (--control-plane / MERIDIAN_CONTROL_PLANE)"
    )]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    /// Printed as `NOT_FOUND: node "x" is not registered`: the canonical code name, which
    /// scripts can match and which appears in the Admin API docs, then the server's words.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error(
        "the token (--token / MERIDIAN_TOKEN) has characters a gRPC header cannot carry; expected printable ASCII"
    )]
    BadToken,
    #[error("the configuration is invalid ({count} error(s) above); nothing was applied")]
    InvalidConfig { count: usize },
    #[error("writing output: {0}")]
    Write(std::io::Error),
}

/// The canonical gRPC name of a status code (tonic's `Display` gives a description).
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

pub(super) async fn channel(args: &CtlArgs) -> Result<Channel, CtlError> {
    let timeout = Duration::from_secs(args.timeout);
    let endpoint = Endpoint::from_shared(args.control_plane.clone())
        .map_err(|source| CtlError::BadAddress {
            addr: args.control_plane.clone(),
            source,
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    endpoint
        .connect()
        .await
        .map_err(|source| CtlError::Connect {
            addr: args.control_plane.clone(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_print_the_code_name_and_message() {
        let err = CtlError::from(tonic::Status::not_found("node \"x\" is not registered"));
        assert_eq!(err.to_string(), r#"NOT_FOUND: node "x" is not registered"#);
        let err = CtlError::from(tonic::Status::permission_denied("viewer token"));
        assert_eq!(err.to_string(), "PERMISSION_DENIED: viewer token");
    }
}
