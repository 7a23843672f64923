//! Transparent gRPC forwarding: any request whose gRPC service (from `:path`) is in the
//! routing table goes to an endpoint of that service chosen by the service's balancer,
//! over that endpoint's pooled HTTP/2 connection; the response — headers, body frames,
//! trailers — streams back untouched but for an `x-meridian-node` header naming the node
//! that served (and `x-meridian-fallback-service` naming the service when a fallback
//! service of the called one's chain answered: the call goes on to the same method of it,
//! `/<fallback>/<Method>`). A call over its client tier's rate is refused first, then the
//! service's concurrency limit admits it ([`crate::admission`]; priority from `x-meridian-priority`)
//! and the call keeps its slot until the response body ends (a call going on to a fallback
//! service is admitted by that service's rate and concurrency limits too, without
//! queueing). Deadline and trace are
//! handled as for every hop ([`crate::hop`]), the
//! attempts by the one retry driver ([`crate::retry`]); unknown services, missing
//! endpoints and expired deadlines become trailers-only responses through the one error
//! edge ([`crate::error`]).
//!
//! A call with no frame either way for the stream idle timeout ends with `UNAVAILABLE`
//! ([`idle`]), whether it waits for the node's answer or streams; a call without
//! `grpc-timeout` gets the default deadline (the service's, else the proxy's).
//!
//! Messages over the service's size limit end the call with `RESOURCE_EXHAUSTED` in
//! either direction, found from their length prefixes as frames stream ([`framing`],
//! [`body`]). The bodies of calls to idempotent methods are kept for replays within the
//! proxy's buffer budget ([`replay`]); one that is not kept streams through instead, and
//! is not retried once a node has seen it.

pub mod body;
pub mod framing;
pub mod idle;
pub mod replay;
pub mod status;
pub mod timeout;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::FutureExt;
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use meridian_shared::config::ProxyConfig;
use meridian_shared::domain::Algorithm;
use tokio::time::Instant;
use tonic::Code;

use self::body::{BoxError, Call, CallShared, LimitedBody, ObservedBody};
use self::framing::{Direction, MessageFrames};
use self::idle::{CallTimer, Expired};
use self::replay::{Buffered, ReplayBuffer};
use crate::admission::concurrency::{self, ConcurrencyPermit};
use crate::admission::priority::Priority;
use crate::balance::PickContext;
use crate::clock;
use crate::endpoint::Endpoint;
use crate::error::{RequestError, Scope};
use crate::hop;
use crate::retry::{Attempt, BufferBudget, Candidates, Failure, FallbackChain, RetryDriver};
use crate::table::{ProxyIdentity, ProxyTable, ServiceRoute, TableHandle};

/// The body of every response the proxy sends.
pub type ProxyBody = tonic::body::Body;

const SERVED_BY: HeaderName = HeaderName::from_static("x-meridian-node");
/// On a call a fallback service answered: which one.
const FALLBACK_SERVICE: HeaderName = HeaderName::from_static("x-meridian-fallback-service");

/// The proxy-wide settings of forwarding.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The message size limit of services whose policy sets none.
    pub max_message_bytes: u32,
    /// What bodies kept for retries may hold.
    pub buffer_budget: Arc<BufferBudget>,
}

impl ForwardSettings {
    pub fn from_config(config: &ProxyConfig) -> Self {
        ForwardSettings {
            max_message_bytes: config.max_message_bytes,
            buffer_budget: BufferBudget::new(
                config.retry_buffer_call_bytes,
                config.retry_buffer_total_bytes,
            ),
        }
    }
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings::from_config(&ProxyConfig::default())
    }
}

pub struct Forwarder {
    table: TableHandle,
    identity: Arc<ProxyIdentity>,
    settings: ForwardSettings,
}

impl Forwarder {
    pub fn new(
        table: TableHandle,
        identity: Arc<ProxyIdentity>,
        settings: ForwardSettings,
    ) -> Self {
        Forwarder {
            table,
            identity,
            settings,
        }
    }

