//! Log output: format, level, and the filter that chooses between `RUST_LOG` and the
//! configured level. The filter sits behind a reload handle so a configuration reload can
//! change `log.level` without a restart; the format is fixed at start.

use std::io::IsTerminal;
use std::sync::OnceLock;

use serde::Deserialize;
use tracing_subscriber::reload::Handle;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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

/// The handle of the installed filter, set once by `telemetry::init`.
static FILTER: OnceLock<Handle<EnvFilter, Registry>> = OnceLock::new();

pub(super) fn keep_filter_handle(handle: Handle<EnvFilter, Registry>) {
    let _ = FILTER.set(handle);
}

/// What [`set_log_level`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLevelChange {
    /// The filter in force is now `level`.
    Applied,
    /// `RUST_LOG` is set and wins over `log.level`: nothing changed.
    OverriddenByRustLog,
    /// No subscriber was installed by this module (tests, embedded use).
    NotInstalled,
}

/// Makes `config.level` the filter in force, unless `RUST_LOG` is set (it wins, as at
/// start). The level must have been validated ([`LogConfig`]'s `validate`).
pub fn set_log_level(config: &LogConfig) -> Result<LogLevelChange, TelemetryError> {
    if std::env::var("RUST_LOG").is_ok_and(|value| !value.is_empty()) {
        return Ok(LogLevelChange::OverriddenByRustLog);
    }
    let Some(handle) = FILTER.get() else {
        return Ok(LogLevelChange::NotInstalled);
    };
    let filter = filter(config)?;
    handle
        .reload(filter)
        .map_err(|e| TelemetryError::BadFilter {
            filter: config.level.clone(),
            source_name: "log.level",
            message: e.to_string(),
        })?;
    Ok(LogLevelChange::Applied)
}

pub(super) fn human_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    // Colour codes only on a terminal: in a file, a pipe or a log collector they are noise.
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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
