//! Log output: format, level, and the filter that chooses between `RUST_LOG` and the
//! configured level.

use serde::Deserialize;
use tracing_subscriber::{EnvFilter, Layer};

use super::TelemetryError;
use crate::config::{ConfigError, Validate};

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines for a terminal.
    #[default]
    Human,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// The `[log]` section of both binaries' configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,meridian_control_plane=debug`.
    /// `RUST_LOG`, when set, wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

impl Validate for LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        EnvFilter::try_new(&self.level)
            .map(drop)
            .map_err(|e| ConfigError::invalid("log.level", &self.level, e.to_string()))
    }
}

pub(super) fn filter(config: &LogConfig) -> Result<EnvFilter, TelemetryError> {
    let (filter, source_name) = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => (value, "RUST_LOG"),
        _ => (config.level.clone(), "log.level"),
    };
    EnvFilter::try_new(&filter).map_err(|e| TelemetryError::BadFilter {
        filter,
        source_name,
        message: e.to_string(),
    })
}

pub(super) fn human_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
}

pub(super) fn json_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(std::io::stderr)
}