    /// Forwards one call; every outcome is a gRPC response. Any request body will do
    /// (the server's, or an in-memory one in tests).
    ///
    /// Not an `async fn`, nor is [`Forwarder::try_forward`]: every layer that holds the
    /// request takes its space in every call's future (an `async fn` twice, as argument
    /// and local), so the request is split here and held once, by `try_forward`.
    pub fn forward<B>(
        &self,
        request: Request<B>,
        client: Option<SocketAddr>,
    ) -> impl Future<Output = Response<ProxyBody>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        self.try_forward(parts, body, client)
            .map(|answer| answer.unwrap_or_else(RequestError::into_response))
    }

    /// Route, deadline, trace, then the attempts; the response streams back from the
    /// node that answered.
    #[allow(clippy::manual_async_fn)] // see `forward`
    fn try_forward<B>(
        &self,
        mut parts: Parts,
        body: B,
        client: Option<SocketAddr>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, RequestError>>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        async move {
            let started = clock::now();
            let route = self.route_of(&parts.uri)?;
            route.rate_limit.admit(&parts.headers)?;
            let deadline = route.deadline(&parts.headers)?;
            let priority = Priority::of_call(&parts.headers)?;
            let admission = concurrency::admit(&route, priority, deadline).await?;
            // The span lasts until the response head is back (it is dropped with this call).
            let span = hop::span("forward", &route.name, &parts.headers);
            hop::pass_span(span.as_ref(), &mut parts.headers);
            // Only consistent hashing reads the key; the others must not pay for building it.
            let affinity_key = (route.policy.algorithm == Algorithm::ConsistentHash)
                .then(|| affinity_of(&parts.headers, &route, client))
                .flatten();
            let max_message_bytes = route
                .policy
                .limits
                .effective_max_message_bytes(self.settings.max_message_bytes);
            let frames = MessageFrames::new(Direction::Request, max_message_bytes);
            // Shared by the call's request and response bodies (see `body`).
            let shared = Arc::new(CallShared::default());
            let outgoing = if is_idempotent(&route, parts.uri.path()) {
                let budget = &self.settings.buffer_budget;
                // Boxed: only idempotent calls buffer, and the state of reading a body would
                // otherwise be part of every call's future.
                match Box::pin(replay::read_for_replay(
                    body,
                    frames,
                    budget,
                    shared.clone(),
                    &route.name,
                ))
                .await?
                {
                    Buffered::Replayable(buffer) => Outgoing::replayable(parts, buffer),
                    Buffered::Streamed(body, why) => {
                        metrics::counter!(
                            "meridian_proxy_retry_unbuffered_total",
                            "service" => route.name.clone(),
                            "reason" => why.as_str()
                        )
                        .increment(1);
                        Outgoing::once(Request::from_parts(parts, ProxyBody::new(body)))
                    }
                }
            } else {
                let body = LimitedBody::new(body, frames, shared.clone());
                Outgoing::once(Request::from_parts(parts, ProxyBody::new(body)))
            };
            let candidates = Candidates::Balanced {
                balancer: &*route.all,
                ctx: PickContext {
                    affinity: affinity_key.as_deref(),
                },
                scope: Scope::Federation,
            };
            let attempt = ForwardAttempt {
                route: &route,
                outgoing,
                deadline,
                started,
                admission,
                fallback_admission: None,
                priority,
                max_message_bytes,
                shared,
                timer: None,
            };
            let driver = RetryDriver {
                route: &route,
                deadline,
            };
            let fallbacks = ForwardFallbacks {
                table: &self.table,
                loaded: OnceLock::new(),
                affinity: affinity_key.as_deref(),
            };
            let chain = (!route.policy.fallback_services.is_empty())
                .then_some(&fallbacks as &dyn FallbackChain<'_>);
            // Boxed: the attempts' state is most of a call's; inline, every future that
            // holds this one (up to the connection's per-stream entry) would carry its
            // size, and each is copied whole when it is built and moved into its parent.
            // One allocation per call is cheaper than those copies (see BENCHMARKS.md).
            let delivered = Box::pin(driver.run_with_fallbacks(candidates, attempt, chain)).await?;
            let mut answer = delivered.answer;
            if delivered.fallback_depth > 0
                && let Ok(service) = HeaderValue::from_str(&delivered.route.name)
            {
                answer.headers_mut().insert(FALLBACK_SERVICE, service);
            }
            Ok(answer)
        }
    }

    /// The route of the service `uri` names, out of the table in force (released at once:
    /// a long call must not keep an old version alive).
    fn route_of(&self, uri: &Uri) -> Result<Arc<ServiceRoute>, RequestError> {
        let guard = self.table.load();
        let table = guard.as_ref().ok_or_else(|| RequestError::NoTable {
            proxy: self.identity.id.clone(),
        })?;
        let service = service_of(uri).ok_or_else(|| RequestError::NotAMethodPath {
            path: uri.path().to_owned(),
        })?;
        let route = table
            .service(service)
            .ok_or_else(|| RequestError::UnknownService {
                service: service.to_owned(),
                proxy: self.identity.id.clone(),
                federation: table.data.federation.clone(),
                version: table.version(),
            })?;
        Ok(Arc::clone(route))
    }
}

