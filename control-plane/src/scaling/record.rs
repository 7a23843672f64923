//! A service's scaling record, stored at `{prefix}v1/scaling/{service}`: the newest
//! decisions (bounded), when the count last changed (the cooldown's start) and when a
//! failed actuation is retried. Both the leader's autoscaler and any replica serving
//! `ScaleService` write it; it lives in the store, so a new leader keeps the cooldown and
//! the history.
//!
//! Writes are read-modify-write transactions comparing the record's mod revision (and
//! retried when another writer got there first); the autoscaler's also carry the leader
//! fence, so a deposed leader's late write changes nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::keys::{self, DecodeError, Keys, Kind};
use crate::store::{Compare, Revision, Store, StoreError, Txn};

/// Decisions kept per service, newest first.
pub const HISTORY_LIMIT: usize = 20;
/// Read-modify-write attempts before giving up on a contended record.
const WRITE_ATTEMPTS: usize = 10;

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Source {
    /// The leader's autoscaler.
    Auto,
    /// An operator, through `ScaleService`.
    Manual,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Auto => "auto",
            Source::Manual => "manual",
        }
    }
}

/// What the actuator did with a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Recorded; the actuator has not finished (or not started).
    Pending,
    Executed,
    Failed,
    /// No actuator is configured (or the decision was superseded before it ran).
    None,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Executed => "executed",
            Outcome::Failed => "failed",
            Outcome::None => "none",
        }
    }
}

/// One metric behind a decision (the stored form of `pb::ScalingMetric`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Metric {
    pub name: String,
    pub current: f64,
    pub target: f64,
    pub forecast: Option<f64>,
    pub recommended_nodes: u32,
}

/// One decision (the stored form of `pb::ScalingDecision`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Numbers the decisions of one service, from 1; outcomes are written by it.
    pub seq: u64,
    pub service: String,
    pub current_nodes: u32,
    pub desired_nodes: u32,
    #[serde(default)]
    pub utilization_percent: Option<f64>,
    pub reason: String,
    pub source: Source,
    pub decided_by: String,
    pub decided_at: SystemTime,
    pub rule: String,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    pub outcome: Outcome,
    #[serde(default)]
    pub outcome_detail: String,
}

impl Decision {
    /// Whether carrying it out changes the node count.
    pub fn changes_count(&self) -> bool {
        self.desired_nodes != self.current_nodes
    }
}

/// A decision as JSON: what `meridianctl -o json` prints and what actuators receive.
pub fn decision_json(d: &pb::ScalingDecision) -> serde_json::Value {
    let timestamp = |at: Option<&prost_types::Timestamp>| at.map(ToString::to_string);
    let metrics: Vec<serde_json::Value> = d
        .metrics
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "current": m.current,
                "target": m.target,
                "forecast": m.forecast,
                "recommended_nodes": m.recommended_nodes,
            })
        })
        .collect();
    serde_json::json!({
        "service": d.service,
        "current_nodes": d.current_nodes,
        "desired_nodes": d.desired_nodes,
        "utilization_percent": d.utilization_percent,
        "reason": d.reason,
        "source": d.source,
        "decided_by": d.decided_by,
        "decided_at": timestamp(d.decided_at.as_ref()),
        "rule": d.rule,
        "metrics": metrics,
        "outcome": d.outcome,
        "outcome_detail": d.outcome_detail,
    })
}

impl From<&Decision> for pb::ScalingDecision {
    fn from(d: &Decision) -> Self {
        pb::ScalingDecision {
            service: d.service.clone(),
            current_nodes: d.current_nodes,
            desired_nodes: d.desired_nodes,
            utilization_percent: d
                .utilization_percent
                .map(|u| u.clamp(0.0, f64::from(u32::MAX)).round() as u32)
                .unwrap_or(0),
            reason: d.reason.clone(),
            source: d.source.as_str().into(),
            decided_at: Some(d.decided_at.into()),
            rule: d.rule.clone(),
            metrics: d
                .metrics
                .iter()
                .map(|m| pb::ScalingMetric {
                    name: m.name.clone(),
                    current: m.current,
                    target: m.target,
                    forecast: m.forecast,
                    recommended_nodes: m.recommended_nodes,
                })
                .collect(),
            outcome: d.outcome.as_str().into(),
            outcome_detail: d.outcome_detail.clone(),
            decided_by: d.decided_by.clone(),
        }
    }
}

/// Everything stored about one service's scaling.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScalingRecord {
    /// Newest first, at most [`HISTORY_LIMIT`].
    pub history: Vec<Decision>,
    /// When the last decision that changed the count was made: the cooldown's start.
    pub last_change_at: Option<SystemTime>,
    /// When the last decision's failed actuation is to be tried again.
    pub next_retry_at: Option<SystemTime>,
}

impl ScalingRecord {
    /// The newest decision.
    pub fn last(&self) -> Option<&Decision> {
        self.history.first()
    }

