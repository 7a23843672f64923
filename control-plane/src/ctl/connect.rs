//! Connecting `meridianctl` to a control plane, and its errors.

use std::time::Duration;

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
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
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
