//! `meridian.v1.MessageRouter/RouteMessage`: route one federation message to a node of
//! its target service and return the node's reply with the routing decision. The node is
//! the requested one (`target_node`), the least loaded ready node in the requested region
//! (`target_region`), or the service balancer's pick — among the proxy's own region only
//! unless the message allows global routing. A message over its client tier's rate is
//! refused first ([`crate::admission`]). The call is a hop like any forwarded one
//! ([`crate::hop`]: the service's timeout policy, the caller's trace carried on), its
//! attempts are run by the one retry driver ([`crate::retry`]) — RouteMessage is
//! idempotent by contract, so a node answering UNAVAILABLE may be retried elsewhere — and
//! its errors go through the one error edge ([`crate::error`]). The service's concurrency
//! limit admits it first ([`crate::admission`], at the message's priority) and it holds
//! its slot until the reply. It goes over the
//! endpoint's pooled HTTP/2 connection, so RouteMessage and transparent traffic share
//! load accounting.
//!
//! A message is held to its service's message size limit both ways, and a message with
//! an idempotency key reaches a node once however often it is sent at once, its answer
//! replayed to retries for the service's dedup TTL ([`dedup`]).
//!
//! When the target service has no usable node where the message may go, or its attempts
//! end on a retryable failure, the message goes on to the fallback services of its policy
//! in order (unchanged: the node of a fallback service gets the message as sent), and the
//! decision names the fallback service that served (`fallback_service`, `fallback_depth`).

pub mod dedup;

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, LazyLock};

use http::HeaderMap;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_handler_client::MessageHandlerClient;
use meridian_proto::v1::message_router_server::MessageRouter;
use meridian_shared::domain::Algorithm;
use prost::Message;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use self::dedup::{Claim, DedupKey};
use crate::admission::concurrency;
use crate::admission::priority::Priority;
use crate::balance::PickContext;
use crate::balance::least_connections::LeastConnections;
use crate::endpoint::Endpoint;
use crate::endpoint::channel::{EndpointChannel, NoAnswer};
use crate::error::{RequestError, Scope};
use crate::forward::framing::{Direction, TooLarge};
use crate::hop;
use crate::retry::{Attempt, Candidates, Failure, FallbackChain, RetryDriver};
use crate::table::{ProxyIdentity, ProxyTable, ServiceRoute, TableHandle};

/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

pub struct Router {
    table: TableHandle,
    identity: Arc<ProxyIdentity>,
    /// The message size limit of services whose policy sets none.
    max_message_bytes: u32,
    /// Hashes callers' credentials into dedup keys (randomly keyed per process).
    callers: RandomState,
}

impl Router {
    pub fn new(table: TableHandle, identity: Arc<ProxyIdentity>, max_message_bytes: u32) -> Self {
        Router {
            table,
            identity,
            max_message_bytes,
            callers: RandomState::new(),
        }
    }
}

#[tonic::async_trait]
impl MessageRouter for Router {
    async fn route_message(
        &self,
        request: Request<pb::RouteMessageRequest>,
    ) -> Result<Response<pb::RouteMessageResponse>, Status> {
        self.route(request)
            .await
            .map(Response::new)
            .map_err(RequestError::into_status)
    }
}

/// The attempts of one RouteMessage call.
struct RouteAttempt<'a> {
    message: &'a pb::FederationMessage,
    /// This proxy's id.
    routed_by: &'a str,
    /// The caller's metadata, for its trace context.
    incoming: &'a HeaderMap,
    span: Option<&'a tracing::Span>,
    deadline: Option<Instant>,
    /// The largest reply accepted from the node.
    max_message_bytes: u32,
    /// The proxy's message size limit, for services whose policy sets none.
    default_max_message_bytes: u32,
    /// The message's slot under the limit of the fallback service it went on to, if any.
    fallback_admission: Option<concurrency::ConcurrencyPermit>,
}

