//! The error for proto messages that do not describe a valid domain value.

/// A `meridian.v1` message could not become a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    /// A required nested message was absent.
    #[error("{field} is required")]
    Missing {
        /// Dotted path of the field, e.g. `region.location`.
        field: &'static str,
    },
    /// An enum field held a number this build does not know.
    #[error("{field}: unknown value {value}")]
    UnknownEnum { field: &'static str, value: i32 },
    /// A timestamp was out of the representable range.
    #[error("{field}: timestamp out of range ({value})")]
    BadTimestamp { field: &'static str, value: String },
    /// A string field held an unknown value.
    #[error("{field}: unknown value {value:?}")]
    UnknownName { field: &'static str, value: String },
}

impl From<ConversionError> for tonic::Status {
    fn from(err: ConversionError) -> Self {
        tonic::Status::invalid_argument(err.to_string())
    }
}

/// Takes a required nested message out of its `Option`.
pub(crate) fn required<T>(value: Option<T>, field: &'static str) -> Result<T, ConversionError> {
    value.ok_or(ConversionError::Missing { field })
}