/// The fallback services of a forwarded call: routes of the table in force when the call
/// first needs one (loaded then, and kept for the rest of the call), any region's nodes.
struct ForwardFallbacks<'a> {
    table: &'a TableHandle,
    loaded: OnceLock<Option<Arc<ProxyTable>>>,
    affinity: Option<&'a [u8]>,
}

impl<'a> FallbackChain<'a> for ForwardFallbacks<'a> {
    fn link(&'a self, service: &str) -> Option<(&'a ServiceRoute, Candidates<'a>)> {
        let table = self.loaded.get_or_init(|| self.table.current()).as_ref()?;
        let route = table.service(service)?;
        let candidates = Candidates::Balanced {
            balancer: &*route.all,
            ctx: PickContext {
                affinity: self.affinity,
            },
            scope: Scope::Federation,
        };
        Some((route, candidates))
    }
}

/// The request each attempt sends: the caller's until a node has seen it; after that,
/// for idempotent calls whose body was kept, a copy replaying the kept body.
struct Outgoing {
    unsent: Option<Request<ProxyBody>>,
    /// Boxed: only idempotent calls keep their body, and the head (~230 bytes) would
    /// otherwise be part of every call's future.
    replay: Option<Box<(Parts, Arc<ReplayBuffer>)>>,
}

impl Outgoing {
    /// A call that streams through and may be retried only while no node has seen it.
    fn once(request: Request<ProxyBody>) -> Self {
        Outgoing {
            unsent: Some(request),
            replay: None,
        }
    }

    /// A call to an idempotent method, its body kept so it can be replayed on another
    /// node after one answered UNAVAILABLE.
    fn replayable(parts: Parts, buffer: Arc<ReplayBuffer>) -> Self {
        Outgoing {
            unsent: None,
            replay: Some(Box::new((parts, buffer))),
        }
    }

    /// The request for the next attempt; `None` once a node has seen a call that cannot
    /// be replayed (the driver does not retry those).
    fn next(&mut self) -> Option<Request<ProxyBody>> {
        self.unsent.take().or_else(|| {
            let (parts, buffer) = self.replay.as_deref()?;
            Some(Request::from_parts(
                parts.clone(),
                ProxyBody::new(buffer.body()),
            ))
        })
    }

    /// The call's request headers, while it may still be sent.
    fn headers(&self) -> Option<&http::HeaderMap> {
        match (&self.unsent, &self.replay) {
            (Some(request), _) => Some(request.headers()),
            (None, Some(replay)) => Some(&replay.0.headers),
            (None, None) => None,
        }
    }

    /// Whether another node may still get the call.
    fn may_resend(&self) -> bool {
        self.unsent.is_some() || self.replay.is_some()
    }
}

/// The attempts of one forwarded call: send to the endpoint, account, wrap the response.
struct ForwardAttempt<'a> {
    /// The service called (a fallback service's attempts come with its own route).
    route: &'a ServiceRoute,
    outgoing: Outgoing,
    deadline: Option<Instant>,
    started: Instant,
    /// The call's slot under the concurrency limit, handed to the body of the answer that
    /// goes back to the client.
    admission: Option<ConcurrencyPermit>,
    /// Its slot under the limit of the fallback service it went on to, if any; handed on
    /// with `admission`.
    fallback_admission: Option<ConcurrencyPermit>,
    /// Its priority under concurrency limits (`x-meridian-priority`).
    priority: Priority,
    max_message_bytes: u32,
    shared: Arc<CallShared>,
    /// The call's one timer, set by its first attempt and handed to the body of the answer.
    timer: Option<CallTimer>,
}

