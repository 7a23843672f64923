//! The scaling part of the Admin API: `ListScaling` (policy, decision history and
//! cooldown per service), `SetScalingPolicy`, `ScaleService` (an operator's decision,
//! recorded and carried out by the service's actuator) and `RecommendScaling` (what the
//! autoscaler's engine says now, without acting). Policies naming an actuator outside the
//! control plane's allowlists are refused here, for `UpsertServicePolicy` too.
//!
//! `ScaleService` answers once the actuator finished or after [`ACTUATION_WAIT`],
//! whichever comes first; in the second case the decision comes back `pending` and its
//! outcome lands in the record (`ListScaling`) and the events when the actuator ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use meridian_shared::domain::{EventKind, ScalingPolicy, ServicePolicy};
use tonic::Status;

use crate::auth::Caller;
use crate::errors::{not_allowed_status, record_status, write_status};
use crate::scaling::Observation;
use crate::scaling::actuator::{Execution, cause_of};
use crate::scaling::autoscaler::{
    AUTOSCALER, Engines, LoadSource, count_decision, decided_message, decision_of, usable_nodes,
};
use crate::scaling::engine::Recommendation;
use crate::scaling::record::{Decision, Source};
use crate::topology::{StateHandle, TopologyWriter, validate};

/// How long `ScaleService` waits for the actuator before answering `pending`.
pub const ACTUATION_WAIT: Duration = Duration::from_secs(5);

/// What the scaling calls need besides the topology.
#[derive(Clone)]
pub struct ScalingContext {
    pub execution: Execution,
    pub load: Arc<dyn LoadSource>,
    pub engines: Engines,
}

impl ScalingContext {
    /// Refuses a policy whose actuator this control plane may not run.
    pub fn check_actuator(&self, policy: &ScalingPolicy) -> Result<(), Status> {
        match &policy.actuator {
            Some(actuator) => self
                .execution
                .actuators
                .allowlist()
                .check(actuator)
                .map_err(not_allowed_status),
            None => Ok(()),
        }
    }
}

fn service_policy(state: &StateHandle, service: &str) -> Result<ServicePolicy, Status> {
    state
        .borrow()
        .services
        .get(service)
        .map(|s| s.value.clone())
        .ok_or_else(|| {
            Status::not_found(format!(
                "service {service:?} has no policy; create it first (meridianctl services set)"
            ))
        })
}

pub async fn list(
    state: &StateHandle,
    scaling: &ScalingContext,
    request: pb::ListScalingRequest,
) -> Result<pb::ListScalingResponse, Status> {
    let wanted = request.service;
    let policies: Vec<ServicePolicy> = if wanted.is_empty() {
        let state = state.borrow();
        state.services.values().map(|s| s.value.clone()).collect()
    } else {
        vec![service_policy(state, &wanted)?]
    };
    let records = if wanted.is_empty() {
        scaling
            .execution
            .records
            .all()
            .await
            .map_err(record_status)?
    } else {
        let (record, _) = scaling
            .execution
            .records
            .get(&wanted)
            .await
            .map_err(record_status)?;
        [(wanted.clone(), record)].into_iter().collect()
    };
    let now = SystemTime::now();
    let services = policies
        .into_iter()
        .map(|policy| {
            let record = records.get(&policy.name).cloned().unwrap_or_default();
            let cooldown = policy.scaling.effective_cooldown();
            pb::ServiceScaling {
                service: policy.name.clone(),
                history: record.history.iter().map(Into::into).collect(),
                cooldown_until: record.cooldown_until(cooldown, now).map(Into::into),
                policy: Some(policy.scaling.into()),
            }
        })
        .collect();
    Ok(pb::ListScalingResponse { services })
}

pub async fn set_policy(
    state: &StateHandle,
    writer: &TopologyWriter,
    scaling: &ScalingContext,
    request: pb::SetScalingPolicyRequest,
    caller: &Caller,
) -> Result<ServicePolicy, Status> {
    let mut policy = service_policy(state, &request.service)?;
    let scaling_policy: ScalingPolicy = request
        .policy
        .ok_or_else(|| Status::invalid_argument("policy is required"))?
        .into();
    scaling.check_actuator(&scaling_policy)?;
    policy.scaling = scaling_policy;
    writer
        .upsert_service(policy, &caller.actor())
        .await
        .map_err(write_status)
}