impl Router {
    /// Check the message, find its route, then deliver it — once per idempotency key;
    /// the reply comes with the routing decision.
    async fn route(
        &self,
        request: Request<pb::RouteMessageRequest>,
    ) -> Result<pb::RouteMessageResponse, RequestError> {
        let client = request.remote_addr();
        let (metadata, _, body) = request.into_parts();
        let incoming = metadata.into_headers();
        let message = body
            .message
            .ok_or_else(|| RequestError::BadRequest("message is required".into()))?;
        if message.target_service.is_empty() {
            return Err(RequestError::BadRequest(
                "message.target_service is required".into(),
            ));
        }
        if message.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
            return Err(RequestError::IdempotencyKeyTooLong {
                length: message.idempotency_key.len(),
                max: MAX_IDEMPOTENCY_KEY_BYTES,
            });
        }
        let table = self.table.current().ok_or_else(|| RequestError::NoTable {
            proxy: self.identity.id.clone(),
        })?;
        let route =
            table
                .service(&message.target_service)
                .ok_or_else(|| RequestError::UnknownService {
                    service: message.target_service.clone(),
                    proxy: self.identity.id.clone(),
                    federation: table.data.federation.clone(),
                    version: table.version(),
                })?;
        route.rate_limit.admit(&incoming)?;
        let deadline = route.deadline(&incoming)?;
        let limit = within_size_limit(route, &message, self.max_message_bytes)?;
        let _admission =
            concurrency::admit(route, Priority::of_message(&message, &incoming)?, deadline).await?;
        let delivery = Delivery {
            table: &table,
            route,
            message: &message,
            incoming: &incoming,
            client,
            deadline,
            max_message_bytes: limit,
        };
        match self.dedup_key(&incoming, &message, route) {
            None => self.deliver(delivery).await,
            Some(key) => self.deliver_once(delivery, &key).await,
        }
    }

    /// The message's identity for deduplication: its idempotency key, else its id when
    /// the service's ids are unique; scoped by the caller's credential (the
    /// `authorization` metadata, hashed), if any. The service scope is the route's own
    /// cache.
    fn dedup_key(
        &self,
        incoming: &HeaderMap,
        message: &pb::FederationMessage,
        route: &ServiceRoute,
    ) -> Option<DedupKey> {
        let key = if !message.idempotency_key.is_empty() {
            &message.idempotency_key
        } else if route.policy.limits.ids_are_unique && !message.id.is_empty() {
            &message.id
        } else {
            return None;
        };
        let caller = incoming
            .get(http::header::AUTHORIZATION)
            .map_or(0, |credential| self.callers.hash_one(credential.as_bytes()));
        Some(DedupKey {
            caller,
            key: key.clone(),
        })
    }

    /// Delivers a keyed message unless a call with its key is in flight (then waits for
    /// that call's outcome) or answered within the TTL (then replays the answer).
    async fn deliver_once(
        &self,
        delivery: Delivery<'_>,
        key: &DedupKey,
    ) -> Result<pb::RouteMessageResponse, RequestError> {
        let route = delivery.route;
        loop {
            let joined = match route.dedup.claim(key) {
                Claim::Replayed(answer) => return Ok(answer),
                Claim::Joined(joined) => joined,
                Claim::First(first) => {
                    return match self.deliver(delivery).await {
                        Ok(answer) => {
                            first.finish(Ok(&answer), answer.encoded_len() as u64);
                            Ok(answer)
                        }
                        Err(error) => {
                            // Converted here so the waiters get the very status.
                            let status = error.into_status();
                            first.finish(Err(&status), 0);
                            Err(RequestError::Deduplicated(status))
                        }
                    };
                }
            };
            let outcome = match delivery.deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, joined.wait())
                    .await
                    .map_err(|_| RequestError::JoinDeadlineExceeded {
                        service: route.name.clone(),
                    })?,
                None => joined.wait().await,
            };
            match outcome {
                Some(Ok(answer)) => return Ok(answer),
                Some(Err(status)) => return Err(RequestError::Deduplicated(status)),
                // The first call went away without an outcome: try to be the first.
                None => continue,
            }
        }
    }

    /// The attempts; the reply comes with the routing decision.
    async fn deliver(
        &self,
        delivery: Delivery<'_>,
    ) -> Result<pb::RouteMessageResponse, RequestError> {
        let Delivery {
            table,
            route,
            message,
            incoming,
            client,
            deadline,
            max_message_bytes,
        } = delivery;
        let span = hop::span("route", &route.name, incoming);
        // The client's address is a key only for consistent hashing, and only when the
        // message brings none.
        let client_key = (route.policy.algorithm == Algorithm::ConsistentHash
            && message.affinity_key.is_empty())
        .then(|| client.map(|a| a.ip().to_string()))
        .flatten();
        let affinity = if message.affinity_key.is_empty() {
            client_key.as_deref().map(str::as_bytes)
        } else {
            Some(message.affinity_key.as_bytes())
        };
        let candidates = self.candidates(table, route, message, affinity)?;
        let attempt = RouteAttempt {
            message,
            routed_by: &self.identity.id,
            incoming,
            span: span.as_ref(),
            deadline,
            max_message_bytes,
            default_max_message_bytes: self.max_message_bytes,
            fallback_admission: None,
        };
        let driver = RetryDriver { route, deadline };
        let fallbacks = RouteFallbacks {
            router: self,
            table,
            message,
            affinity,
        };
        let chain = (!route.policy.fallback_services.is_empty())
            .then_some(&fallbacks as &dyn FallbackChain<'_>);
        let delivered = driver
            .run_with_fallbacks(candidates, attempt, chain)
            .await?;
        let endpoint = delivered.endpoint;
        let alternatives = delivered
            .passed_over
            .map(|other| pb::Alternative {
                node_id: other.node.id.clone(),
                region: other.node.region.clone(),
                zone: other.node.zone.clone(),
                reason: format!(
                    "not chosen: {} ({} in flight)",
                    delivered.reason,
                    other.in_flight()
                ),
            })
            .into_iter()
            .collect();
        let reason = if message.target_region.is_empty() {
            delivered.reason.to_owned()
        } else {
            format!(
                "{} in the requested region {}",
                delivered.reason, message.target_region
            )
        };
        let decision = pb::RoutingDecision {
            target_node: endpoint.node.id.clone(),
            target_region: endpoint.node.region.clone(),
            target_zone: endpoint.node.zone.clone(),
            algorithm: pb::Algorithm::from(route.policy.algorithm).into(),
            attempts: delivered.attempts,
            reason,
            alternatives,
            table_version: table.version(),
            proxy_id: self.identity.id.clone(),
            // Named only when a fallback served: the usual call allocates nothing for it.
            fallback_service: if delivered.fallback_depth > 0 {
                delivered.route.name.clone()
            } else {
                String::new()
            },
            fallback_depth: delivered.fallback_depth,
        };
        Ok(pb::RouteMessageResponse {
            reply: Some(delivered.answer),
            decision: Some(decision),
        })
    }

    /// Where the message may go. A named node is the only candidate; otherwise the ready
    /// endpoints of the requested region, or of the service (in the proxy's region unless
    /// the message allows global routing), through a balancer.
    fn candidates<'a>(
        &'a self,
        table: &'a ProxyTable,
        route: &'a ServiceRoute,
        message: &'a pb::FederationMessage,
        affinity: Option<&'a [u8]>,
    ) -> Result<Candidates<'a>, RequestError> {
        let ctx = PickContext { affinity };
        if !message.target_node.is_empty() {
            let endpoint =
                table
                    .endpoint(&message.target_node)
                    .ok_or_else(|| RequestError::UnknownNode {
                        node: message.target_node.clone(),
                    })?;
            if !endpoint.node.serves(&route.name) {
                return Err(RequestError::NodeDoesNotServe {
                    node: message.target_node.clone(),
                    service: route.name.clone(),
                });
            }
            self.check_region(&endpoint.node.region, message)?;
            if !endpoint.node.status.is_routable() {
                return Err(RequestError::NodeNotRoutable {
                    node: message.target_node.clone(),
                    status: endpoint.node.status.to_string(),
                    reason: endpoint.node.status_reason.clone(),
                });
            }
            return Ok(Candidates::Named(endpoint));
        }
        if !message.target_region.is_empty() {
            let region = message.target_region.as_str();
            if !table.data.regions.contains_key(region) {
                return Err(RequestError::UnknownRegion {
                    region: region.to_owned(),
                });
            }
            self.check_region(region, message)?;
        }
        Ok(self.balanced(route, message, ctx))
    }

    /// The ready endpoints of `route` the message may go to: in its requested region
    /// (checked), or the service's (in the proxy's region unless the message allows
    /// global routing), through a balancer.
    fn balanced<'a>(
        &'a self,
        route: &'a ServiceRoute,
        message: &'a pb::FederationMessage,
        ctx: PickContext<'a>,
    ) -> Candidates<'a> {
        if !message.target_region.is_empty() {
            let region = message.target_region.as_str();
            // A region without a usable node has no balancer: the driver finds none and
            // says so, or falls back.
            static NONE_USABLE: LazyLock<LeastConnections> =
                LazyLock::new(|| LeastConnections::new(Vec::new()));
            return Candidates::Balanced {
                balancer: route.by_region.get(region).unwrap_or(&NONE_USABLE),
                ctx,
                scope: Scope::TargetRegion(region),
            };
        }
        if message.global_routing {
            Candidates::Balanced {
                balancer: &*route.all,
                ctx,
                scope: Scope::Federation,
            }
        } else {
            Candidates::Balanced {
                balancer: &*route.local,
                ctx,
                scope: Scope::HomeRegion(&self.identity.region),
            }
        }
    }

    fn check_region(
        &self,
        region: &str,
        message: &pb::FederationMessage,
    ) -> Result<(), RequestError> {
        if region != self.identity.region && !message.global_routing {
            return Err(RequestError::OutsideRegion {
                region: region.to_owned(),
                home: self.identity.region.clone(),
            });
        }
        Ok(())
    }
}

