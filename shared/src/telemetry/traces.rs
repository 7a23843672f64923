//! Trace export over OTLP/gRPC. Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set, so a
//! plain run has no exporter and no background thread. The standard `OTEL_*` variables
//! (headers, timeout, service name via `OTEL_SERVICE_NAME`) are honoured by the exporter.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

use super::TelemetryError;

/// The variable that turns trace export on, e.g. `http://127.0.0.1:4317`.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// A running OTLP trace pipeline.
pub struct TraceExport {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl TraceExport {
    /// Starts export when [`OTLP_ENDPOINT_ENV`] is set; `Ok(None)` when it is not.
    pub fn from_env(service_name: &str) -> Result<Option<Self>, TelemetryError> {
        match std::env::var(OTLP_ENDPOINT_ENV) {
            Ok(endpoint) if !endpoint.is_empty() => Self::start(service_name, &endpoint).map(Some),
            _ => Ok(None),
        }
    }

    /// Starts export to `endpoint`. Must run inside a tokio runtime.
    pub fn start(service_name: &str, endpoint: &str) -> Result<Self, TelemetryError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError::Otlp {
                endpoint: endpoint.to_owned(),
                message: e.to_string(),
            })?;
        let service_name =
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service_name).build())
            .build();
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(TraceExport {
            provider,
            endpoint: endpoint.to_owned(),
        })
    }

    pub fn tracer(&self) -> Tracer {
        self.provider.tracer("meridian")
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends what is buffered now.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, endpoint = %self.endpoint, "flushing traces failed; some spans may be lost");
        }
    }

    /// Flushes and stops the exporter. Blocks; call from a blocking-safe place.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!(
                "meridian: stopping the trace exporter to {} failed: {e}",
                self.endpoint
            );
        }
    }
}
