//! Timestamps between `SystemTime` (domain) and `google.protobuf.Timestamp` (proto).

use std::time::SystemTime;

use super::ConversionError;

pub(crate) fn to_proto(time: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    time.map(prost_types::Timestamp::from)
}

pub(crate) fn from_proto(
    time: Option<prost_types::Timestamp>,
    field: &'static str,
) -> Result<Option<SystemTime>, ConversionError> {
    time.map(|ts| {
        SystemTime::try_from(ts).map_err(|e| ConversionError::BadTimestamp {
            field,
            value: e.to_string(),
        })
    })
    .transpose()
}
