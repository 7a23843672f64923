//! Telemetry both binaries set up the same way at start: `tracing` logs (human or JSON,
//! filtered by `RUST_LOG` or the configured level), OpenTelemetry traces over OTLP/gRPC
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace-context propagation across hops,
//! and a Prometheus recorder whose text the HTTP endpoints serve at `/metrics`.

mod latency_family;
mod logging;
mod metrics;
mod propagation;
mod traces;

pub use latency_family::{LatencyFamily, LatencySeries};
pub use logging::{LogConfig, LogFormat, LogLevelChange, set_log_level};
pub use metrics::{MetricsError, install_prometheus};
pub use metrics_exporter_prometheus::PrometheusHandle;
pub use propagation::{continue_trace, extract_context, grpc_request_span, inject_context};
pub use traces::{OTLP_ENDPOINT_ENV, TraceExport};

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// What can stop telemetry from starting.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?} (from {source_name}): {message}")]
    BadFilter {
        filter: String,
        source_name: &'static str,
        message: String,
    },
    #[error("cannot start the OTLP trace exporter to {endpoint}: {message}")]
    Otlp { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps trace export running; dropping it flushes and stops the exporter.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    traces: Option<TraceExport>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(traces) = self.traces.take() {
            traces.shutdown();
        }
    }
}

/// Set once traces are exported, so hot paths create spans only when someone reads them.
static EXPORTING_TRACES: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces (OTLP endpoint configured).
pub fn exporting_traces() -> bool {
    EXPORTING_TRACES.load(Ordering::Relaxed)
}

/// Installs the global subscriber: logs per `config`, plus an OpenTelemetry layer when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Call once, inside the tokio runtime (the OTLP
/// exporter needs it).
pub fn init(service_name: &str, config: &LogConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = logging::filter(config)?;
    let (filter, filter_handle) = tracing_subscriber::reload::Layer::new(filter);
    let traces = TraceExport::from_env(service_name)?;
    let otel_layer = traces
        .as_ref()
        .map(|t| tracing_opentelemetry::layer().with_tracer(t.tracer()));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match config.format {
        LogFormat::Human => registry.with(logging::human_layer()).try_init(),
        LogFormat::Json => registry.with(logging::json_layer()).try_init(),
    };
    result.map_err(|_| TelemetryError::AlreadyInstalled)?;
    logging::keep_filter_handle(filter_handle);
    propagation::install_w3c_propagator();
    if let Some(t) = &traces {
        EXPORTING_TRACES.store(true, Ordering::Relaxed);
        tracing::info!(endpoint = %t.endpoint(), "exporting traces over OTLP/gRPC");
    }
    Ok(TelemetryGuard { traces })
}
