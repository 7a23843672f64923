//! Transparent gRPC forwarding: any request whose gRPC service (from `:path`) is in the
//! routing table goes to an endpoint of that service chosen by the service's balancer,
//! over that endpoint's pooled HTTP/2 connection; the response — headers, body frames,
//! trailers — streams back untouched but for an `x-meridian-node` header naming the node
//! that served. The caller's `grpc-timeout` is honoured and the remaining budget passed
//! on. Unknown services, missing endpoints and expired deadlines become trailers-only
//! responses with a status and a message an operator can act on ([`status`]).

pub mod body;
pub mod status;
pub mod timeout;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderName, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use meridian_shared::domain::Algorithm;
use meridian_shared::telemetry;
use tokio::time::Instant;
use tonic::Code;

use self::body::{Call, ObservedBody};
use self::status::trailers_only;
use crate::balance::PickContext;
use crate::retry::TriedEndpoints;
use crate::table::{ProxyIdentity, ServiceRoute, TableHandle};

/// The body of every response the proxy sends.
pub type ProxyBody = tonic::body::Body;

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const SERVED_BY: HeaderName = HeaderName::from_static("x-meridian-node");

pub struct Forwarder {
    table: TableHandle,
    identity: Arc<ProxyIdentity>,
}

impl Forwarder {
    pub fn new(table: TableHandle, identity: Arc<ProxyIdentity>) -> Self {
        Forwarder { table, identity }
    }

