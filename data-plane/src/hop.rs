//! What every call the proxy passes on to a node gets, forwarded or routed
//! (RouteMessage) alike: a deadline (the caller's `grpc-timeout` within the service's
//! timeout policy, or the default deadline of calls without one — the service's, else the
//! proxy's; the remaining budget written for the next hop) and a place in the
//! caller's W3C trace (with trace export on, a proxy span continuing the caller's
//! `traceparent` and parent of the node's; without it, the caller's context passes on
//! untouched at no cost).

use std::time::Duration;

use http::{HeaderMap, HeaderName};
use meridian_shared::telemetry;
use tokio::time::Instant;

use crate::clock;
use crate::error::RequestError;
use crate::forward::timeout;

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const TRACE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// When the call must end: the caller's `grpc-timeout`, capped by `max`, or `default`
/// when the caller sent none; `None` for no deadline.
pub fn deadline(
    headers: &HeaderMap,
    default: Option<Duration>,
    max: Option<Duration>,
) -> Result<Option<Instant>, RequestError> {
    let asked = match headers.get(GRPC_TIMEOUT) {
        Some(value) => {
            Some(
                timeout::parse(value).ok_or_else(|| RequestError::MalformedTimeout {
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                })?,
            )
        }
        None => default,
    };
    let budget = match (asked, max) {
        (Some(asked), Some(max)) => Some(asked.min(max)),
        (asked, _) => asked,
    };
    Ok(budget.map(|budget| clock::now() + budget))
}

/// Writes the budget left before `deadline` as the next hop's `grpc-timeout`. The
/// clock is read anew, not the pass's (`crate::clock`): the time spent in the proxy so far,
/// however short, is taken off.
pub fn pass_deadline(deadline: Option<Instant>, outgoing: &mut HeaderMap) {
    if let Some(deadline) = deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        outgoing.insert(GRPC_TIMEOUT, timeout::format(remaining));
    }
}

/// Whether a node's answer `code` is its own end of the deadline the proxy passed it:
/// CANCELLED once `deadline` is over (tonic servers answer CANCELLED "Timeout expired"
/// for the `grpc-timeout` they were given, and that races the proxy's own timer by
/// microseconds). The caller then hears DEADLINE_EXCEEDED either way.
pub fn node_ended_at_deadline(code: tonic::Code, deadline: Option<Instant>) -> bool {
    code == tonic::Code::Cancelled && deadline.is_some_and(|deadline| Instant::now() >= deadline)
}

/// With trace export on, the proxy's span for one call (`name`, e.g. `forward`, and the
/// service), a child of the trace `incoming` carries; `None` otherwise. The span lasts as
/// long as the caller keeps it.
pub fn span(name: &'static str, service: &str, incoming: &HeaderMap) -> Option<tracing::Span> {
    if !telemetry::exporting_traces() {
        return None;
    }
    let span = tracing::info_span!("proxy", otel.name = %format!("{name} {service}"), otel.kind = "client", rpc.service = %service);
    telemetry::continue_trace(&span, incoming);
    Some(span)
}

/// Makes the node's span a child of `span` (writes its `traceparent` into `outgoing`).
pub fn pass_span(span: Option<&tracing::Span>, outgoing: &mut HeaderMap) {
    if let Some(span) = span {
        telemetry::inject_context(span, outgoing);
    }
}

/// Passes the caller's trace on to a node in a new request: the proxy's span when there
/// is one, else the caller's own `traceparent` and `tracestate`.
pub fn pass_trace(span: Option<&tracing::Span>, incoming: &HeaderMap, outgoing: &mut HeaderMap) {
    if span.is_some() {
        return pass_span(span, outgoing);
    }
    for name in TRACE_HEADERS {
        if let Some(value) = incoming.get(&name) {
            outgoing.insert(name, value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;

    use super::*;

    fn with_timeout(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static(value));
        headers
    }

    /// The default and maximum deadlines, in ms (0: none).
    fn policy(default_ms: u64, max_ms: u64) -> (Option<Duration>, Option<Duration>) {
        let ms = |ms| (ms > 0).then(|| Duration::from_millis(ms));
        (ms(default_ms), ms(max_ms))
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_timeout_holds_within_the_policys_maximum() {
        let now = Instant::now();
        let at = |headers: &HeaderMap, (default, max): (Option<Duration>, Option<Duration>)| {
            deadline(headers, default, max).unwrap()
        };
        assert_eq!(
            at(&with_timeout("300m"), policy(0, 0)),
            Some(now + Duration::from_millis(300))
        );
        assert_eq!(
            at(&with_timeout("10S"), policy(0, 2_000)),
            Some(now + Duration::from_secs(2)),
            "capped by max_timeout_ms"
        );
        assert_eq!(
            at(&HeaderMap::new(), policy(500, 0)),
            Some(now + Duration::from_millis(500)),
            "default_timeout_ms when the caller sent none"
        );
        assert_eq!(at(&HeaderMap::new(), policy(0, 2_000)), None);
        let refused = deadline(&with_timeout("soon"), None, None).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_services_default_deadline_wins_over_the_proxys() {
        use meridian_shared::domain::TimeoutPolicy;
        let proxy = Some(Duration::from_secs(30));
        let unset = TimeoutPolicy::default();
        assert_eq!(unset.effective_default_timeout(proxy), proxy);
        assert_eq!(unset.effective_default_timeout(None), None);
        let set = TimeoutPolicy {
            default_timeout_ms: 500,
            max_timeout_ms: 0,
        };
        assert_eq!(
            set.effective_default_timeout(proxy),
            Some(Duration::from_millis(500))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_hop_gets_the_budget_left() {
        let deadline = Instant::now() + Duration::from_secs(1);
        tokio::time::advance(Duration::from_millis(400)).await;
        let mut outgoing = HeaderMap::new();
        pass_deadline(Some(deadline), &mut outgoing);
        assert_eq!(outgoing[GRPC_TIMEOUT], "600000u");
    }

    #[test]
    fn without_trace_export_the_callers_trace_context_passes_on() {
        let mut incoming = HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        incoming.insert("traceparent", HeaderValue::from_static(parent));
        let span = span("route", "demo.v1.Echo", &incoming);
        let mut outgoing = HeaderMap::new();
        pass_trace(span.as_ref(), &incoming, &mut outgoing);
        assert_eq!(outgoing["traceparent"], parent);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_cancel_once_the_deadline_is_over_is_the_nodes_end_of_it() {
        let deadline = Some(Instant::now() + Duration::from_secs(1));
        assert!(!node_ended_at_deadline(tonic::Code::Cancelled, deadline));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(node_ended_at_deadline(tonic::Code::Cancelled, deadline));
        assert!(!node_ended_at_deadline(tonic::Code::Unavailable, deadline));
        assert!(!node_ended_at_deadline(tonic::Code::Cancelled, None));
    }
}
