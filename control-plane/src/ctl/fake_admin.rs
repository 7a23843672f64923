//! A scripted Admin server for testing `meridianctl` end to end over a real loopback
//! socket: it answers from fixed fixtures and records each call (method, `authorization`
//! header, request) so tests can check what the CLI sent. RPCs the tests do not need
//! answer UNIMPLEMENTED.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use meridian_proto::v1::{self as pb, admin_server::AdminServer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// One recorded call.
struct Call {
    method: &'static str,
    authorization: Option<String>,
    request: Box<dyn Any + Send>,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// A running fake; it stops with the test's runtime.
pub(super) struct FakeAdmin {
    addr: SocketAddr,
    calls: Calls,
}

impl FakeAdmin {
    pub(super) async fn start() -> FakeAdmin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let calls = Calls::default();
        let service = AdminServer::new(Scripted {
            calls: calls.clone(),
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        FakeAdmin { addr, calls }
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The `authorization` header of every call so far, in order.
    pub(super) fn authorizations(&self) -> Vec<Option<String>> {
        let calls = self.calls.lock().expect("not poisoned");
        calls.iter().map(|c| c.authorization.clone()).collect()
    }

    /// The methods called so far, in order.
    pub(super) fn methods(&self) -> Vec<&'static str> {
        let calls = self.calls.lock().expect("not poisoned");
        calls.iter().map(|c| c.method).collect()
    }

    /// The request of the last call to `method`.
    pub(super) fn request<T: Clone + 'static>(&self, method: &str) -> T {
        let calls = self.calls.lock().expect("not poisoned");
        calls
            .iter()
            .rev()
            .find(|c| c.method == method)
            .and_then(|c| c.request.downcast_ref::<T>())
            .unwrap_or_else(|| panic!("no {method} call of that request type"))
            .clone()
    }
}

struct Scripted {
    calls: Calls,
}

impl Scripted {
    fn record<T: Clone + Send + 'static>(&self, method: &'static str, request: &Request<T>) {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        self.calls.lock().expect("not poisoned").push(Call {
            method,
            authorization,
            request: Box::new(request.get_ref().clone()),
        });
    }
}

