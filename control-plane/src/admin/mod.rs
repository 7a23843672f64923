//! `meridian.v1.Admin`: the operator API. Every call was authorized before it got here
//! (viewer for reads, operator for writes: [`crate::auth::layer`]); reads come from this replica's followed state, writes go
//! through the validated [`TopologyWriter`] or the helpers of this module's files, and
//! every refusal is a gRPC status naming what is wrong.

mod config;
mod convert;
mod events;
mod failover;
mod metrics;
mod scaling;

use std::sync::Arc;

use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_server::Admin;
use meridian_shared::Shutdown;
use meridian_shared::domain::{Federation, Node, NodeStatus, Region, ServicePolicy};
use tonic::{Request, Response, Status};

pub use scaling::ScalingContext;

use crate::auth;
use crate::discovery::proxies::ProxyRegistry;
use crate::errors::write_status;
use crate::events::EventLog;
use crate::store::Store;
use crate::topology::writes::StatusChange;
use crate::topology::{StateHandle, TopologyWriter};

pub use self::metrics::MetricsSources;

/// The Admin API over one replica's parts; built field by field in [`crate::server`].
pub struct AdminService {
    pub state: StateHandle,
    pub writer: TopologyWriter,
    pub events: EventLog,
    pub proxies: Arc<ProxyRegistry>,
    pub store: Arc<dyn Store>,
    pub scaling: ScalingContext,
    pub shutdown: Shutdown,
    pub metrics: MetricsSources,
}

