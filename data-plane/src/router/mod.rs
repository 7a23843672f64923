//! `meridian.v1.MessageRouter/RouteMessage`: route one federation message to a node of
//! its target service and return the node's reply with the routing decision. The node is
//! the requested one (`target_node`), the least loaded in the requested region
//! (`target_region`), or the service balancer's pick — among the proxy's own region only
//! unless the message allows global routing. The call goes over the endpoint's pooled
//! HTTP/2 connection, so RouteMessage and transparent traffic share load accounting.

mod upstream;

use std::sync::Arc;

use meridian_proto::v1 as pb;
use meridian_proto::v1::message_handler_client::MessageHandlerClient;
use meridian_proto::v1::message_router_server::MessageRouter;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use self::upstream::EndpointChannel;
use crate::balance::{Pick, PickContext};
use crate::endpoint::Endpoint;
use crate::forward::timeout;
use crate::retry::{self, TriedEndpoints};
use crate::table::{ProxyIdentity, ProxyTable, ServiceRoute, TableHandle};

pub struct Router {
    table: TableHandle,
    identity: Arc<ProxyIdentity>,
}

impl Router {
    pub fn new(table: TableHandle, identity: Arc<ProxyIdentity>) -> Self {
        Router { table, identity }
    }
}

/// The node chosen for a message and why.
struct Choice {
    endpoint: Arc<Endpoint>,
    /// Its index among the endpoints the call chooses from, remembered so a retry avoids
    /// it; `None` for a node the message names (such a call is never retried).
    index: Option<usize>,
    reason: String,
    alternatives: Vec<pb::Alternative>,
}

#[tonic::async_trait]
impl MessageRouter for Router {
    async fn route_message(
        &self,
        request: Request<pb::RouteMessageRequest>,
    ) -> Result<Response<pb::RouteMessageResponse>, Status> {
        let budget = request.metadata().get("grpc-timeout").and_then(|v| {
            let value = http::HeaderValue::from_bytes(v.as_bytes()).ok()?;
            timeout::parse(&value)
        });
        let client = request.remote_addr().map(|a| a.ip().to_string());
        let message = request
            .into_inner()
            .message
            .ok_or_else(|| Status::invalid_argument("message is required"))?;
        if message.target_service.is_empty() {
            return Err(Status::invalid_argument(
                "message.target_service is required",
            ));
        }
        let table = self.table.current().ok_or_else(|| {
            Status::unavailable(format!(
                "proxy {} has no routing table yet",
                self.identity.id
            ))
        })?;
        let route = table.service(&message.target_service).cloned().ok_or_else(|| {
            Status::unimplemented(format!(
                "service {} is not in the routing table of proxy {} (version {}): no node serves it",
                message.target_service,
                self.identity.id,
                table.version()
            ))
        })?;
        route.retry_budget.deposit();
        let max_attempts = if message.target_node.is_empty() {
            route.policy.retry.effective_max_attempts()
        } else {
            1
        };
        let deadline = budget.map(|b| Instant::now() + b);
        let mut attempt = 1;
        let mut tried = TriedEndpoints::default();
        let (choice, reply) = loop {
            let choice = self.choose(&table, &route, &message, client.as_deref(), &tried)?;
            let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match self
                .call(&route, &choice.endpoint, &message, attempt, remaining)
                .await
            {
                Ok(reply) => break (choice, reply),
                Err(status) => {
                    // RouteMessage is idempotent by contract: UNAVAILABLE (the node is
                    // down, overloaded or never got the call) may go to another node.
                    let retry = status.code() == tonic::Code::Unavailable
                        && attempt < max_attempts
                        && deadline.is_none_or(|d| Instant::now() < d)
                        && route.retry_budget.try_withdraw();
                    if !retry {
                        return Err(status);
                    }
                    tracing::debug!(node = %choice.endpoint.node.id, %status, attempt, "retrying RouteMessage on another node");
                    let pause = retry::backoff(&route.policy.retry, attempt);
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.min(Instant::now() + pause)).await,
                        None => tokio::time::sleep(pause).await,
                    }
                    if let Some(index) = choice.index {
                        tried.insert(index);
                    }
                    attempt += 1;
                }
            }
        };
        let endpoint = choice.endpoint;
        let decision = pb::RoutingDecision {
            target_node: endpoint.node.id.clone(),
            target_region: endpoint.node.region.clone(),
            target_zone: endpoint.node.zone.clone(),
            algorithm: pb::Algorithm::from(route.policy.algorithm).into(),
            attempts: attempt,
            reason: choice.reason,
            alternatives: choice.alternatives,
            table_version: table.version(),
            proxy_id: self.identity.id.clone(),
        };
        Ok(Response::new(pb::RouteMessageResponse {
            reply: Some(reply),
            decision: Some(decision),
        }))
    }
}