impl ForwardAttempt<'_> {
    /// The request for an attempt on `endpoint` of `route`.
    #[allow(clippy::result_large_err)] // an attempt's failure, as `Attempt::send`'s
    fn request_for(
        &mut self,
        route: &ServiceRoute,
        endpoint: &Endpoint,
    ) -> Result<Request<ProxyBody>, Failure<Response<ProxyBody>>> {
        let not_sent = |error| Failure {
            error,
            answer: None,
            retry_safe: false,
        };
        let Some(authority) = endpoint.authority.clone() else {
            return Err(not_sent(RequestError::UnusableAddress {
                node: endpoint.node.id.clone(),
                address: endpoint.node.address.clone(),
            }));
        };
        let Some(mut request) = self.outgoing.next() else {
            // Unreachable: the driver retries only what `may_resend` allowed.
            return Err(not_sent(RequestError::BadRequest(
                "the call cannot be sent again".into(),
            )));
        };
        if !std::ptr::eq(route, self.route) {
            to_fallback_service(request.uri_mut(), &route.name);
        }
        set_authority(request.uri_mut(), endpoint.scheme.clone(), authority);
        // Written per attempt: a retry's node gets what is left after the earlier ones.
        hop::pass_deadline(self.deadline, request.headers_mut());
        Ok(request)
    }
}

impl Attempt for ForwardAttempt<'_> {
    type Answer = Response<ProxyBody>;

    /// The call's one timer ends the wait for the head at the deadline too.
    const ENDS_AT_DEADLINE: bool = true;

    /// The fallback service's rate limit (the caller's tier of it) and concurrency limit
    /// (a slot now, no queue). Its message size limit does not apply: the call's bodies
    /// already stream under the limit of the service called.
    fn admit_fallback(&mut self, route: &ServiceRoute) -> Result<(), RequestError> {
        // The slot of an earlier fallback of the chain is given back first.
        self.fallback_admission = None;
        if let Some(headers) = self.outgoing.headers() {
            route.rate_limit.admit(headers)?;
        }
        self.fallback_admission = concurrency::admit_fallback(route, self.priority)?;
        Ok(())
    }

    async fn send(
        &mut self,
        route: &ServiceRoute,
        endpoint: &Arc<Endpoint>,
        number: u32,
    ) -> Result<Response<ProxyBody>, Failure<Response<ProxyBody>>> {
        // Built outside this future: as a local here, the request would take its space
        // in every call's future.
        let request = self.request_for(route, endpoint)?;
        let metrics = route.metrics_of(&endpoint.node.id);
        let mut in_flight = (endpoint.start_owned_request(), metrics.load.start());
        let sent_at = clock::now();
        let activity = &self.shared.activity;
        activity.touch();
        if self
            .timer
            .as_ref()
            .is_none_or(|timer| timer.idle() != route.stream_idle_timeout)
        {
            self.timer = CallTimer::new(self.deadline, route.stream_idle_timeout, activity);
        }
        let sent = idle::within_time(
            self.timer.as_mut(),
            activity,
            endpoint.connection.send(request),
        );
        let outgoing = &mut self.outgoing;
        let not_sent = |error| Failure {
            error,
            answer: None,
            retry_safe: false,
        };
        let sent = match sent.await {
            Ok(sent) => sent,
            Err(Expired::Idle(timeout)) => {
                // A node that never answers, or a client that went silent while streaming.
                metrics.record(Code::Unavailable as i32, clock::since(self.started));
                return Err(not_sent(RequestError::StreamIdle {
                    node: endpoint.node.id.clone(),
                    service: route.name.clone(),
                    timeout,
                }));
            }
            Err(Expired::Deadline) => {
                metrics.record(Code::DeadlineExceeded as i32, clock::since(self.started));
                return Err(not_sent(RequestError::DeadlineExceeded {
                    node: endpoint.node.id.clone(),
                    service: self.route.name.clone(),
                    attempts: number,
                }));
            }
        };
        let response = match sent {
            Ok((response, stream)) => {
                in_flight.0.hold_stream(stream);
                response
            }
            Err(failure) => {
                if let Some(too_large) = self.shared.oversize.get() {
                    // The proxy cut the request itself: the node is not at fault, and the
                    // call must not go elsewhere.
                    metrics.record(Code::ResourceExhausted as i32, clock::since(self.started));
                    return Err(not_sent(RequestError::message_too_large(
                        route.name.clone(),
                        too_large,
                    )));
                }
                route.record_failure(endpoint);
                metrics.record(Code::Unavailable as i32, clock::since(self.started));
                drop(in_flight);
                // A call the node never saw may always go elsewhere; an idempotent call
                // (its body kept for replay) may even if it was sent.
                if failure.unsent.is_some() {
                    outgoing.unsent = failure.unsent;
                }
                return Err(Failure {
                    error: RequestError::Upstream {
                        node: endpoint.node.id.clone(),
                        service: route.name.clone(),
                        attempts: number,
                        reason: failure.error.to_string(),
                    },
                    answer: None,
                    retry_safe: outgoing.may_resend(),
                });
            }
        };
        endpoint.ewma.observe(clock::since(sent_at));
        let (mut parts, body) = response.into_parts();
        if let Some(node) = &endpoint.node_header {
            parts.headers.insert(SERVED_BY, node.clone());
        }
        let header_status = body::header_status(&parts.headers);
        if header_status.is_some_and(|code| hop::node_ended_at_deadline(code.into(), self.deadline))
        {
            metrics.record(Code::DeadlineExceeded as i32, clock::since(self.started));
            return Err(not_sent(RequestError::DeadlineExceeded {
                node: endpoint.node.id.clone(),
                service: self.route.name.clone(),
                attempts: number,
            }));
        }
        if header_status.is_some()
            // A trailers-only response: its headers are the trailers.
            && let Some(utilization) = metrics.load.observe_orca_headers(&parts.headers)
        {
            let others = endpoint.in_flight().saturating_sub(1);
            endpoint.reported.record(utilization, others);
        }
        let unavailable = header_status == Some(Code::Unavailable as i32);
        // After an UNAVAILABLE answer the slots stay with the call for its next attempt.
        let (admission, fallback_admission) = if unavailable {
            (None, None)
        } else {
            (self.admission.take(), self.fallback_admission.take())
        };
        let call = Call {
            _in_flight: in_flight,
            metrics,
            started: self.started,
            header_status,
            admission,
            fallback_admission,
        };
        let answer = Response::from_parts(
            parts,
            ProxyBody::new(ObservedBody::new(
                body,
                self.timer.take(),
                call,
                self.max_message_bytes,
                Arc::clone(&self.shared),
            )),
        );
        // A node answering UNAVAILABLE itself is failing as much as one refusing
        // connections; any other status is the application's answer. Only an idempotent
        // call (its body kept) may then go to another node.
        if !unavailable {
            endpoint.record_success();
            return Ok(answer);
        }
        route.record_failure(endpoint);
        Err(Failure {
            error: RequestError::Answered(tonic::Status::unavailable(
                "the node answered UNAVAILABLE",
            )),
            retry_safe: outgoing.replay.is_some(),
            answer: Some(answer),
        })
    }
}

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