type Reply<T> = Result<Response<T>, Status>;

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_topology(&self, request: Request<pb::GetTopologyRequest>) -> Reply<pb::Topology> {
        auth::caller(&request)?;
        let federation = request.into_inner().federation;
        let filter = (!federation.is_empty()).then_some(federation.as_str());
        Ok(Response::new(self.state.borrow().topology(filter).into()))
    }

    async fn list_federations(
        &self,
        request: Request<pb::ListFederationsRequest>,
    ) -> Reply<pb::ListFederationsResponse> {
        auth::caller(&request)?;
        let federations = self
            .state
            .borrow()
            .federations
            .values()
            .map(|f| f.value.clone().into())
            .collect();
        Ok(Response::new(pb::ListFederationsResponse { federations }))
    }

    async fn upsert_federation(
        &self,
        request: Request<pb::UpsertFederationRequest>,
    ) -> Reply<pb::Federation> {
        auth::caller(&request)?;
        let federation = Federation::from(required(request.into_inner().federation, "federation")?);
        let stored = self
            .writer
            .upsert_federation(federation)
            .await
            .map_err(write_status)?;
        Ok(Response::new(stored.into()))
    }

    async fn delete_federation(
        &self,
        request: Request<pb::DeleteFederationRequest>,
    ) -> Reply<pb::DeleteFederationResponse> {
        auth::caller(&request)?;
        self.writer
            .delete_federation(&request.into_inner().name)
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::DeleteFederationResponse {}))
    }

    async fn list_regions(
        &self,
        request: Request<pb::ListRegionsRequest>,
    ) -> Reply<pb::ListRegionsResponse> {
        auth::caller(&request)?;
        let federation = request.into_inner().federation;
        let regions = self
            .state
            .borrow()
            .regions
            .values()
            .filter(|r| federation.is_empty() || r.value.federation == federation)
            .map(|r| r.value.clone().into())
            .collect();
        Ok(Response::new(pb::ListRegionsResponse { regions }))
    }

    async fn upsert_region(&self, request: Request<pb::UpsertRegionRequest>) -> Reply<pb::Region> {
        let caller = auth::caller(&request)?.clone();
        let region = Region::try_from(required(request.into_inner().region, "region")?)?;
        let stored = self
            .writer
            .upsert_region(region, &caller.actor())
            .await
            .map_err(write_status)?;
        Ok(Response::new(stored.into()))
    }

    async fn delete_region(
        &self,
        request: Request<pb::DeleteRegionRequest>,
    ) -> Reply<pb::DeleteRegionResponse> {
        let caller = auth::caller(&request)?.clone();
        self.writer
            .delete_region(&request.into_inner().name, &caller.actor())
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::DeleteRegionResponse {}))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Reply<pb::ListNodesResponse> {
        auth::caller(&request)?;
        let filter = request.into_inner();
        let status = match filter.status {
            0 => None,
            value => Some(convert::node_status(value)?),
        };
        let matches = |n: &Node| {
            (filter.federation.is_empty() || n.federation == filter.federation)
                && (filter.region.is_empty() || n.region == filter.region)
                && (filter.zone.is_empty() || n.zone == filter.zone)
                && (filter.service.is_empty() || n.serves(&filter.service))
                && status.is_none_or(|s: NodeStatus| n.status == s)
        };
        let nodes = self
            .state
            .borrow()
            .nodes
            .values()
            .filter(|n| matches(&n.value))
            .map(|n| n.value.clone().into())
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn register_node(&self, request: Request<pb::RegisterNodeRequest>) -> Reply<pb::Node> {
        let caller = auth::caller(&request)?.clone();
        let request = request.into_inner();
        let node = Node::try_from(required(request.node, "node")?)?;
        let stored = self
            .writer
            .register_node(node, request.replace, &caller.actor())
            .await
            .map_err(write_status)?;
        Ok(Response::new(stored.into()))
    }

    async fn deregister_node(
        &self,
        request: Request<pb::DeregisterNodeRequest>,
    ) -> Reply<pb::DeregisterNodeResponse> {
        let caller = auth::caller(&request)?.clone();
        let id = request.into_inner().id;
        let existed = self
            .writer
            .deregister_node(&id, &caller.actor())
            .await
            .map_err(write_status)?;
        if !existed {
            return Err(Status::not_found(format!("node {id:?} does not exist")));
        }
        Ok(Response::new(pb::DeregisterNodeResponse {}))
    }

    async fn drain_node(&self, request: Request<pb::DrainNodeRequest>) -> Reply<pb::Node> {
        let caller = auth::caller(&request)?.clone();
        let request = request.into_inner();
        self.change_status(
            &request.id,
            StatusChange::Drain,
            &request.reason,
            &caller.actor(),
        )
        .await
    }

    async fn fail_node(&self, request: Request<pb::FailNodeRequest>) -> Reply<pb::Node> {
        let caller = auth::caller(&request)?.clone();
        let request = request.into_inner();
        if request.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: say why the node is failed (shown in events)",
            ));
        }
        self.change_status(
            &request.id,
            StatusChange::Fail,
            &request.reason,
            &caller.actor(),
        )
        .await
    }

    async fn recover_node(&self, request: Request<pb::RecoverNodeRequest>) -> Reply<pb::Node> {
        let caller = auth::caller(&request)?.clone();
        let request = request.into_inner();
        self.change_status(
            &request.id,
            StatusChange::Recover,
            &request.reason,
            &caller.actor(),
        )
        .await
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Reply<pb::ListServicesResponse> {
        auth::caller(&request)?;
        let federation = request.into_inner().federation;
        let services = self
            .state
            .borrow()
            .services
            .values()
            .filter(|s| federation.is_empty() || s.value.federation == federation)
            .map(|s| s.value.clone().into())
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn upsert_service_policy(
        &self,
        request: Request<pb::UpsertServicePolicyRequest>,
    ) -> Reply<pb::ServicePolicy> {
        let caller = auth::caller(&request)?.clone();
        let policy = ServicePolicy::try_from(required(request.into_inner().policy, "policy")?)?;
        self.scaling.check_actuator(&policy.scaling)?;
        let stored = self
            .writer
            .upsert_service(policy, &caller.actor())
            .await
            .map_err(write_status)?;
        Ok(Response::new(stored.into()))
    }

    async fn delete_service_policy(
        &self,
        request: Request<pb::DeleteServicePolicyRequest>,
    ) -> Reply<pb::DeleteServicePolicyResponse> {
        let caller = auth::caller(&request)?.clone();
        self.writer
            .delete_service(&request.into_inner().name, &caller.actor())
            .await
            .map_err(write_status)?;
        Ok(Response::new(pb::DeleteServicePolicyResponse {}))
    }

    async fn list_failovers(
        &self,
        request: Request<pb::ListFailoversRequest>,
    ) -> Reply<pb::ListFailoversResponse> {
        auth::caller(&request)?;
        let failovers = self
            .state
            .borrow()
            .failovers
            .values()
            .map(|f| f.value.clone().into())
            .collect();
        Ok(Response::new(pb::ListFailoversResponse { failovers }))
    }

    async fn start_failover(
        &self,
        request: Request<pb::StartFailoverRequest>,
    ) -> Reply<pb::ActiveFailover> {
        let caller = auth::caller(&request)?.clone();
        let failover = failover::start(
            &self.store,
            &self.writer,
            &self.events,
            request.into_inner(),
            &caller,
        )
        .await?;
        Ok(Response::new(failover.into()))
    }

    async fn clear_failover(
        &self,
        request: Request<pb::ClearFailoverRequest>,
    ) -> Reply<pb::ClearFailoverResponse> {
        let caller = auth::caller(&request)?.clone();
        failover::clear(
            &self.store,
            &self.writer,
            &self.events,
            request.into_inner(),
            &caller,
        )
        .await?;
        Ok(Response::new(pb::ClearFailoverResponse {}))
    }

    async fn list_scaling(
        &self,
        request: Request<pb::ListScalingRequest>,
    ) -> Reply<pb::ListScalingResponse> {
        auth::caller(&request)?;
        let listed = scaling::list(&self.state, &self.scaling, request.into_inner()).await?;
        Ok(Response::new(listed))
    }

    async fn set_scaling_policy(
        &self,
        request: Request<pb::SetScalingPolicyRequest>,
    ) -> Reply<pb::ServicePolicy> {
        let caller = auth::caller(&request)?.clone();
        let stored = scaling::set_policy(
            &self.state,
            &self.writer,
            &self.scaling,
            request.into_inner(),
            &caller,
        )
        .await?;
        Ok(Response::new(stored.into()))
    }

    async fn scale_service(
        &self,
        request: Request<pb::ScaleServiceRequest>,
    ) -> Reply<pb::ScalingDecision> {
        let caller = auth::caller(&request)?.clone();
        let decision = scaling::scale(
            &self.state,
            &self.writer,
            &self.scaling,
            request.into_inner(),
            &caller,
        )
        .await?;
        Ok(Response::new(decision))
    }

    async fn recommend_scaling(
        &self,
        request: Request<pb::RecommendScalingRequest>,
    ) -> Reply<pb::ScalingDecision> {
        auth::caller(&request)?;
        let decision = scaling::recommend(&self.state, &self.scaling, request.into_inner()).await?;
        Ok(Response::new(decision))
    }

    async fn get_global_metrics(
        &self,
        request: Request<pb::GetGlobalMetricsRequest>,
    ) -> Reply<pb::GlobalMetrics> {
        auth::caller(&request)?;
        let federation = request.into_inner().federation;
        let answer =
            metrics::global_metrics(&self.state, &self.proxies, &self.metrics, &federation).await?;
        Ok(Response::new(answer))
    }

    async fn list_proxies(
        &self,
        request: Request<pb::ListProxiesRequest>,
    ) -> Reply<pb::ListProxiesResponse> {
        auth::caller(&request)?;
        let proxies = self
            .proxies
            .list()
            .await
            .into_iter()
            .map(convert::proxy_status)
            .collect();
        Ok(Response::new(pb::ListProxiesResponse { proxies }))
    }

    type WatchEventsStream = events::EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Reply<Self::WatchEventsStream> {
        auth::caller(&request)?;
        let stream = events::watch(
            self.events.clone(),
            request.into_inner(),
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Reply<pb::ConfigResponse> {
        auth::caller(&request)?;
        Ok(Response::new(
            config::get(&self.store, self.writer.keys()).await?,
        ))
    }

    async fn validate_config(
        &self,
        request: Request<pb::ValidateConfigRequest>,
    ) -> Reply<pb::ValidateConfigResponse> {
        auth::caller(&request)?;
        Ok(Response::new(config::validate(request.into_inner())))
    }

    async fn update_config(
        &self,
        request: Request<pb::UpdateConfigRequest>,
    ) -> Reply<pb::ConfigResponse> {
        let caller = auth::caller(&request)?.clone();
        let response = config::update(
            &self.store,
            self.writer.keys(),
            &self.events,
            request.into_inner(),
            &caller,
        )
        .await?;
        Ok(Response::new(response))
    }
}

impl AdminService {
    async fn change_status(
        &self,
        id: &str,
        change: StatusChange,
        reason: &str,
        actor: &str,
    ) -> Reply<pb::Node> {
        let node = self
            .writer
            .change_status(id, change, reason, actor)
            .await
            .map_err(write_status)?;
        Ok(Response::new(node.into()))
    }
}