    /// Adds `decision` as the newest unless it repeats the last one (same desired count,
    /// same source) whose actuation did not fail; returns its sequence number, or `None`
    /// when it was not added. A decision that changes the count starts the cooldown; any
    /// new decision replaces a pending retry of the last one.
    pub fn push(&mut self, mut decision: Decision) -> Option<u64> {
        if let Some(last) = self.last()
            && last.desired_nodes == decision.desired_nodes
            && last.source == decision.source
            && last.outcome != Outcome::Failed
        {
            return None;
        }
        decision.seq = self.history.iter().map(|d| d.seq).max().unwrap_or(0) + 1;
        if decision.changes_count() {
            self.last_change_at = Some(decision.decided_at);
        }
        self.next_retry_at = None;
        let seq = decision.seq;
        self.history.insert(0, decision);
        self.history.truncate(HISTORY_LIMIT);
        Some(seq)
    }

    /// Records what the actuator did with decision `seq`; a failure of the newest decision
    /// is retried at `retry_at`. Returns false when the decision is no longer kept.
    pub fn set_outcome(
        &mut self,
        seq: u64,
        outcome: Outcome,
        detail: String,
        retry_at: Option<SystemTime>,
    ) -> bool {
        let newest = self.last().map(|d| d.seq) == Some(seq);
        let Some(decision) = self.history.iter_mut().find(|d| d.seq == seq) else {
            return false;
        };
        decision.outcome = outcome;
        decision.outcome_detail = detail;
        if newest {
            self.next_retry_at = match outcome {
                Outcome::Failed => retry_at,
                _ => None,
            };
        }
        true
    }

    /// When the cooldown after the last change ends, if it has not ended at `now`.
    pub fn cooldown_until(&self, cooldown: Duration, now: SystemTime) -> Option<SystemTime> {
        let until = self.last_change_at? + cooldown;
        (until > now).then_some(until)
    }

    /// The newest decision if its failed actuation is due for another try at `now`.
    pub fn retry_due(&self, now: SystemTime) -> Option<&Decision> {
        let due = self.next_retry_at.is_some_and(|at| at <= now);
        self.last().filter(|d| due && d.outcome == Outcome::Failed)
    }
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The autoscaler's fence failed: this replica no longer leads.
    #[error("this replica no longer leads; the new leader decides")]
    Deposed,
    #[error(
        "the scaling record of {service} kept changing under {WRITE_ATTEMPTS} attempts to update it; retry"
    )]
    Contended { service: String },
}

/// Reading and writing scaling records in the store.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    keys: Keys,
}

impl Records {
    pub fn new(store: Arc<dyn Store>, keys: Keys) -> Self {
        Records { store, keys }
    }

    /// The service's record (empty when none is stored) and its mod revision (0: none).
    pub async fn get(&self, service: &str) -> Result<(ScalingRecord, Revision), RecordError> {
        let key = self.keys.key(Kind::Scaling, service);
        match self.store.get(&key).await? {
            Some(kv) => Ok((keys::decode(&kv.key, &kv.value)?, kv.mod_revision)),
            None => Ok((ScalingRecord::default(), 0)),
        }
    }

    /// Every stored record, by service. An unreadable record is logged and left out.
    pub async fn all(
        &self,
    ) -> Result<std::collections::BTreeMap<String, ScalingRecord>, RecordError> {
        let listing = self.store.list(&self.keys.dir(Kind::Scaling)).await?;
        let mut records = std::collections::BTreeMap::new();
        for kv in listing.kvs {
            let Some((Kind::Scaling, service)) = self.keys.parse(&kv.key) else {
                continue;
            };
            match keys::decode::<ScalingRecord>(&kv.key, &kv.value) {
                Ok(record) => {
                    records.insert(service.to_owned(), record);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping an unreadable scaling record; fix or delete it with etcdctl")
                }
            }
        }
        Ok(records)
    }