    /// Forwards one call; every outcome is a gRPC response.
    pub async fn forward(
        &self,
        request: Request<Incoming>,
        client: Option<SocketAddr>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let guard = self.table.load();
        let Some(table) = guard.as_ref() else {
            return trailers_only(
                Code::Unavailable,
                format!(
                    "proxy {} has no routing table yet: it has not reached a control plane and has no cached table",
                    self.identity.id
                ),
            );
        };
        let Some(service) = service_of(request.uri()) else {
            return trailers_only(
                Code::Unimplemented,
                format!(
                    "{:?} is not a gRPC method path (/package.Service/Method)",
                    request.uri().path()
                ),
            );
        };
        let Some(route) = table.service(service) else {
            return trailers_only(
                Code::Unimplemented,
                format!(
                    "service {service} is not in the routing table of proxy {} (federation {}, version {}): no node serves it",
                    self.identity.id,
                    table.data.federation,
                    table.version()
                ),
            );
        };
        let route = Arc::clone(route);
        // Release the table: a long call must not keep an old version alive.
        drop(guard);

        let deadline = match deadline_of(&request, &route) {
            Ok(deadline) => deadline,
            Err(response) => return response,
        };
        let (mut parts, body) = request.into_parts();
        // With trace export on, the proxy is a span of the caller's trace and the node's
        // parent; without it, `traceparent` passes through untouched at no cost.
        // The span lasts until the response head is back (it is dropped with this call).
        let _span =
            telemetry::exporting_traces().then(|| proxy_span(&route.name, &mut parts.headers));
        // Only consistent hashing reads the key; the others must not pay for building it.
        let affinity_key = (route.policy.algorithm == Algorithm::ConsistentHash)
            .then(|| affinity_of(&parts.headers, &route, client))
            .flatten();
        let affinity = affinity_key.as_deref();
        if let Some(deadline) = deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            parts
                .headers
                .insert(GRPC_TIMEOUT, timeout::format(remaining));
        }
        // Calls to methods the policy marks idempotent are buffered so they can be replayed
        // on another node that answers UNAVAILABLE; everything else streams through.
        let (replay, mut upstream) = if is_idempotent(&route, parts.uri.path()) {
            let bytes = match buffer(body).await {
                Ok(bytes) => bytes,
                Err(message) => return trailers_only(Code::InvalidArgument, message),
            };
            let first =
                Request::from_parts(parts.clone(), ProxyBody::new(Full::new(bytes.clone())));
            (Some((parts, bytes)), first)
        } else {
            (None, Request::from_parts(parts, ProxyBody::new(body)))
        };
        route.retry_budget.deposit();
        let max_attempts = route.policy.retry.effective_max_attempts();
        let mut tried = TriedEndpoints::default();
        let mut attempt = 1;
        let (endpoint, metrics, in_flight, response) = loop {
            let Some(pick) = pick_avoiding(&route, affinity, &tried) else {
                return trailers_only(
                    Code::Unavailable,
                    format!(
                        "no usable node for service {}: {} node(s) known, none healthy (draining, unhealthy, failed or lost)",
                        route.name, route.known_nodes
                    ),
                );
            };
            let endpoint = Arc::clone(&route.all.endpoints()[pick]);
            let Some(authority) = endpoint.authority.clone() else {
                return trailers_only(
                    Code::Internal,
                    format!(
                        "node {} has an unusable address {:?}",
                        endpoint.node.id, endpoint.node.address
                    ),
                );
            };
            set_authority(upstream.uri_mut(), endpoint.scheme.clone(), authority);
            let metrics = route.metrics_of(&endpoint.node.id);
            let in_flight = (endpoint.start_owned_request(), metrics.load.start());
            let sent = endpoint.connection.send(upstream);
            let result = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                    Ok(result) => result,
                    Err(_) => {
                        metrics.record(Code::DeadlineExceeded as i32, started.elapsed());
                        return trailers_only(
                            Code::DeadlineExceeded,
                            format!(
                                "deadline exceeded waiting for node {} to answer",
                                endpoint.node.id
                            ),
                        );
                    }
                },
                None => sent.await,
            };
            match result {
                Ok(response) => {
                    let unavailable =
                        body::header_status(response.headers()) == Some(Code::Unavailable as i32);
                    let again = unavailable
                        && attempt < max_attempts
                        && deadline.is_none_or(|d| Instant::now() < d)
                        && replay.is_some()
                        && route.retry_budget.try_withdraw();
                    let Some((parts, bytes)) = replay.as_ref().filter(|_| again) else {
                        break (endpoint, metrics, in_flight, response);
                    };
                    route.record_failure(&endpoint);
                    metrics.record(Code::Unavailable as i32, started.elapsed());
                    tracing::debug!(node = %endpoint.node.id, attempt, "idempotent call answered UNAVAILABLE; retrying on another node");
                    drop((response, in_flight));
                    let pause = crate::retry::backoff(&route.policy.retry, attempt);
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.min(Instant::now() + pause)).await,
                        None => tokio::time::sleep(pause).await,
                    }
                    upstream = Request::from_parts(
                        parts.clone(),
                        ProxyBody::new(Full::new(bytes.clone())),
                    );
                    tried.insert(pick);
                    attempt += 1;
                }
                Err(failure) => {
                    route.record_failure(&endpoint);
                    metrics.record(Code::Unavailable as i32, started.elapsed());
                    drop(in_flight);
                    // A call the node never saw may always go elsewhere; an idempotent
                    // call (its body kept for replay) may even if it was sent.
                    let next = match failure.unsent {
                        Some(unsent) => Some(unsent),
                        None => replay.as_ref().map(|(parts, bytes)| {
                            Request::from_parts(
                                parts.clone(),
                                ProxyBody::new(Full::new(bytes.clone())),
                            )
                        }),
                    };
                    let retryable = next.is_some()
                        && attempt < max_attempts
                        && deadline.is_none_or(|d| Instant::now() < d)
                        && route.retry_budget.try_withdraw();
                    match next {
                        Some(next) if retryable => {
                            tracing::debug!(node = %endpoint.node.id, error = %failure.error, attempt, "call failed in transport; retrying on another node");
                            upstream = next;
                            tried.insert(pick);
                            attempt += 1;
                        }
                        _ => {
                            return trailers_only(
                                Code::Unavailable,
                                format!(
                                    "node {} of service {} failed after {attempt} attempt(s): {}",
                                    endpoint.node.id, route.name, failure.error
                                ),
                            );
                        }
                    }
                }
            }
        };
        endpoint.ewma.observe(started.elapsed());
        // A node answering UNAVAILABLE itself is failing as much as one refusing
        // connections; any other status is the application's answer.
        if body::header_status(response.headers()) == Some(Code::Unavailable as i32) {
            route.record_failure(&endpoint);
        } else {
            endpoint.record_success();
        }

        let (mut parts, body) = response.into_parts();
        if let Some(node) = &endpoint.node_header {
            parts.headers.insert(SERVED_BY, node.clone());
        }
        let header_status = body::header_status(&parts.headers);
        if header_status.is_some() {
            // A trailers-only response: its headers are the trailers.
            metrics.load.observe_orca_headers(&parts.headers);
        }
        let call = Call {
            _in_flight: in_flight,
            metrics,
            started,
            header_status,
        };
        Response::from_parts(
            parts,
            ProxyBody::new(ObservedBody::new(body, deadline, call)),
        )
    }
}