pub async fn scale(
    state: &StateHandle,
    writer: &TopologyWriter,
    scaling: &ScalingContext,
    request: pb::ScaleServiceRequest,
    caller: &Caller,
) -> Result<pb::ScalingDecision, Status> {
    let limits = writer.limits().await.map_err(write_status)?;
    validate::text("reason", &request.reason, &limits)
        .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
    if request.reason.trim().is_empty() {
        return Err(Status::invalid_argument(
            "reason: say why the service is scaled (shown in events and the scaling history)",
        ));
    }
    let target = request.target.ok_or_else(|| {
        Status::invalid_argument("desired_nodes or change_by is required: the count to scale to, or by how many to scale")
    })?;
    let policy = service_policy(state, &request.service)?;
    caller.check_federation(&policy.federation)?;
    let current = usable_nodes(&state.borrow(), &policy);
    let desired = desired_count(current, target)?;
    if !request.force {
        within_bounds(&policy, desired)?;
    }
    let actuator = policy.scaling.actuator.clone();
    let recommendation = Recommendation {
        current_nodes: current,
        desired_nodes: desired,
        rule: "manual",
        reason: request.reason.clone(),
        metrics: Vec::new(),
        utilization_percent: None,
    };
    let mut decision = decision_of(
        &policy.name,
        recommendation,
        Source::Manual,
        &caller.name,
        SystemTime::now(),
        actuator.is_some(),
    );
    let (record, pushed) = scaling
        .execution
        .records
        .update(&policy.name, None, |r| r.push(decision.clone()))
        .await
        .map_err(record_status)?;
    let Some(seq) = pushed else {
        // The same request again (a client retry, say): the decision stands as recorded.
        let last = record.last().expect("a repeat has a last decision");
        return Ok(last.into());
    };
    decision.seq = seq;
    count_decision(&decision);
    scaling
        .execution
        .events
        .record(
            EventKind::ScalingDecided,
            format!("service/{}", policy.name),
            decided_message(&decision),
            cause_of(&decision),
        )
        .await;
    let Some(actuator) = actuator else {
        return Ok((&decision).into());
    };
    let execution = scaling.execution.clone();
    let cooldown = policy.scaling.effective_cooldown();
    let pending = decision.clone();
    let running = tokio::spawn(async move {
        execution
            .carry_out(actuator, decision, cooldown, None)
            .await
    });
    let answered = match tokio::time::timeout(ACTUATION_WAIT, running).await {
        Ok(Ok(done)) => done,
        _ => pending,
    };
    Ok((&answered).into())
}

/// The count `target` asks for, from `current`.
fn desired_count(current: u32, target: pb::scale_service_request::Target) -> Result<u32, Status> {
    match target {
        pb::scale_service_request::Target::DesiredNodes(n) => Ok(n),
        pb::scale_service_request::Target::ChangeBy(change) => {
            let desired = i64::from(current) + i64::from(change);
            u32::try_from(desired).map_err(|_| {
                Status::invalid_argument(format!(
                    "change_by: {change} from {current} usable nodes would leave {desired}"
                ))
            })
        }
    }
}

/// Refuses a count outside the policy's min/max.
fn within_bounds(policy: &ServicePolicy, desired: u32) -> Result<(), Status> {
    let scaling = &policy.scaling;
    if scaling.min_nodes > 0 && desired < scaling.min_nodes {
        return Err(Status::failed_precondition(format!(
            "{desired} nodes is below min_nodes {} of {}'s scaling policy; pass force (--force) to go below it",
            scaling.min_nodes, policy.name
        )));
    }
    if scaling.max_nodes > 0 && desired > scaling.max_nodes {
        return Err(Status::failed_precondition(format!(
            "{desired} nodes is above max_nodes {} of {}'s scaling policy; pass force (--force) to go above it",
            scaling.max_nodes, policy.name
        )));
    }
    Ok(())
}

pub async fn recommend(
    state: &StateHandle,
    scaling: &ScalingContext,
    request: pb::RecommendScalingRequest,
) -> Result<pb::ScalingDecision, Status> {
    let policy = service_policy(state, &request.service)?;
    let (record, _) = scaling
        .execution
        .records
        .get(&policy.name)
        .await
        .map_err(record_status)?;
    let load = scaling.load.services().await.remove(&policy.name);
    let now = SystemTime::now();
    let observation = Observation {
        at: now,
        current_nodes: usable_nodes(&state.borrow(), &policy),
        load,
    };
    let recommendation = scaling
        .engines
        .preview(&policy, &observation, record.last_change_at);
    let mut decision: Decision = decision_of(
        &policy.name,
        recommendation,
        Source::Auto,
        AUTOSCALER,
        now,
        false,
    );
    decision.outcome_detail = "a recommendation: nothing was recorded or carried out".into();
    Ok((&decision).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: u32, max: u32) -> ServicePolicy {
        ServicePolicy {
            name: "demo.v1.Echo".into(),
            scaling: ScalingPolicy {
                min_nodes: min,
                max_nodes: max,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn bounds_are_named_when_refused() {
        let err = within_bounds(&policy(2, 5), 6).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(err.message().contains("max_nodes 5"), "{}", err.message());
        let err = within_bounds(&policy(2, 5), 1).unwrap_err();
        assert!(err.message().contains("min_nodes 2"), "{}", err.message());
        assert!(within_bounds(&policy(2, 5), 5).is_ok());
        assert!(within_bounds(&policy(0, 0), 100).is_ok(), "0 is no bound");
    }

    #[test]
    fn change_by_counts_from_the_current_nodes() {
        use pb::scale_service_request::Target;
        assert_eq!(desired_count(3, Target::ChangeBy(2)).unwrap(), 5);
        assert_eq!(desired_count(3, Target::ChangeBy(-3)).unwrap(), 0);
        assert_eq!(desired_count(3, Target::DesiredNodes(7)).unwrap(), 7);
        let err = desired_count(3, Target::ChangeBy(-4)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