    /// Applies `change` to the service's record and stores it, retrying when another
    /// writer changed the record meanwhile; `change` returns `Some(result)` to write, or
    /// `None` to leave the record as it is. With a `fence`, the write only happens while
    /// it holds ([`RecordError::Deposed`] otherwise). Returns the record as stored after
    /// the change (or as read, when nothing was written) and `change`'s result.
    pub async fn update<T>(
        &self,
        service: &str,
        fence: Option<&Compare>,
        mut change: impl FnMut(&mut ScalingRecord) -> Option<T>,
    ) -> Result<(ScalingRecord, Option<T>), RecordError> {
        let key = self.keys.key(Kind::Scaling, service);
        for _ in 0..WRITE_ATTEMPTS {
            let (mut record, revision) = self.get(service).await?;
            let Some(result) = change(&mut record) else {
                return Ok((record, None));
            };
            let mut txn = Txn::new().when(Compare::ModRevision {
                key: key.clone(),
                revision,
            });
            if let Some(fence) = fence {
                txn = txn.when(fence.clone());
            }
            let txn = txn.put(key.clone(), keys::encode(&record));
            if self.store.txn(txn).await?.succeeded {
                return Ok((record, Some(result)));
            }
            if fence.is_some() {
                let (_, now) = self.get(service).await?;
                if now == revision {
                    return Err(RecordError::Deposed);
                }
            }
        }
        Err(RecordError::Contended {
            service: service.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    pub(crate) fn decision(desired: u32, source: Source, at: SystemTime) -> Decision {
        Decision {
            seq: 0,
            service: "demo.v1.Echo".into(),
            current_nodes: 3,
            desired_nodes: desired,
            utilization_percent: None,
            reason: "test".into(),
            source,
            decided_by: "tester".into(),
            decided_at: at,
            rule: "manual".into(),
            metrics: Vec::new(),
            outcome: Outcome::Pending,
            outcome_detail: String::new(),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    #[test]
    fn history_is_newest_first_and_bounded() {
        let mut record = ScalingRecord::default();
        for i in 0..30u32 {
            let source = if i % 2 == 0 {
                Source::Auto
            } else {
                Source::Manual
            };
            assert!(
                record
                    .push(decision(i + 4, source, at(u64::from(i))))
                    .is_some()
            );
        }
        assert_eq!(record.history.len(), HISTORY_LIMIT);
        assert_eq!(record.last().unwrap().desired_nodes, 33);
        assert_eq!(record.last().unwrap().seq, 30);
        assert_eq!(record.history.last().unwrap().desired_nodes, 14);
    }

    #[test]
    fn a_repeated_decision_is_not_recorded_again_unless_it_failed() {
        let mut record = ScalingRecord::default();
        assert_eq!(record.push(decision(5, Source::Auto, at(0))), Some(1));
        assert_eq!(record.push(decision(5, Source::Auto, at(10))), None);
        assert_eq!(record.history.len(), 1);
        // Another source, or another count, is a new decision.
        assert_eq!(record.push(decision(5, Source::Manual, at(20))), Some(2));
        assert_eq!(record.push(decision(6, Source::Manual, at(30))), Some(3));
        // Asking again after a failure records it again.
        assert!(record.set_outcome(3, Outcome::Failed, "exit status 1".into(), Some(at(90))));
        assert_eq!(record.push(decision(6, Source::Manual, at(40))), Some(4));
        assert_eq!(
            record.next_retry_at, None,
            "the new decision replaces the retry"
        );
    }

    #[test]
    fn the_cooldown_runs_from_the_last_decision_that_changed_the_count() {
        let mut record = ScalingRecord::default();
        let cooldown = Duration::from_secs(60);
        assert_eq!(record.cooldown_until(cooldown, at(0)), None);
        record.push(decision(5, Source::Manual, at(0)));
        assert_eq!(record.cooldown_until(cooldown, at(30)), Some(at(60)));
        assert_eq!(record.cooldown_until(cooldown, at(60)), None);
        // A decision keeping the count (current 3, desired 3) does not restart it.
        record.push(decision(3, Source::Auto, at(50)));
        assert_eq!(record.last_change_at, Some(at(0)));
    }

    #[test]
    fn a_failed_actuation_is_due_for_retry_only_at_its_time() {
        let mut record = ScalingRecord::default();
        let seq = record.push(decision(5, Source::Auto, at(0))).unwrap();
        record.set_outcome(seq, Outcome::Failed, "boom".into(), Some(at(60)));
        assert!(record.retry_due(at(59)).is_none());
        assert_eq!(record.retry_due(at(60)).map(|d| d.seq), Some(seq));
        record.set_outcome(seq, Outcome::Executed, "exit status 0".into(), None);
        assert!(record.retry_due(at(120)).is_none());
        assert_eq!(record.next_retry_at, None);
    }

    #[tokio::test]
    async fn updates_survive_in_the_store_and_a_failed_fence_writes_nothing() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/meridian/");
        let records = Records::new(Arc::clone(&store), keys.clone());
        let (_, seq) = records
            .update("demo.v1.Echo", None, |r| {
                r.push(decision(5, Source::Manual, at(0)))
            })
            .await
            .unwrap();
        assert_eq!(seq, Some(1));
        let (stored, revision) = records.get("demo.v1.Echo").await.unwrap();
        assert!(revision > 0);
        assert_eq!(stored.last().unwrap().desired_nodes, 5);
        assert_eq!(stored.last_change_at, Some(at(0)));

        // A fence on a leader key that is not there (this replica does not lead).
        let fence = Compare::ModRevision {
            key: keys.leader(),
            revision: 42,
        };
        let err = records
            .update("demo.v1.Echo", Some(&fence), |r| {
                r.push(decision(7, Source::Auto, at(10)))
            })
            .await
            .unwrap_err();
        assert!(matches!(err, RecordError::Deposed), "{err}");
        let (after, _) = records.get("demo.v1.Echo").await.unwrap();
        assert_eq!(after, stored, "a deposed leader's write changes nothing");

        // A change that declines writes nothing.
        let (_, none) = records
            .update("demo.v1.Echo", None, |r| {
                r.push(decision(5, Source::Manual, at(20)))
            })
            .await
            .unwrap();
        assert_eq!(none, None);
        assert_eq!(records.get("demo.v1.Echo").await.unwrap().1, revision);
    }
}
