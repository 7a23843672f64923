//! W3C trace-context propagation (`traceparent`, `tracestate`) between Meridian hops:
//! a server extracts the caller's context from request headers and continues it; a
//! client injects the current span's context into outgoing headers.

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub(super) fn install_w3c_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) else {
            return;
        };
        self.0.insert(name, value);
    }
}

/// The trace context carried by `headers` (empty when there is none).
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    let propagator = TraceContextPropagator::new();
    opentelemetry::propagation::TextMapPropagator::extract(&propagator, &HeaderExtractor(headers))
}

/// Makes `span` a child of the trace carried by `headers`, if any.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let context = extract_context(headers);
    // Fails only when the span is disabled or already has a parent set: nothing to do then.
    let _ = span.set_parent(context);
}

/// Writes the context of `span` into `headers` (`traceparent`, `tracestate`).
pub fn inject_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let propagator = TraceContextPropagator::new();
    opentelemetry::propagation::TextMapPropagator::inject_context(
        &propagator,
        &span.context(),
        &mut HeaderInjector(headers),
    );
}

/// The span for one incoming gRPC request, continuing the caller's W3C trace when the
/// request carries one. For tonic's `Server::builder().trace_fn(...)`.
pub fn grpc_request_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %path,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    continue_trace(&span, request.headers());
    span
}