/// The message size limit of `route` (its policy's, else `default`), when `message` is
/// within it; else the refusal.
fn within_size_limit(
    route: &ServiceRoute,
    message: &pb::FederationMessage,
    default: u32,
) -> Result<u32, RequestError> {
    let limit = route.policy.limits.effective_max_message_bytes(default);
    let length = message.encoded_len();
    if length > limit as usize {
        return Err(RequestError::message_too_large(
            route.name.clone(),
            TooLarge {
                direction: Direction::Request,
                length: u32::try_from(length).unwrap_or(u32::MAX),
                limit,
            },
        ));
    }
    Ok(limit)
}

/// The fallback services of a message: routes of the table it was routed with, their
/// nodes looked for where the message allows (its target region, the proxy's region, or
/// anywhere).
struct RouteFallbacks<'a> {
    router: &'a Router,
    table: &'a ProxyTable,
    message: &'a pb::FederationMessage,
    affinity: Option<&'a [u8]>,
}

impl<'a> FallbackChain<'a> for RouteFallbacks<'a> {
    fn link(&'a self, service: &str) -> Option<(&'a ServiceRoute, Candidates<'a>)> {
        let route = self.table.service(service)?;
        let ctx = PickContext {
            affinity: self.affinity,
        };
        let candidates = self.router.balanced(route, self.message, ctx);
        Some((route, candidates))
    }
}

