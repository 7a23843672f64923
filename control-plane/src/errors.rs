//! The one place where the control plane's errors become gRPC statuses, with messages an
//! operator can act on.

use tonic::Status;

use crate::events::EventReadError;
use crate::keys::DecodeError;
use crate::scaling::actuator::NotAllowed;
use crate::scaling::record::RecordError;
use crate::store::StoreError;
use crate::topology::WriteError;

pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::Unavailable(_) => Status::unavailable(format!("{error}; retry shortly")),
        StoreError::LeaseNotFound(_) => Status::not_found(error.to_string()),
        StoreError::Compacted { .. } => Status::aborted(error.to_string()),
        StoreError::Rejected(_) => Status::failed_precondition(error.to_string()),
    }
}

pub fn decode_status(error: DecodeError) -> Status {
    Status::internal(format!("{error}; fix or delete the value with etcdctl"))
}

pub fn write_status(error: WriteError) -> Status {
    match error {
        WriteError::Invalid(invalid) => Status::invalid_argument(invalid.to_string()),
        WriteError::NotFound(message) => Status::not_found(message),
        WriteError::Precondition(message) => Status::failed_precondition(message),
        WriteError::Forbidden(message) => Status::permission_denied(message),
        WriteError::Conflict => Status::aborted(error.to_string()),
        WriteError::Store(e) => store_status(e),
        WriteError::Decode(e) => decode_status(e),
    }
}

pub fn event_read_status(error: EventReadError) -> Status {
    match error {
        EventReadError::Store(e) => store_status(e),
        EventReadError::Decode(e) => decode_status(e),
    }
}

pub fn record_status(error: RecordError) -> Status {
    match error {
        RecordError::Store(e) => store_status(e),
        RecordError::Decode(e) => decode_status(e),
        RecordError::Deposed | RecordError::Contended { .. } => Status::aborted(error.to_string()),
    }
}

/// An actuator outside the control plane's allowlists: the server's configuration, not
/// the request, has to change.
pub fn not_allowed_status(error: NotAllowed) -> Status {
    Status::failed_precondition(error.to_string())
}
