//! Manual failover: send a service's traffic to one tier, backup group or region of its
//! federation until cleared. The failover is stored beside the service and reaches the
//! proxies in their routing tables.

use std::sync::Arc;
use std::time::SystemTime;

use meridian_proto::v1 as pb;
use meridian_shared::domain::{ActiveFailover, EventKind, Region, ServicePolicy};
use tonic::Status;

use crate::auth::Caller;
use crate::errors::{decode_status, store_status, write_status};
use crate::events::EventLog;
use crate::keys::{self, Kind};
use crate::store::{Compare, Store, Txn};
use crate::topology::{TopologyWriter, validate};

pub async fn start(
    store: &Arc<dyn Store>,
    writer: &TopologyWriter,
    events: &EventLog,
    request: pb::StartFailoverRequest,
    caller: &Caller,
) -> Result<ActiveFailover, Status> {
    // The reason travels in every routing table of the federation: bounded like all text.
    let limits = writer.limits().await.map_err(write_status)?;
    validate::text("reason", &request.reason, &limits)
        .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
    let keys = writer.keys();
    let service_key = keys.key(Kind::Service, &request.service);
    let kv = store
        .get(&service_key)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("service {:?} has no policy", request.service)))?;
    let policy: ServicePolicy = keys::decode(&kv.key, &kv.value).map_err(decode_status)?;
    let is_tier = policy
        .failover
        .tiers
        .iter()
        .any(|t| t.name == request.target);
    let is_region = match store
        .get(&keys.key(Kind::Region, &request.target))
        .await
        .map_err(store_status)?
    {
        Some(region) => {
            let region: Region = keys::decode(&region.key, &region.value).map_err(decode_status)?;
            region.federation == policy.federation
        }
        None => false,
    };
    if !is_tier && !is_region {
        return Err(Status::invalid_argument(format!(
            "target: {:?} is neither a failover tier of {} nor a region of federation {}",
            request.target, policy.name, policy.federation
        )));
    }
    let failover = ActiveFailover {
        service: request.service.clone(),
        target: request.target.clone(),
        reason: request.reason.clone(),
        started_by: caller.actor(),
        started_at: Some(SystemTime::now()),
    };
    let txn = Txn::new()
        .when(Compare::ModRevision {
            key: service_key,
            revision: kv.mod_revision,
        })
        .put(
            keys.key(Kind::Failover, &request.service),
            keys::encode(&failover),
        );
    if !store.txn(txn).await.map_err(store_status)?.succeeded {
        return Err(Status::aborted(
            "the service's policy changed meanwhile; retry",
        ));
    }
    events
        .record(
            EventKind::FailoverStarted,
            format!("service/{}", request.service),
            format!("traffic sent to {}: {}", request.target, request.reason),
            caller.actor(),
        )
        .await;
    Ok(failover)
}

pub async fn clear(
    store: &Arc<dyn Store>,
    writer: &TopologyWriter,
    events: &EventLog,
    request: pb::ClearFailoverRequest,
    caller: &Caller,
) -> Result<(), Status> {
    let limits = writer.limits().await.map_err(write_status)?;
    validate::text("reason", &request.reason, &limits)
        .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
    let key = writer.keys().key(Kind::Failover, &request.service);
    let existing = store
        .get(&key)
        .await
        .map_err(store_status)?
        .ok_or_else(|| {
            Status::not_found(format!("service {:?} is not failed over", request.service))
        })?;
    let txn = Txn::new()
        .when(Compare::ModRevision {
            key: key.clone(),
            revision: existing.mod_revision,
        })
        .delete(key);
    if !store.txn(txn).await.map_err(store_status)?.succeeded {
        return Err(Status::aborted("the failover changed meanwhile; retry"));
    }
    events
        .record(
            EventKind::FailoverCleared,
            format!("service/{}", request.service),
            format!("failover cleared: {}", request.reason),
            caller.actor(),
        )
        .await;
    Ok(())
}