/// A span for one forwarded call, continuing the caller's W3C trace, and the headers
/// rewritten so the node's span is its child.
fn proxy_span(service: &str, headers: &mut http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!("proxy.forward", otel.name = %format!("forward {service}"), otel.kind = "client", rpc.service = %service);
    telemetry::continue_trace(&span, headers);
    telemetry::inject_context(&span, headers);
    span
}

/// Largest request body buffered for replay.
const MAX_REPLAY_BYTES: usize = 4 * 1024 * 1024;

/// Whether the policy marks `path` (`/pkg.Service/Method`) idempotent, by full name or by
/// `pkg.Service/*`.
fn is_idempotent(route: &ServiceRoute, path: &str) -> bool {
    let method = path.trim_start_matches('/');
    route.policy.retry.idempotent_methods.iter().any(|entry| {
        let entry = entry.trim_start_matches('/');
        match entry.strip_suffix('*') {
            Some(service_prefix) => method.starts_with(service_prefix),
            None => entry == method,
        }
    })
}

/// The whole request body, for replays; refused above [`MAX_REPLAY_BYTES`].
async fn buffer(body: Incoming) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, MAX_REPLAY_BYTES);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(format!(
            "the request body of an idempotent call could not be read (at most {MAX_REPLAY_BYTES} bytes are buffered for retries): {e}"
        )),
    }
}

/// A pick, preferring an endpoint not in `tried` (those that already failed this call)
/// when the service has another.
fn pick_avoiding(
    route: &ServiceRoute,
    affinity: Option<&[u8]>,
    tried: &TriedEndpoints,
) -> Option<usize> {
    let ctx = PickContext { affinity };
    route
        .all
        .pick_excluding(&ctx, &|i| tried.contains(i))
        .or_else(|| route.all.pick(&ctx))
        .map(|pick| pick.index)
}

fn set_authority(uri: &mut Uri, scheme: Scheme, authority: http::uri::Authority) {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(path);
    *uri = Uri::from_parts(parts).expect("scheme, authority and path make a valid URI");
}

/// `pkg.Service` of `/pkg.Service/Method`.
fn service_of(uri: &Uri) -> Option<&str> {
    let (service, method) = uri.path().strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// When the call must end: the caller's `grpc-timeout`, capped by the policy's maximum,
/// or the policy's default when the caller sent none.
#[allow(clippy::result_large_err)]
fn deadline_of(
    request: &Request<Incoming>,
    route: &ServiceRoute,
) -> Result<Option<Instant>, Response<ProxyBody>> {
    let policy = &route.policy.timeout;
    let asked = match request.headers().get(GRPC_TIMEOUT) {
        Some(value) => match timeout::parse(value) {
            Some(budget) => Some(budget),
            None => {
                return Err(trailers_only(
                    Code::InvalidArgument,
                    format!("malformed grpc-timeout header {value:?}"),
                ));
            }
        },
        None if policy.default_timeout_ms > 0 => Some(std::time::Duration::from_millis(u64::from(
            policy.default_timeout_ms,
        ))),
        None => None,
    };
    let capped = match (asked, policy.max_timeout_ms) {
        (Some(budget), max) if max > 0 => {
            Some(budget.min(std::time::Duration::from_millis(u64::from(max))))
        }
        (budget, _) => budget,
    };
    Ok(capped.map(|budget| Instant::now() + budget))
}

/// The consistent-hash key: the policy's header, else the client's address.
fn affinity_of(
    headers: &http::HeaderMap,
    route: &ServiceRoute,
    client: Option<SocketAddr>,
) -> Option<Vec<u8>> {
    let header = &route.policy.hash.header;
    if !header.is_empty()
        && let Some(value) = headers.get(header.as_str())
    {
        return Some(value.as_bytes().to_vec());
    }
    client.map(|a| a.ip().to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_is_taken_from_the_method_path() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(service_of(&uri("/demo.v1.Echo/Say")), Some("demo.v1.Echo"));
        assert_eq!(service_of(&uri("/demo.v1.Echo/")), None);
        assert_eq!(service_of(&uri("/nothing")), None);
        assert_eq!(service_of(&uri("/a/b/c")), None);
    }
}