impl Router {
    /// One attempt: the node's HandleMessage over the endpoint's connection, accounted.
    async fn call(
        &self,
        route: &ServiceRoute,
        endpoint: &Arc<Endpoint>,
        message: &pb::FederationMessage,
        attempt: u32,
        budget: Option<std::time::Duration>,
    ) -> Result<pb::HandleMessageResponse, Status> {
        let mut handler = MessageHandlerClient::with_origin(
            EndpointChannel(Arc::clone(endpoint)),
            endpoint.origin(),
        );
        let mut outgoing = Request::new(pb::HandleMessageRequest {
            message: Some(message.clone()),
            routed_by: self.identity.id.clone(),
            attempt,
        });
        if let Some(budget) = budget {
            outgoing.set_timeout(budget);
        }
        let metrics = route.metrics_of(&endpoint.node.id);
        let started = Instant::now();
        let answer = {
            let _in_flight = (endpoint.start_request(), metrics.load.start());
            match budget {
                Some(budget) => tokio::time::timeout(budget, handler.handle_message(outgoing))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(format!(
                            "node {} did not answer in time",
                            endpoint.node.id
                        )))
                    }),
                None => handler.handle_message(outgoing).await,
            }
        };
        let elapsed = started.elapsed();
        match answer {
            Ok(reply) => {
                metrics.load.observe_orca_metadata(reply.metadata());
                endpoint.ewma.observe(elapsed);
                endpoint.record_success();
                metrics.record(0, elapsed);
                Ok(reply.into_inner())
            }
            Err(status) => {
                metrics.load.observe_orca_metadata(status.metadata());
                if status.code() == tonic::Code::Unavailable {
                    route.record_failure(endpoint);
                } else {
                    endpoint.record_success();
                }
                metrics.record(status.code() as i32, elapsed);
                Err(status)
            }
        }
    }

    /// The node for the next attempt. Endpoints in `tried` (this call already failed on
    /// them) are passed over while another usable one remains: their breakers may not have
    /// opened yet, and a retry to the node that just failed would spend an attempt. Its
    /// indices are those of [`Choice::index`], which for one message always refer to the
    /// same list (the message's fields choose it).
    fn choose(
        &self,
        table: &ProxyTable,
        route: &ServiceRoute,
        message: &pb::FederationMessage,
        client: Option<&str>,
        tried: &TriedEndpoints,
    ) -> Result<Choice, Status> {
        let home = &self.identity.region;
        if !message.target_node.is_empty() {
            let endpoint = table.endpoint(&message.target_node).ok_or_else(|| {
                Status::not_found(format!(
                    "target_node {:?} is not in the routing table",
                    message.target_node
                ))
            })?;
            if !endpoint.node.serves(&route.name) {
                return Err(Status::invalid_argument(format!(
                    "target_node {:?} does not serve {}",
                    message.target_node, route.name
                )));
            }
            self.check_region(&endpoint.node.region, message)?;
            if !endpoint.node.status.is_routable() {
                return Err(Status::unavailable(format!(
                    "target_node {:?} is {} ({})",
                    message.target_node, endpoint.node.status, endpoint.node.status_reason
                )));
            }
            return Ok(Choice {
                endpoint: Arc::clone(endpoint),
                index: None,
                reason: "the message named this node".into(),
                alternatives: Vec::new(),
            });
        }
        if !message.target_region.is_empty() {
            if !table.data.regions.contains_key(&message.target_region) {
                return Err(Status::not_found(format!(
                    "target_region {:?} is not in the federation",
                    message.target_region
                )));
            }
            self.check_region(&message.target_region, message)?;
            let (index, endpoint) = route
                .all
                .endpoints()
                .iter()
                .enumerate()
                .filter(|(_, e)| e.node.region == message.target_region)
                .min_by_key(|&(i, e)| (tried.contains(i), e.in_flight()))
                .ok_or_else(|| {
                    Status::unavailable(format!(
                        "no usable node of {} in region {}",
                        route.name, message.target_region
                    ))
                })?;
            return Ok(Choice {
                endpoint: Arc::clone(endpoint),
                index: Some(index),
                reason: format!(
                    "fewest in-flight requests in the requested region {}",
                    message.target_region
                ),
                alternatives: Vec::new(),
            });
        }
        let balancer = if message.global_routing {
            &route.all
        } else {
            &route.local
        };
        let affinity = if message.affinity_key.is_empty() {
            client.map(str::as_bytes)
        } else {
            Some(message.affinity_key.as_bytes())
        };
        let ctx = PickContext { affinity };
        let pick = balancer
            .pick_excluding(&ctx, &|i| tried.contains(i))
            .or_else(|| balancer.pick(&ctx));
        let Some(pick) = pick else {
            let scope = if message.global_routing {
                "anywhere in the federation".to_owned()
            } else {
                format!("in region {home} (set global_routing to use other regions)")
            };
            return Err(Status::unavailable(format!(
                "no usable node of {} {scope}",
                route.name
            )));
        };
        Ok(explain(balancer.endpoints(), pick))
    }

    fn check_region(&self, region: &str, message: &pb::FederationMessage) -> Result<(), Status> {
        if region != self.identity.region && !message.global_routing {
            return Err(Status::invalid_argument(format!(
                "region {region} is outside this proxy's region {}; set global_routing to route there",
                self.identity.region
            )));
        }
        Ok(())
    }
}

