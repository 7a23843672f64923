//! Actuators: how a scaling decision reaches the system that runs the nodes. [`exec`]
//! runs an allowed program, [`webhook`] POSTs to an allowed URL; [`allowlist`] says what
//! is allowed. [`Execution::carry_out`] runs a recorded decision's actuator (one at a time
//! per service, in decision order), stores the outcome in the service's scaling record
//! and records a `scalingExecuted` or `scalingFailed` event; a failure is retried by the
//! leader's autoscaler after the policy's cooldown, never at once.

pub mod allowlist;
pub mod exec;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use meridian_shared::domain::{EventKind, ScalingActuator};
use meridian_shared::tls::ClientTls;
use serde_json::json;

pub use allowlist::{Allowlist, NotAllowed};

use super::record::{Decision, Outcome, Records, decision_json};
use crate::events::EventLog;
use crate::store::Compare;

/// What one actuation did, in the actuator's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actuation {
    Executed(String),
    Failed(String),
}

/// The decision as the actuator receives it (exec: stdin; webhook: the body): what
/// `meridianctl -o json` shows of it, plus its number (`decision`).
pub fn payload(decision: &Decision) -> Vec<u8> {
    let mut json = decision_json(&pb::ScalingDecision::from(decision));
    json["decision"] = json!(decision.seq);
    serde_json::to_vec(&json).expect("JSON values always serialize")
}

/// The allowed actuators and which services have an actuation running in this process.
#[derive(Clone, Default)]
pub struct Actuators {
    allowlist: Arc<Allowlist>,
    /// Trust for `https://` webhooks (`--scaling-webhook-ca`).
    webhook_tls: Option<ClientTls>,
    running: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl Actuators {
    pub fn new(allowlist: Allowlist) -> Self {
        Actuators {
            allowlist: Arc::new(allowlist),
            webhook_tls: None,
            running: Arc::default(),
        }
    }

    /// Lets webhooks use `https://` receivers whose certificates chain to `tls`'s CA.
    pub fn with_webhook_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.webhook_tls = tls;
        self
    }

    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// Runs `actuator` for `decision`, if it is (still) allowed.
    pub async fn run(&self, actuator: &ScalingActuator, decision: &Decision) -> Actuation {
        if let Err(refused) = self.allowlist.check(actuator) {
            return Actuation::Failed(refused.to_string());
        }
        match actuator {
            ScalingActuator::Exec(e) => exec::run(e, decision).await,
            ScalingActuator::Webhook(w) => {
                webhook::run(w, decision, self.webhook_tls.as_ref()).await
            }
        }
    }

    /// The lock serialising one service's actuations.
    fn lock_of(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut running = self.running.lock().expect("not poisoned");
        // Forget the locks nobody holds or waits for, so the map stays small.
        running.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(running.entry(service.to_owned()).or_default())
    }

    /// Whether an actuation of `service` is running (or waiting) in this process.
    pub fn is_busy(&self, service: &str) -> bool {
        let running = self.running.lock().expect("not poisoned");
        running
            .get(service)
            .is_some_and(|lock| Arc::strong_count(lock) > 1)
    }
}

/// Everything needed to carry a recorded decision out.
#[derive(Clone)]
pub struct Execution {
    pub actuators: Actuators,
    pub records: Records,
    pub events: EventLog,
}

impl Execution {
    /// Runs `actuator` for the recorded `decision` once the service's earlier actuations
    /// ended, unless a newer decision superseded it meanwhile; stores the outcome (a
    /// failure retried `cooldown` from now) with `fence`, and records the event. Returns
    /// the decision with its outcome.
    pub async fn carry_out(
        &self,
        actuator: ScalingActuator,
        mut decision: Decision,
        cooldown: Duration,
        fence: Option<Compare>,
    ) -> Decision {
        let lock = self.actuators.lock_of(&decision.service);
        let _turn = lock.lock().await;
        let service = decision.service.clone();
        match self.records.get(&service).await {
            Ok((record, _)) => {
                if let Some(newer) = record.last().filter(|d| d.seq > decision.seq) {
                    let detail = format!(
                        "superseded by decision {} (desired {}) before it ran",
                        newer.seq, newer.desired_nodes
                    );
                    self.store_outcome(&mut decision, Outcome::None, detail, None, fence)
                        .await;
                    return decision;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, %service, "could not read the scaling record before actuating; actuating anyway")
            }
        }
        let (outcome, detail, kind) = match self.actuators.run(&actuator, &decision).await {
            Actuation::Executed(detail) => (Outcome::Executed, detail, EventKind::ScalingExecuted),
            Actuation::Failed(detail) => (Outcome::Failed, detail, EventKind::ScalingFailed),
        };
        metrics::counter!("meridian_control_scaling_actuations_total", "outcome" => outcome.as_str())
            .increment(1);
        let retry_at = (outcome == Outcome::Failed).then(|| SystemTime::now() + cooldown);
        let message = match outcome {
            Outcome::Executed => format!(
                "scaled {service} to {} nodes (decision {}): {detail}",
                decision.desired_nodes, decision.seq
            ),
            _ => format!(
                "scaling {service} to {} nodes failed (decision {}); retried in {} s: {detail}",
                decision.desired_nodes,
                decision.seq,
                cooldown.as_secs()
            ),
        };
        self.store_outcome(&mut decision, outcome, detail, retry_at, fence)
            .await;
        let cause = cause_of(&decision);
        self.events
            .record(kind, format!("service/{service}"), message, cause)
            .await;
        decision
    }

    async fn store_outcome(
        &self,
        decision: &mut Decision,
        outcome: Outcome,
        detail: String,
        retry_at: Option<SystemTime>,
        fence: Option<Compare>,
    ) {
        decision.outcome = outcome;
        decision.outcome_detail = detail.clone();
        let seq = decision.seq;
        let stored = self
            .records
            .update(&decision.service, fence.as_ref(), |record| {
                record
                    .set_outcome(seq, outcome, detail.clone(), retry_at)
                    .then_some(())
            })
            .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, service = %decision.service, seq, outcome = outcome.as_str(), "could not store the actuation's outcome");
        }
    }
}

/// How events name who decided: `autoscaler` or `operator:<token name>`.
pub fn cause_of(decision: &Decision) -> String {
    match decision.source {
        super::record::Source::Auto => "autoscaler".into(),
        super::record::Source::Manual => format!("operator:{}", decision.decided_by),
    }
}
