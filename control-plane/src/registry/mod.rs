//! `meridian.v1.NodeRegistry`: nodes register themselves and keep their registration
//! alive. When the keep-alives stop for one TTL, the node's liveness key is deleted
//! ([`held`]), the routing tables drop the node, and the leader marks it `lost`.
//!
//! Callers hold the `node` role ([`crate::auth`]); a node credential may register only
//! nodes inside its scope (federation, regions, services), and a registration belongs to
//! the credential that made it: only that credential can keep it alive or deregister the
//! node, and no lease other than a node's own (the leader's election lease, say) can be
//! reached through this API.

pub mod held;

use std::pin::Pin;
use std::time::SystemTime;

use futures::Stream;
use meridian_proto::v1 as pb;
use meridian_proto::v1::node_registry_server::NodeRegistry;
use meridian_shared::Shutdown;
use meridian_shared::domain::Node;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::errors::{store_status, write_status};
use crate::topology::{Liveness, StateHandle, Stored, TopologyWriter};
use held::{HeldNodes, KeepAliveError};

/// Lease TTL bounds, in seconds.
const TTL_RANGE: std::ops::RangeInclusive<u32> = 5..=300;

pub struct RegistryService {
    held: HeldNodes,
    writer: TopologyWriter,
    state: StateHandle,
    shutdown: Shutdown,
}

impl RegistryService {
    pub fn new(
        held: HeldNodes,
        writer: TopologyWriter,
        state: StateHandle,
        shutdown: Shutdown,
    ) -> Self {
        RegistryService {
            held,
            writer,
            state,
            shutdown,
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::KeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NodeRegistry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let owner = auth::caller(&request)?.clone();
        let request = request.into_inner();
        let node = Node::try_from(
            request
                .node
                .ok_or_else(|| Status::invalid_argument("node is required"))?,
        )?;
        owner.check_node(&node)?;
        let ttl = match request.ttl_seconds {
            0 => self.state.borrow().config.value.lease_ttl_seconds(),
            ttl if TTL_RANGE.contains(&ttl) => ttl,
            ttl => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds: {ttl} is outside {} to {}",
                    TTL_RANGE.start(),
                    TTL_RANGE.end()
                )));
            }
        };
        let lease = self.held.lease_for(ttl).await.map_err(store_status)?;
        let liveness = Liveness {
            lease,
            ttl_seconds: ttl,
            registered_at: SystemTime::now(),
            owner: owner.actor(),
            held_by: self.held.replica().to_owned(),
        };
        let id = node.id.clone();
        self.writer
            .register_self(node, &liveness, lease)
            .await
            .map_err(write_status)?;
        self.held.hold(&id, liveness);
        metrics::counter!("meridian_control_registrations_total").increment(1);
        Ok(Response::new(pb::RegisterResponse {
            lease_id: lease,
            ttl_seconds: ttl,
            keepalive_interval_ms: ttl * 1000 / 3,
        }))
    }

    type KeepAliveStream = KeepAliveStream;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let owner = auth::caller(&request)?.actor();
        let mut inbound = request.into_inner();
        let held = self.held.clone();
        let leases = LeaseOwners {
            state: self.state.clone(),
            writer: self.writer.clone(),
        };
        let shutdown = self.shutdown.clone();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.wait() => break,
                    message = inbound.message() => message,
                };
                let Ok(Some(keep_alive)) = message else { break };
                let answer = match leases.check(&keep_alive, &owner).await {
                    Ok(live) => held
                        .keep_alive(&keep_alive.node_id, live)
                        .await
                        .map(|ttl_seconds| pb::KeepAliveResponse { ttl_seconds })
                        .map_err(keep_alive_status),
                    Err(refused) => Err(refused),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let owner = auth::caller(&request)?.actor();
        let request = request.into_inner();
        self.writer
            .deregister_own_node(&request.node_id, request.lease_id, &owner)
            .await
            .map_err(write_status)?;
        self.held.release(&request.node_id);
        Ok(Response::new(pb::DeregisterResponse {}))
    }
}

/// Answers whether a keep-alive names a lease its caller holds.
struct LeaseOwners {
    state: StateHandle,
    writer: TopologyWriter,
}

impl LeaseOwners {
    /// `PERMISSION_DENIED` unless `keep_alive.lease_id` is the live lease of node
    /// `keep_alive.node_id` and `owner` registered it; returns that liveness. The followed
    /// state answers first; the store is asked when it disagrees (a registration this
    /// replica has not seen).
    async fn check(
        &self,
        keep_alive: &pb::KeepAliveRequest,
        owner: &str,
    ) -> Result<Stored<Liveness>, Status> {
        let holds = |l: &Liveness| l.lease == keep_alive.lease_id && l.owner == owner;
        let followed = self
            .state
            .borrow()
            .liveness
            .get(&keep_alive.node_id)
            .filter(|l| holds(&l.value))
            .cloned();
        if let Some(live) = followed {
            return Ok(live);
        }
        match self.writer.read_liveness(&keep_alive.node_id).await {
            Ok(Some(live)) if holds(&live.value) => Ok(live),
            Ok(Some(_)) => Err(Status::permission_denied(format!(
                "lease {} is not held by node {:?} for this credential; keep alive only the lease Register returned",
                keep_alive.lease_id, keep_alive.node_id
            ))),
            Ok(None) => Err(Status::not_found(format!(
                "node {:?} holds no live lease (it expired or was deregistered); register again",
                keep_alive.node_id
            ))),
            Err(e) => Err(write_status(e)),
        }
    }
}

fn keep_alive_status(e: KeepAliveError) -> Status {
    match e {
        KeepAliveError::LeaseNotRenewed { .. } => Status::unavailable(e.to_string()),
        KeepAliveError::Moved(_) => Status::aborted(e.to_string()),
        KeepAliveError::Store(e) => store_status(e),
        KeepAliveError::Write(e) => write_status(e),
    }
}