/// The fixture every read answers with.
pub(super) fn echo_policy() -> pb::ServicePolicy {
    pb::ServicePolicy {
        name: "demo.v1.Echo".into(),
        federation: "prod".into(),
        algorithm: pb::Algorithm::Geographic as i32,
        retry: Some(pb::RetryPolicy {
            max_attempts: 4,
            budget_percent: 30,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn node() -> pb::Node {
    pb::Node {
        id: "eu-west-a-1".into(),
        address: "10.0.0.1:50051".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        status: pb::NodeStatus::Healthy as i32,
        ..Default::default()
    }
}

/// The decision every scaling call answers with.
pub(super) fn scaling_decision() -> pb::ScalingDecision {
    pb::ScalingDecision {
        service: "demo.v1.Echo".into(),
        current_nodes: 3,
        desired_nodes: 4,
        reason: "load test".into(),
        source: "manual".into(),
        rule: "manual".into(),
        outcome: "executed".into(),
        outcome_detail: "exit status: 0".into(),
        decided_by: "tester".into(),
        ..Default::default()
    }
}

/// The stored configuration: revision 7, flap threshold 9.
pub(super) fn stored_config() -> pb::ConfigResponse {
    pb::ConfigResponse {
        config: Some(pb::DynamicConfig {
            flap_threshold: 9,
            ..Default::default()
        }),
        revision: 7,
        applied: true,
    }
}

/// Implements `Admin`: the listed RPCs answer UNIMPLEMENTED, the rest are written out.
macro_rules! scripted_admin {
    (unimplemented { $($name:ident($req:ident) -> $resp:ident;)* } $($answered:tt)*) => {
        #[tonic::async_trait]
        impl pb::admin_server::Admin for Scripted {
            $(
                async fn $name(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    self.record(stringify!($name), &request);
                    Err(Status::unimplemented(stringify!($name)))
                }
            )*
            $($answered)*
        }
    };
}

scripted_admin! {
    unimplemented {
        list_federations(ListFederationsRequest) -> ListFederationsResponse;
        upsert_federation(UpsertFederationRequest) -> Federation;
        delete_federation(DeleteFederationRequest) -> DeleteFederationResponse;
        list_regions(ListRegionsRequest) -> ListRegionsResponse;
        upsert_region(UpsertRegionRequest) -> Region;
        delete_region(DeleteRegionRequest) -> DeleteRegionResponse;
        deregister_node(DeregisterNodeRequest) -> DeregisterNodeResponse;
        drain_node(DrainNodeRequest) -> Node;
        recover_node(RecoverNodeRequest) -> Node;
        delete_service_policy(DeleteServicePolicyRequest) -> DeleteServicePolicyResponse;
        list_failovers(ListFailoversRequest) -> ListFailoversResponse;
        start_failover(StartFailoverRequest) -> ActiveFailover;
        clear_failover(ClearFailoverRequest) -> ClearFailoverResponse;
    }

    type WatchEventsStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::Event, Status>>>;

    async fn get_topology(
        &self,
        request: Request<pb::GetTopologyRequest>,
    ) -> Result<Response<pb::Topology>, Status> {
        self.record("get_topology", &request);
        Ok(Response::new(pb::Topology {
            revision: 3,
            federations: vec![pb::Federation {
                name: "prod".into(),
                ..Default::default()
            }],
            regions: vec![pb::Region {
                name: "eu-west".into(),
                federation: "prod".into(),
                location: Some(pb::GeoPoint {
                    latitude: 53.3,
                    longitude: -6.2,
                }),
                zones: vec!["eu-west-a".into()],
                ..Default::default()
            }],
            nodes: vec![node()],
            services: vec![echo_policy()],
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.record("list_nodes", &request);
        Ok(Response::new(pb::ListNodesResponse { nodes: vec![node()] }))
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.record("register_node", &request);
        Ok(Response::new(request.into_inner().node.unwrap_or_default()))
    }

    async fn fail_node(
        &self,
        request: Request<pb::FailNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        self.record("fail_node", &request);
        let id = request.into_inner().id;
        Err(Status::not_found(format!("node {id:?} is not registered")))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        self.record("list_services", &request);
        Ok(Response::new(pb::ListServicesResponse {
            services: vec![echo_policy()],
        }))
    }

    async fn upsert_service_policy(
        &self,
        request: Request<pb::UpsertServicePolicyRequest>,
    ) -> Result<Response<pb::ServicePolicy>, Status> {
        self.record("upsert_service_policy", &request);
        Ok(Response::new(request.into_inner().policy.unwrap_or_default()))
    }

    async fn get_global_metrics(
        &self,
        request: Request<pb::GetGlobalMetricsRequest>,
    ) -> Result<Response<pb::GlobalMetrics>, Status> {
        self.record("get_global_metrics", &request);
        if request.get_ref().federation == "nowhere" {
            return Err(Status::not_found("federation \"nowhere\" does not exist"));
        }
        Ok(Response::new(pb::GlobalMetrics {
            federations: 1,
            nodes_active: 2,
            window_ms: 60_000,
            traffic: vec![pb::ServiceRegionMetrics {
                service: "demo.v1.Echo".into(),
                region: "eu-west".into(),
                calls_per_second: 100.0,
                latency_p99_ms: 12.0,
                nodes_reporting: 2,
                nodes_routable: 2,
                ..Default::default()
            }],
            ..Default::default()
        }))
    }

    async fn list_scaling(
        &self,
        request: Request<pb::ListScalingRequest>,
    ) -> Result<Response<pb::ListScalingResponse>, Status> {
        self.record("list_scaling", &request);
        Ok(Response::new(pb::ListScalingResponse {
            services: vec![pb::ServiceScaling {
                service: "demo.v1.Echo".into(),
                policy: Some(pb::ScalingPolicy {
                    min_nodes: 2,
                    max_nodes: 8,
                    cooldown_ms: 30_000,
                    ..Default::default()
                }),
                history: vec![scaling_decision()],
                cooldown_until: None,
            }],
        }))
    }

    async fn set_scaling_policy(
        &self,
        request: Request<pb::SetScalingPolicyRequest>,
    ) -> Result<Response<pb::ServicePolicy>, Status> {
        self.record("set_scaling_policy", &request);
        let request = request.into_inner();
        Ok(Response::new(pb::ServicePolicy {
            scaling: request.policy,
            ..echo_policy()
        }))
    }

    async fn scale_service(
        &self,
        request: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::ScalingDecision>, Status> {
        self.record("scale_service", &request);
        Ok(Response::new(scaling_decision()))
    }

    async fn recommend_scaling(
        &self,
        request: Request<pb::RecommendScalingRequest>,
    ) -> Result<Response<pb::ScalingDecision>, Status> {
        self.record("recommend_scaling", &request);
        Ok(Response::new(pb::ScalingDecision {
            metrics: vec![pb::ScalingMetric {
                name: "utilization_percent".into(),
                current: 91.0,
                target: 70.0,
                forecast: None,
                recommended_nodes: 4,
            }],
            ..scaling_decision()
        }))
    }

    async fn list_proxies(
        &self,
        request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        self.record("list_proxies", &request);
        Ok(Response::new(pb::ListProxiesResponse {
            proxies: vec![pb::ProxyStatus {
                proxy_id: "proxy-eu-1".into(),
                acked_version: 3,
                sent_version: 3,
                ..Default::default()
            }],
        }))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.record("watch_events", &request);
        let events = (1..=2)
            .map(|seq| {
                Ok(pb::Event {
                    seq,
                    kind: "nodeFailed".into(),
                    subject: "node/eu-west-a-1".into(),
                    ..Default::default()
                })
            })
            .collect::<Vec<_>>();
        Ok(Response::new(tokio_stream::iter(events)))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigResponse>, Status> {
        self.record("get_config", &request);
        Ok(Response::new(stored_config()))
    }

    async fn validate_config(
        &self,
        request: Request<pb::ValidateConfigRequest>,
    ) -> Result<Response<pb::ValidateConfigResponse>, Status> {
        self.record("validate_config", &request);
        let config = request.into_inner().config.unwrap_or_default();
        let errors: Vec<_> = (config.flap_threshold > 100)
            .then(|| pb::FieldError {
                field: "flap_threshold".into(),
                message: "at most 100".into(),
            })
            .into_iter()
            .collect();
        Ok(Response::new(pb::ValidateConfigResponse {
            valid: errors.is_empty(),
            errors,
        }))
    }

    async fn update_config(
        &self,
        request: Request<pb::UpdateConfigRequest>,
    ) -> Result<Response<pb::ConfigResponse>, Status> {
        self.record("update_config", &request);
        let request = request.into_inner();
        Ok(Response::new(pb::ConfigResponse {
            config: request.config,
            revision: 8,
            applied: !request.dry_run,
        }))
    }
}
