//! Connecting `meridianctl` to a control plane, and its errors.

use std::time::Duration;

use meridian_shared::tls::{self, ClientTls, ClientTlsFiles, ConnectError, TlsConfigError};
use tonic::Code;
use tonic::transport::Channel;

use super::CtlArgs;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "invalid control-plane address: {0}; expected e.g. http://127.0.0.1:7700 or https://cp.example:7700 with --ca"
    )]
    BadAddress(ConnectError),
    #[error(
        "cannot reach the control plane: {0}; is meridian-control running, and is the address (--control-plane / MERIDIAN_CONTROL_PLANE) and, for https, --ca right?"
    )]
    Connect(String),
    #[error("client TLS (--ca, --cert, --key): {0}")]
    Tls(#[from] TlsConfigError),
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

/// `error` and its causes, `: `-separated: a transport error alone says nothing of why
/// (refused, certificate not trusted, handshake failure...).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let said = e.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = e.source();
    }
    text
}

pub(super) async fn channel(args: &CtlArgs) -> Result<Channel, CtlError> {
    let timeout = Duration::from_secs(args.timeout);
    let tls = match &args.ca {
        Some(ca) => Some(ClientTls::load(ClientTlsFiles {
            ca: ca.clone(),
            cert: args.cert.clone(),
            key: args.key.clone(),
            server_name: None,
        })?),
        None => None,
    };
    tls::connect(&args.control_plane, tls.as_ref(), |endpoint| {
        endpoint.connect_timeout(timeout).timeout(timeout)
    })
    .await
    .map_err(|e| match e {
        ConnectError::Connect { .. } => CtlError::Connect(with_causes(&e)),
        other => CtlError::BadAddress(other),
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