fn explain(endpoints: &[Arc<Endpoint>], pick: Pick) -> Choice {
    let alternatives = pick
        .compared_with
        .filter(|i| *i != pick.index)
        .and_then(|i| endpoints.get(i))
        .map(|other| pb::Alternative {
            node_id: other.node.id.clone(),
            region: other.node.region.clone(),
            zone: other.node.zone.clone(),
            reason: format!(
                "not chosen: {} ({} in flight)",
                pick.reason,
                other.in_flight()
            ),
        })
        .into_iter()
        .collect();
    Choice {
        endpoint: Arc::clone(&endpoints[pick.index]),
        index: Some(pick.index),
        reason: pick.reason.to_owned(),
        alternatives,
    }
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::message_handler_server::{MessageHandler, MessageHandlerServer};
    use meridian_shared::domain::{Algorithm, GeoPoint, Node, Region, ServicePolicy};

    use super::*;
    use crate::endpoint::UpstreamTls;
    use crate::table::{TableData, TableSource};

    const SERVICE: &str = "demo.v1.Echo";

    /// A node that answers every message as `us-1`.
    struct Answering;

    #[tonic::async_trait]
    impl MessageHandler for Answering {
        async fn handle_message(
            &self,
            request: Request<pb::HandleMessageRequest>,
        ) -> Result<Response<pb::HandleMessageResponse>, Status> {
            let message = request.into_inner().message.unwrap_or_default();
            Ok(Response::new(pb::HandleMessageResponse {
                message_id: message.id,
                node_id: "us-1".into(),
                ..Default::default()
            }))
        }
    }

    async fn answering_node() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(MessageHandlerServer::new(Answering))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    /// An address nothing listens on: connections to it are refused.
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

    /// A proxy in eu-west-a whose region's two nodes (one in its zone) are down, with
    /// breakers still closed, and a live node in us-east; geographic routing.
    async fn proxy_whose_region_is_down() -> (Router, [tokio::net::TcpSocket; 2]) {
        let ((eu1, eu1_socket), (eu2, eu2_socket)) = (dead_address(), dead_address());
        let us1 = answering_node().await;
        let data = TableData {
            version: 1,
            federation: "prod".into(),
            regions: [
                region("eu-west", 53.35, -6.26),
                region("us-east", 38.9, -77.04),
            ]
            .into(),
            nodes: [
                node("eu-1", "eu-west", "eu-west-a", &eu1),
                node("eu-2", "eu-west", "eu-west-b", &eu2),
                node("us-1", "us-east", "us-east-a", &us1),
            ]
            .into(),
            services: [(
                SERVICE.to_owned(),
                ServicePolicy {
                    name: SERVICE.into(),
                    algorithm: Algorithm::Geographic,
                    ..Default::default()
                },
            )]
            .into(),
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
            &UpstreamTls::default(),
        );
        let handle = TableHandle::default();
        handle.store(table);
        (
            Router::new(handle, Arc::new(identity)),
            [eu1_socket, eu2_socket],
        )
    }

    #[tokio::test]
    async fn a_retry_goes_to_a_node_the_call_has_not_tried() {
        // The region's nodes refuse connections but their breakers have not opened (the
        // first calls after a loss): with three attempts, the call must still reach us-1
        // instead of spending its retries on the node that just failed.
        let (router, _dead_sockets) = proxy_whose_region_is_down().await;
        let request = || {
            Request::new(pb::RouteMessageRequest {
                message: Some(pb::FederationMessage {
                    id: "m1".into(),
                    target_service: SERVICE.into(),
                    global_routing: true,
                    ..Default::default()
                }),
            })
        };
        let routed = router
            .route_message(request())
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
}
