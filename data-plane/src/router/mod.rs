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
use crate::retry;
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
        let mut tried: Vec<String> = Vec::new();
        let (choice, reply) = loop {
            let choice =
                self.choose_avoiding(&table, &route, &message, client.as_deref(), &tried)?;
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
                    tried.push(choice.endpoint.node.id.clone());
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
        let started = Instant::now();
        let answer = {
            let _in_flight = endpoint.start_request();
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
        let metrics = route.metrics_of(&endpoint.node.id);
        match answer {
            Ok(reply) => {
                endpoint.ewma.observe(elapsed);
                endpoint.record_success();
                metrics.record(0, elapsed);
                Ok(reply.into_inner())
            }
            Err(status) => {
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

    /// Like [`Router::choose`], preferring a node not in `tried` when there is one.
    fn choose_avoiding(
        &self,
        table: &ProxyTable,
        route: &ServiceRoute,
        message: &pb::FederationMessage,
        client: Option<&str>,
        tried: &[String],
    ) -> Result<Choice, Status> {
        let mut choice = self.choose(table, route, message, client)?;
        for _ in 0..5 {
            if !tried.contains(&choice.endpoint.node.id) {
                break;
            }
            choice = self.choose(table, route, message, client)?;
        }
        Ok(choice)
    }

    fn choose(
        &self,
        table: &ProxyTable,
        route: &ServiceRoute,
        message: &pb::FederationMessage,
        client: Option<&str>,
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
            let in_region: Vec<&Arc<Endpoint>> = route
                .all
                .endpoints()
                .iter()
                .filter(|e| e.node.region == message.target_region)
                .collect();
            let endpoint = in_region
                .iter()
                .min_by_key(|e| e.in_flight())
                .ok_or_else(|| {
                    Status::unavailable(format!(
                        "no usable node of {} in region {}",
                        route.name, message.target_region
                    ))
                })?;
            return Ok(Choice {
                endpoint: Arc::clone(endpoint),
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
        let Some(pick) = balancer.pick(&PickContext { affinity }) else {
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
        reason: pick.reason.to_owned(),
        alternatives,
    }
}