/// `/<service>/<Method>` for a call to `/<called service>/<Method>` going on to fallback
/// `service` (a valid service name, checked by the control plane).
fn to_fallback_service(uri: &mut Uri, service: &str) {
    let method = uri.path().rsplit_once('/').map_or("", |(_, method)| method);
    let path = PathAndQuery::try_from(format!("/{service}/{method}")).ok();
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = path;
    *uri = Uri::from_parts(parts).unwrap_or_default();
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
    //! The error edge of forwarding, driven with in-memory request bodies.

    use http_body_util::Full;
    use meridian_shared::domain::Node;

    use super::*;
    use crate::endpoint::UpstreamSettings;
    use crate::table::{ProxyTable, TableData, TableSource};

    fn call(path: &str, timeout: Option<&'static str>) -> Request<Full<Bytes>> {
        let mut request = Request::post(path)
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        if let Some(timeout) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", http::HeaderValue::from_static(timeout));
        }
        request
    }

    fn identity() -> Arc<ProxyIdentity> {
        Arc::new(ProxyIdentity {
            id: "proxy-eu".into(),
            ..Default::default()
        })
    }

    /// A forwarder whose table has demo.v1.Echo on one node.
    fn forwarder_with_a_table() -> Forwarder {
        let mut data = TableData {
            version: 7,
            federation: "prod".into(),
            ..Default::default()
        };
        let node = Node {
            id: "eu-1".into(),
            address: "127.0.0.1:1".into(),
            services: vec!["demo.v1.Echo".into()],
            ..Default::default()
        };
        data.nodes.insert("eu-1".into(), node);
        let table = ProxyTable::build(
            data,
            &identity(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let handle = TableHandle::default();
        handle.store(table);
        Forwarder::new(handle, identity(), ForwardSettings::default())
    }

    async fn status_of(response: Response<ProxyBody>) -> tonic::Status {
        tonic::Status::from_header_map(response.headers()).expect("a trailers-only response")
    }

    #[tokio::test]
    async fn calls_the_proxy_cannot_route_get_a_status_that_says_why() {
        let without_table = Forwarder::new(
            TableHandle::default(),
            identity(),
            ForwardSettings::default(),
        );
        let status = status_of(
            without_table
                .forward(call("/demo.v1.Echo/Say", None), None)
                .await,
        )
        .await;
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status
                .message()
                .contains("proxy proxy-eu has no routing table"),
            "{}",
            status.message()
        );

        let forwarder = forwarder_with_a_table();
        let status = status_of(
            forwarder
                .forward(call("/other.v1.Thing/Do", None), None)
                .await,
        )
        .await;
        assert_eq!(status.code(), Code::Unimplemented);
        assert!(
            status.message().contains("other.v1.Thing") && status.message().contains("version 7"),
            "{}",
            status.message()
        );

        let status = status_of(forwarder.forward(call("/nothing", None), None).await).await;
        assert_eq!(status.code(), Code::Unimplemented);

        let status = status_of(
            forwarder
                .forward(call("/demo.v1.Echo/Say", Some("soon")), None)
                .await,
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("\"soon\""),
            "{}",
            status.message()
        );
    }

    /// The size of the future every forwarded call runs, and of its parts: each call's
    /// task holds it, and every nesting level is moved into place as it is built, so its
    /// size is memory moved per call. Run with `--nocapture` to see the figures.
    #[test]
    fn the_forwarding_future_stays_small() {
        let forwarder = forwarder_with_a_table();
        let forward = forwarder.forward(call("/demo.v1.Echo/Say", None), None);
        let (parts, body) = call("/demo.v1.Echo/Say", None).into_parts();
        let try_forward = forwarder.try_forward(parts, body, None);
        let connection =
            crate::endpoint::connection::Connection::new("127.0.0.1:1".into(), Default::default());
        let send = connection.send(Request::new(ProxyBody::default()));
        let activity = idle::Activity::default();
        let within = idle::within_time(None, &activity, async {});
        let route = forwarder
            .route_of(&"/demo.v1.Echo/Say".parse().unwrap())
            .unwrap();
        let endpoint = Arc::clone(&route.all.endpoints()[0]);
        let mut attempt = ForwardAttempt {
            route: &route,
            outgoing: Outgoing::once(Request::new(ProxyBody::default())),
            deadline: None,
            started: clock::now(),
            admission: None,
            fallback_admission: None,
            priority: Priority::NORMAL,
            max_message_bytes: 1024,
            shared: Arc::default(),
            timer: None,
        };
        let attempt_size = std::mem::size_of_val(&attempt.send(&route, &endpoint, 1));
        let driver = RetryDriver {
            route: &route,
            deadline: None,
        };
        let candidates = Candidates::Balanced {
            balancer: &*route.all,
            ctx: PickContext { affinity: None },
            scope: Scope::Federation,
        };
        let run = driver.run_with_fallbacks(candidates, attempt, None);
        let sizes = [
            (
                "RetryDriver::run_with_fallbacks",
                std::mem::size_of_val(&run),
            ),
            ("ForwardAttempt::send", attempt_size),
            ("Forwarder::forward", std::mem::size_of_val(&forward)),
            (
                "Forwarder::try_forward",
                std::mem::size_of_val(&try_forward),
            ),
            ("Connection::send", std::mem::size_of_val(&send)),
            ("within_time(empty)", std::mem::size_of_val(&within)),
            (
                "Request<ProxyBody>",
                std::mem::size_of::<Request<ProxyBody>>(),
            ),
            ("tokio Sleep", std::mem::size_of::<tokio::time::Sleep>()),
        ];
        for (what, size) in sizes {
            println!("future size: {what}: {size} B");
        }
        // 6,400 bytes before the hot path's `async fn`s stopped holding their arguments
        // twice and the rare parts moved out; 3,800 with rustc 1.95 until the attempts'
        // state (the driver's future) was boxed, 1,024 until the request was held by one
        // layer only (`forward` splits it for `try_forward`), 504 since.
        assert!(
            sizes[2].1 <= 768,
            "the forwarding future grew to {} bytes",
            sizes[2].1
        );
    }

    #[test]
    fn service_is_taken_from_the_method_path() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(service_of(&uri("/demo.v1.Echo/Say")), Some("demo.v1.Echo"));
        assert_eq!(service_of(&uri("/demo.v1.Echo/")), None);
        assert_eq!(service_of(&uri("/nothing")), None);
        assert_eq!(service_of(&uri("/a/b/c")), None);
    }
}