/// One message on its way, once checked and routed.
#[derive(Clone, Copy)]
struct Delivery<'a> {
    table: &'a ProxyTable,
    route: &'a ServiceRoute,
    message: &'a pb::FederationMessage,
    incoming: &'a HeaderMap,
    client: Option<std::net::SocketAddr>,
    deadline: Option<Instant>,
    max_message_bytes: u32,
}

// === impl RouteAttempt ===

impl Attempt for RouteAttempt<'_> {
    type Answer = pb::HandleMessageResponse;

    /// The fallback service's rate limit (the caller's tier of it), message size limit
    /// and concurrency limit (a slot now, no queue), held until the reply.
    fn admit_fallback(&mut self, route: &ServiceRoute) -> Result<(), RequestError> {
        // The slot of an earlier fallback of the chain is given back first.
        self.fallback_admission = None;
        route.rate_limit.admit(self.incoming)?;
        within_size_limit(route, self.message, self.default_max_message_bytes)?;
        let priority = Priority::of_message(self.message, self.incoming)?;
        self.fallback_admission = concurrency::admit_fallback(route, priority)?;
        Ok(())
    }

    /// One attempt: the node's HandleMessage over the endpoint's connection, accounted.
    async fn send(
        &mut self,
        route: &ServiceRoute,
        endpoint: &Arc<Endpoint>,
        number: u32,
    ) -> Result<pb::HandleMessageResponse, Failure<pb::HandleMessageResponse>> {
        let hop = &*self;
        let mut handler = MessageHandlerClient::with_origin(
            EndpointChannel(Arc::clone(&endpoint.connection)),
            endpoint.origin(),
        )
        .max_decoding_message_size(hop.max_message_bytes as usize);
        let mut headers = HeaderMap::new();
        hop::pass_deadline(hop.deadline, &mut headers);
        hop::pass_trace(hop.span, hop.incoming, &mut headers);
        let outgoing = Request::from_parts(
            MetadataMap::from_headers(headers),
            Default::default(),
            pb::HandleMessageRequest {
                message: Some(hop.message.clone()),
                routed_by: hop.routed_by.to_owned(),
                attempt: number,
            },
        );
        let metrics = route.metrics_of(&endpoint.node.id);
        let started = Instant::now();
        let answer = {
            let _in_flight = (endpoint.start_request(), metrics.load.start());
            handler.handle_message(outgoing).await
        };
        let elapsed = started.elapsed();
        let status = match answer {
            Ok(reply) => {
                if let Some(utilization) = metrics.load.observe_orca_metadata(reply.metadata()) {
                    endpoint.reported.record(utilization, endpoint.in_flight());
                }
                endpoint.ewma.observe(elapsed);
                endpoint.record_success();
                metrics.record(0, elapsed);
                return Ok(reply.into_inner());
            }
            Err(status) => status,
        };
        if let Some(utilization) = metrics.load.observe_orca_metadata(status.metadata()) {
            endpoint.reported.record(utilization, endpoint.in_flight());
        }
        let error = match NoAnswer::behind(&status) {
            Some(no_answer) => RequestError::Upstream {
                node: endpoint.node.id.clone(),
                service: route.name.clone(),
                attempts: number,
                reason: no_answer.to_string(),
            },
            None if hop::node_ended_at_deadline(status.code(), hop.deadline) => {
                RequestError::DeadlineExceeded {
                    node: endpoint.node.id.clone(),
                    service: route.name.clone(),
                    attempts: number,
                }
            }
            None => RequestError::Answered(status),
        };
        let code = error.code();
        if code == Code::Unavailable {
            route.record_failure(endpoint);
        } else {
            endpoint.record_success();
        }
        metrics.record(code as i32, elapsed);
        Err(Failure {
            error,
            answer: None,
            // Idempotent by contract: any node may take the message once one is down,
            // overloaded, or never got it.
            retry_safe: code == Code::Unavailable,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meridian_proto::v1::message_handler_server::{MessageHandler, MessageHandlerServer};
    use meridian_shared::domain::{
        Algorithm, GeoPoint, Node, Region, ServicePolicy, TimeoutPolicy,
    };

    use super::*;
    use crate::endpoint::UpstreamSettings;
    use crate::table::{TableData, TableSource};

    const SERVICE: &str = "demo.v1.Echo";
    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A node that answers every message as `us-1`, echoing the `traceparent` and
    /// `grpc-timeout` it received in the reply's headers; or, `hanging`, never answers.
    struct Answering {
        hanging: bool,
    }

    #[tonic::async_trait]
    impl MessageHandler for Answering {
        async fn handle_message(
            &self,
            request: Request<pb::HandleMessageRequest>,
        ) -> Result<Response<pb::HandleMessageResponse>, Status> {
            if self.hanging {
                std::future::pending::<()>().await;
            }
            let headers = ["traceparent", "grpc-timeout"]
                .into_iter()
                .filter_map(|name| {
                    let value = request.metadata().get(name)?.to_str().ok()?;
                    Some((name.to_owned(), value.to_owned()))
                })
                .collect();
            let message = request.into_inner().message.unwrap_or_default();
            Ok(Response::new(pb::HandleMessageResponse {
                message_id: message.id,
                node_id: "us-1".into(),
                headers,
                ..Default::default()
            }))
        }
    }

    async fn node_serving(handler: Answering) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MessageHandlerServer::new(handler))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    async fn answering_node() -> String {
        node_serving(Answering { hanging: false }).await
    }

    /// An address that refuses connections: a socket bound but not listening, kept by the
    /// caller so the port cannot be handed to another listener (a port merely released
    /// can be, and then the "dead" node answers).
    fn dead_address() -> (String, tokio::net::TcpSocket) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        (socket.local_addr().unwrap().to_string(), socket)
    }

    fn region(name: &str, latitude: f64, longitude: f64) -> (String, Region) {
        let region = Region {
            name: name.to_owned(),
            location: GeoPoint {
                latitude,
                longitude,
            },
            ..Default::default()
        };
        (name.to_owned(), region)
    }

    fn node(id: &str, region: &str, zone: &str, address: &str) -> (String, Node) {
        let node = Node {
            id: id.to_owned(),
            address: address.to_owned(),
            region: region.to_owned(),
            zone: zone.to_owned(),
            services: vec![SERVICE.to_owned()],
            ..Default::default()
        };
        (id.to_owned(), node)
    }

    /// A router in eu-west-a over `nodes`, with `policy` for the service.
    fn router(nodes: Vec<(String, Node)>, policy: ServicePolicy) -> Router {
        let data = TableData {
            version: 1,
            federation: "prod".into(),
            regions: [
                region("eu-west", 53.35, -6.26),
                region("us-east", 38.9, -77.04),
            ]
            .into(),
            nodes: nodes.into_iter().collect(),
            services: [(SERVICE.to_owned(), policy)].into(),
            ..Default::default()
        };
        let identity = ProxyIdentity {
            id: "proxy-eu".into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
        };
        let table = ProxyTable::build(
            data,
            &identity,
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let handle = TableHandle::default();
        handle.store(table);
        Router::new(handle, Arc::new(identity), 4 * 1024 * 1024)
    }

    fn policy() -> ServicePolicy {
        ServicePolicy {
            name: SERVICE.into(),
            ..Default::default()
        }
    }

    fn request(message: pb::FederationMessage) -> Request<pb::RouteMessageRequest> {
        Request::new(pb::RouteMessageRequest {
            message: Some(pb::FederationMessage {
                id: "m1".into(),
                target_service: SERVICE.into(),
                ..message
            }),
        })
    }

    #[tokio::test]
    async fn a_retry_goes_to_a_node_the_call_has_not_tried() {
        // The proxy's region's nodes refuse connections but their breakers have not
        // opened (the first calls after a loss): with three attempts, the call must still
        // reach us-1 instead of spending its retries on the node that just failed.
        let ((eu1, _eu1_socket), (eu2, _eu2_socket)) = (dead_address(), dead_address());
        let us1 = answering_node().await;
        let router = router(
            vec![
                node("eu-1", "eu-west", "eu-west-a", &eu1),
                node("eu-2", "eu-west", "eu-west-b", &eu2),
                node("us-1", "us-east", "us-east-a", &us1),
            ],
            ServicePolicy {
                algorithm: Algorithm::Geographic,
                ..policy()
            },
        );
        let routed = router
            .route_message(request(pb::FederationMessage {
                global_routing: true,
                ..Default::default()
            }))
            .await
            .expect("us-1 can take the message")
            .into_inner();
        let decision = routed.decision.unwrap();
        assert_eq!(decision.target_node, "us-1");
        assert_eq!(
            decision.attempts, 3,
            "eu-1 (the proxy's zone), then eu-2 (its region), then us-1"
        );
    }

    #[tokio::test]
    async fn target_region_passes_over_a_node_whose_breaker_is_open() {
        let (dead, _socket) = dead_address();
        let live = answering_node().await;
        // The breaker stays open for a minute: a slow run must not see it half-open.
        let mut held_open = policy();
        held_open.outlier.base_ejection_ms = 60_000;
        held_open.outlier.max_ejection_ms = 60_000;
        let router = router(
            vec![
                node("us-0", "us-east", "us-east-a", &dead),
                node("us-1", "us-east", "us-east-a", &live),
            ],
            held_open,
        );
        let table = router.table.current().unwrap();
        let broken = table.endpoint("us-0").unwrap();
        for _ in 0..crate::endpoint::BreakerSettings::default().threshold {
            broken.breaker.record_failure();
        }
        for _ in 0..20 {
            let routed = router
                .route_message(request(pb::FederationMessage {
                    target_region: "us-east".into(),
                    global_routing: true,
                    ..Default::default()
                }))
                .await
                .expect("us-1 is ready")
                .into_inner();
            let decision = routed.decision.unwrap();
            assert_eq!(decision.target_node, "us-1");
            assert_eq!(decision.attempts, 1, "no attempt on the broken node");
        }
    }

    #[tokio::test]
    async fn the_callers_trace_and_remaining_deadline_reach_the_node() {
        let live = answering_node().await;
        let router = router(vec![node("eu-1", "eu-west", "eu-west-a", &live)], policy());
        let mut call = request(pb::FederationMessage::default());
        call.metadata_mut()
            .insert("traceparent", TRACEPARENT.parse().unwrap());
        call.metadata_mut()
            .insert("grpc-timeout", "5S".parse().unwrap());
        let reply = router
            .route_message(call)
            .await
            .expect("eu-1 answers")
            .into_inner()
            .reply
            .unwrap();
        assert_eq!(reply.headers["traceparent"], TRACEPARENT);
        let timeout = reply.headers["grpc-timeout"]
            .parse::<http::HeaderValue>()
            .unwrap();
        let passed_on = crate::forward::timeout::parse(&timeout).unwrap();
        assert!(
            passed_on <= Duration::from_secs(5) && passed_on > Duration::from_secs(4),
            "{passed_on:?}"
        );
    }

    #[tokio::test]
    async fn the_services_default_timeout_ends_a_message_no_node_answers() {
        let hanging = node_serving(Answering { hanging: true }).await;
        let router = router(
            vec![node("eu-1", "eu-west", "eu-west-a", &hanging)],
            ServicePolicy {
                timeout: TimeoutPolicy {
                    default_timeout_ms: 200,
                    max_timeout_ms: 0,
                },
                ..policy()
            },
        );
        let status = router
            .route_message(request(pb::FederationMessage::default()))
            .await
            .expect_err("eu-1 never answers");
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("node eu-1"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn bad_messages_are_refused_with_what_to_fix() {
        let live = answering_node().await;
        let router = router(vec![node("eu-1", "eu-west", "eu-west-a", &live)], policy());
        let refused = |message| async { router.route_message(request(message)).await.unwrap_err() };
        let status = refused(pb::FederationMessage {
            target_node: "us-9".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(status.code(), Code::NotFound);
        assert!(
            status.message().contains("\"us-9\""),
            "{}",
            status.message()
        );
        let status = refused(pb::FederationMessage {
            target_region: "us-east".into(),
            ..Default::default()
        })
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("set global_routing"),
            "{}",
            status.message()
        );
        let status = refused(pb::FederationMessage {
            target_region: "us-east".into(),
            global_routing: true,
            ..Default::default()
        })
        .await;
        assert_eq!(status.code(), Code::Unavailable, "us-east has no node");
        assert!(
            status.message().contains("in the requested region us-east"),
            "{}",
            status.message()
        );
    }
}
