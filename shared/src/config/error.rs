//! What can be wrong with a configuration.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: `{field}`: {message}")]
    Parse {
        path: PathBuf,
        /// Dotted path of the offending key, e.g. `listen.grpc`; `.` for the whole file.
        field: String,
        message: String,
    },
    #[error("invalid configuration: `{field}` = {value}: {reason}")]
    Invalid {
        field: String,
        /// The bad value as the operator wrote it (secrets are never put here).
        value: String,
        reason: String,
    },
}

impl ConfigError {
    /// An invalid value; `value` is shown with `{:?}` so empty strings are visible.
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Debug,
        reason: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}
