//! The autoscaler: a leader reconciler that, every load-report interval (the dynamic
//! configuration's `load_report_interval_ms`, default 5 s), asks each autoscaled
//! service's engine what it should have, records a decision when that differs from
//! both the current count and the last decision, and has the service's actuator carry it
//! out off the loop (so a slow webhook does not hold up other services; one actuation at
//! a time per service). It also retries a failed actuation once its retry time (the
//! cooldown after the failure) has come, for manual decisions too.
//!
//! Each service's engine is kept across ticks (its stabilisation windows and forecast
//! need the history) in [`Engines`], which `RecommendScaling` also reads. The load comes
//! from a [`LoadSource`]: the leader's aggregation of the proxies' load reports.
//!
//! Every record write carries the leader fence; the cooldown and the history live in the
//! store, so a new leader continues where the old one stopped (its engines start empty:
//! the stabilisation windows fill again).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use meridian_shared::Shutdown;
use meridian_shared::domain::{EventKind, ScalingActuator, ServicePolicy};

use super::actuator::{Execution, webhook};
use super::engine::{Recommendation, ServiceAutoscaler};
use super::load::LoadView;
use super::record::{Decision, Metric, Outcome, RecordError, ScalingRecord, Source};
use super::{Observation, ServiceLoad};
use crate::leader::Leadership;
use crate::store::Compare;
use crate::topology::{StateHandle, TopologyState};

/// The tick when the dynamic configuration sets no load-report interval.
const DEFAULT_TICK: Duration = Duration::from_secs(5);
/// How long past its actuator's longest run a pending decision waits before the leader
/// takes it as orphaned.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);
/// Who autoscaler decisions are by.
pub const AUTOSCALER: &str = "autoscaler";

/// Where the autoscaler gets each service's load (all regions together).
pub trait LoadSource: Send + Sync {
    fn services(&self) -> BoxFuture<'_, BTreeMap<String, ServiceLoad>>;
}

/// No load known: every observation has `load: None`.
pub struct NoLoad;

impl LoadSource for NoLoad {
    fn services(&self) -> BoxFuture<'_, BTreeMap<String, ServiceLoad>> {
        Box::pin(async { BTreeMap::new() })
    }
}

/// The proxies' reports, as every replica aggregated them.
impl LoadSource for LoadView {
    fn services(&self) -> BoxFuture<'_, BTreeMap<String, ServiceLoad>> {
        Box::pin(LoadView::services(self))
    }
}

/// A service's decision rule: the engine, or a script in tests.
pub trait Recommend: Send {
    fn recommend(
        &mut self,
        policy: &meridian_shared::domain::ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation;

    fn preview(
        &self,
        policy: &meridian_shared::domain::ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation;

    /// Takes in a recommendation made earlier (by a previous leader) for the
    /// stabilisation windows.
    fn remember(&mut self, _at: SystemTime, _nodes: u32) {}
}

impl Recommend for ServiceAutoscaler {
    fn recommend(
        &mut self,
        policy: &meridian_shared::domain::ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation {
        ServiceAutoscaler::recommend(self, policy, observation, last_change)
    }

    fn preview(
        &self,
        policy: &meridian_shared::domain::ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation {
        ServiceAutoscaler::preview(self, policy, observation, last_change)
    }

    fn remember(&mut self, at: SystemTime, nodes: u32) {
        self.remember_recommendation(at, nodes);
    }
}

type EngineFactory = Arc<dyn Fn() -> Box<dyn Recommend> + Send + Sync>;

/// One engine per autoscaled service, kept across ticks.
#[derive(Clone)]
pub struct Engines {
    factory: EngineFactory,
    engines: Arc<Mutex<HashMap<String, Box<dyn Recommend>>>>,
}

impl Default for Engines {
    fn default() -> Self {
        Engines::with_factory(|| Box::new(ServiceAutoscaler::new()))
    }
}

impl Engines {
    /// Engines made by `factory` (tests script their recommendations this way).
    pub fn with_factory(factory: impl Fn() -> Box<dyn Recommend> + Send + Sync + 'static) -> Self {
        Engines {
            factory: Arc::new(factory),
            engines: Arc::default(),
        }
    }

    /// The service's engine's recommendation; an engine made now (a new leader, a newly
    /// autoscaled service) first takes in the stored decisions, so a scale-down the
    /// previous leader's window was holding back stays held.
    fn recommend(
        &self,
        policy: &ServicePolicy,
        observation: &Observation,
        record: &ScalingRecord,
    ) -> Recommendation {
        let mut engines = self.engines.lock().expect("not poisoned");
        engines
            .entry(policy.name.clone())
            .or_insert_with(|| {
                let mut engine = (self.factory)();
                for decision in record.history.iter().rev() {
                    engine.remember(decision.decided_at, decision.desired_nodes);
                }
                engine
            })
            .recommend(&policy.scaling, observation, record.last_change_at)
    }

    /// What the service's engine would recommend now, without remembering it: the
    /// running engine's view on the leader, a fresh engine's elsewhere.
    pub fn preview(
        &self,
        policy: &ServicePolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation {
        let engines = self.engines.lock().expect("not poisoned");
        match engines.get(&policy.name) {
            Some(engine) => engine.preview(&policy.scaling, observation, last_change),
            None => (self.factory)().preview(&policy.scaling, observation, last_change),
        }
    }

    /// Forgets the engines of services no longer autoscaled.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut engines = self.engines.lock().expect("not poisoned");
        engines.retain(|service, _| keep(service));
    }

    /// Forgets every engine (a new term starts fresh).
    fn clear(&self) {
        self.engines.lock().expect("not poisoned").clear();
    }
}

/// Usable nodes serving the policy's service in its federation: status healthy or not
/// yet checked.
pub fn usable_nodes(state: &TopologyState, policy: &ServicePolicy) -> u32 {
    let count = state
        .nodes
        .values()
        .filter(|n| {
            n.value.federation == policy.federation
                && n.value.serves(&policy.name)
                && n.value.status.is_routable()
        })
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// The recommendation as a decision to record.
pub fn decision_of(
    service: &str,
    recommendation: Recommendation,
    source: Source,
    decided_by: &str,
    at: SystemTime,
    has_actuator: bool,
) -> Decision {
    Decision {
        seq: 0,
        service: service.to_owned(),
        current_nodes: recommendation.current_nodes,
        desired_nodes: recommendation.desired_nodes,
        utilization_percent: recommendation.utilization_percent,
        reason: recommendation.reason,
        source,
        decided_by: decided_by.to_owned(),
        decided_at: at,
        rule: recommendation.rule.to_owned(),
        metrics: recommendation
            .metrics
            .into_iter()
            .map(|m| Metric {
                name: m.name.to_owned(),
                current: m.current,
                target: m.target,
                forecast: m.forecast,
                recommended_nodes: m.recommended_nodes,
            })
            .collect(),
        outcome: if has_actuator {
            Outcome::Pending
        } else {
            Outcome::None
        },
        outcome_detail: if has_actuator {
            String::new()
        } else {
            "no actuator is configured; the decision is only recorded".into()
        },
    }
}

/// The longest one actuation can take: the exec timeout, or every webhook attempt at its
/// timeout with the longest backoff between them.
fn longest_actuation(actuator: &ScalingActuator) -> Duration {
    match actuator {
        ScalingActuator::Exec(exec) => exec.effective_timeout(),
        ScalingActuator::Webhook(hook) => {
            let attempts = hook.effective_max_attempts();
            hook.effective_timeout() * attempts + webhook::BACKOFF_MAX * attempts
        }
    }
}

/// Counts a recorded decision on `/metrics`.
pub fn count_decision(decision: &Decision) {
    metrics::counter!("meridian_control_scaling_decisions_total", "source" => decision.source.as_str())
        .increment(1);
}

/// The `scalingDecided` event's message.
pub fn decided_message(decision: &Decision) -> String {
    format!(
        "{}: {} -> {} nodes (rule {}, decision {}): {}",
        decision.service,
        decision.current_nodes,
        decision.desired_nodes,
        decision.rule,
        decision.seq,
        decision.reason
    )
}

/// The leader's autoscaler.
#[derive(Clone)]
pub struct Autoscaler {
    pub state: StateHandle,
    pub load: Arc<dyn LoadSource>,
    pub engines: Engines,
    pub execution: Execution,
}

impl Autoscaler {
    /// Decides and retries every tick while `leadership` lasts (until `term`).
    pub async fn run(self, leadership: Leadership, term: Shutdown) {
        self.engines.clear();
        let fence = leadership.fence();
        loop {
            self.tick(&fence).await;
            tokio::select! {
                _ = term.wait() => return,
                _ = tokio::time::sleep(self.interval()) => {}
            }
        }
    }

    fn interval(&self) -> Duration {
        match self.state.borrow().config.value.load_report_interval_ms {
            0 => DEFAULT_TICK,
            ms => Duration::from_millis(u64::from(ms)),
        }
    }

    /// One look at every service with autoscaling or an actuator.
    pub(crate) async fn tick(&self, fence: &Compare) {
        let policies: Vec<ServicePolicy> = self
            .state
            .borrow()
            .services
            .values()
            .filter(|s| s.value.scaling.autoscale || s.value.scaling.actuator.is_some())
            .map(|s| s.value.clone())
            .collect();
        self.engines.retain(|service| {
            policies
                .iter()
                .any(|p| p.name == service && p.scaling.autoscale)
        });
        if policies.is_empty() {
            return;
        }
        let records = match self.execution.records.all().await {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(error = %e, "autoscaler: cannot read the scaling records; trying again next tick");
                return;
            }
        };
        let loads = if policies.iter().any(|p| p.scaling.autoscale) {
            self.load.services().await
        } else {
            BTreeMap::new()
        };
        let now = SystemTime::now();
        for policy in policies {
            let record = records.get(&policy.name).cloned().unwrap_or_default();
            if policy.scaling.autoscale
                && self
                    .decide(&policy, &record, loads.get(&policy.name), now, fence)
                    .await
            {
                continue;
            }
            self.retry_if_due(&policy, &record, now, fence);
            self.adopt_if_orphaned(&policy, &record, now, fence).await;
        }
    }

    /// Marks the newest decision failed, for a retry at the next tick, when it is still
    /// pending long after its actuator must have ended and no actuation of the service
    /// runs here: the replica carrying it out stopped (a leader that lost its lease, a
    /// replica that crashed during `ScaleService`) before recording the outcome.
    async fn adopt_if_orphaned(
        &self,
        policy: &ServicePolicy,
        record: &ScalingRecord,
        now: SystemTime,
        fence: &Compare,
    ) {
        let Some(actuator) = &policy.scaling.actuator else {
            return;
        };
        let Some(pending) = record.last().filter(|d| d.outcome == Outcome::Pending) else {
            return;
        };
        let deadline = pending.decided_at + longest_actuation(actuator) + ORPHAN_GRACE;
        if deadline > now || self.execution.actuators.is_busy(&policy.name) {
            return;
        }
        let seq = pending.seq;
        let detail = format!(
            "no outcome was recorded by {}; the replica carrying it out stopped, so the leader runs it again",
            prost_types::Timestamp::from(deadline)
        );
        let adopted = self
            .execution
            .records
            .update(&policy.name, Some(fence), |r| {
                (r.last().map(|d| (d.seq, d.outcome)) == Some((seq, Outcome::Pending)))
                    .then(|| r.set_outcome(seq, Outcome::Failed, detail.clone(), Some(now)))
            })
            .await;
        match adopted {
            Ok((_, Some(_))) => {
                self.execution
                    .events
                    .record(
                        EventKind::ScalingFailed,
                        format!("service/{}", policy.name),
                        format!(
                            "scaling {} to {} nodes (decision {seq}): {detail}",
                            policy.name, pending.desired_nodes
                        ),
                        AUTOSCALER.into(),
                    )
                    .await;
            }
            Ok((_, None)) | Err(RecordError::Deposed) => {}
            Err(e) => {
                tracing::warn!(error = %e, service = %policy.name, "autoscaler: could not mark an orphaned actuation failed")
            }
        }
    }

    /// Records and carries out a new decision for the service, if the engine makes one;
    /// returns whether it did.
    async fn decide(
        &self,
        policy: &ServicePolicy,
        record: &ScalingRecord,
        load: Option<&ServiceLoad>,
        now: SystemTime,
        fence: &Compare,
    ) -> bool {
        let observation = Observation {
            at: now,
            current_nodes: usable_nodes(&self.state.borrow(), policy),
            load: load.cloned(),
        };
        let recommendation = self.engines.recommend(policy, &observation, record);
        let desired = recommendation.desired_nodes;
        // Nothing to do when the nodes are already there, nor when the actuator was
        // already told (the nodes it asked for may still be starting).
        if desired == recommendation.current_nodes
            || record.last().is_some_and(|d| d.desired_nodes == desired)
        {
            return false;
        }
        let actuator = policy.scaling.actuator.clone();
        let mut decision = decision_of(
            &policy.name,
            recommendation,
            Source::Auto,
            AUTOSCALER,
            now,
            actuator.is_some(),
        );
        let pushed = self
            .execution
            .records
            .update(&policy.name, Some(fence), |r| r.push(decision.clone()))
            .await;
        match pushed {
            Ok((_, Some(seq))) => {
                decision.seq = seq;
                count_decision(&decision);
            }
            Ok((_, None)) => return false,
            Err(RecordError::Deposed) => {
                tracing::info!(service = %policy.name, "autoscaler: not recording the decision: this replica no longer leads");
                return false;
            }
            Err(e) => {
                tracing::warn!(error = %e, service = %policy.name, "autoscaler: could not record the decision; deciding again next tick");
                return false;
            }
        }
        self.execution
            .events
            .record(
                EventKind::ScalingDecided,
                format!("service/{}", policy.name),
                decided_message(&decision),
                AUTOSCALER.into(),
            )
            .await;
        if let Some(actuator) = actuator {
            let execution = self.execution.clone();
            let (cooldown, fence) = (policy.scaling.effective_cooldown(), fence.clone());
            tokio::spawn(async move {
                execution
                    .carry_out(actuator, decision, cooldown, Some(fence))
                    .await
            });
        }
        true
    }

    /// Runs the actuator again for the newest decision if its failure's retry time came
    /// and no actuation of the service is running.
    fn retry_if_due(
        &self,
        policy: &ServicePolicy,
        record: &ScalingRecord,
        now: SystemTime,
        fence: &Compare,
    ) {
        let Some(decision) = record.retry_due(now) else {
            return;
        };
        let Some(actuator) = policy.scaling.actuator.clone() else {
            return;
        };
        if self.execution.actuators.is_busy(&policy.name) {
            return;
        }
        tracing::info!(service = %policy.name, seq = decision.seq, desired = decision.desired_nodes, "autoscaler: retrying the failed actuation");
        let execution = self.execution.clone();
        let (decision, cooldown, fence) = (
            decision.clone(),
            policy.scaling.effective_cooldown(),
            fence.clone(),
        );
        tokio::spawn(async move {
            execution
                .carry_out(actuator, decision, cooldown, Some(fence))
                .await
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Instant;

    use meridian_shared::domain::{
        Event, ExecActuator, Node, NodeStatus, ScalingActuator, ScalingPolicy,
    };

    use super::*;
    use crate::events::EventLog;
    use crate::keys::{self, Keys, Kind};
    use crate::scaling::actuator::{Actuators, Allowlist};
    use crate::scaling::record::Records;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Store, Txn};
    use crate::topology::StateFollower;

    const SERVICE: &str = "demo.v1.Echo";

    /// Recommends whatever the test sets, and notes the last change it was given.
    struct Scripted(Arc<AtomicU32>, Arc<Mutex<Option<SystemTime>>>);

    impl Recommend for Scripted {
        fn recommend(
            &mut self,
            policy: &ScalingPolicy,
            observation: &Observation,
            last_change: Option<SystemTime>,
        ) -> Recommendation {
            *self.1.lock().unwrap() = last_change;
            self.preview(policy, observation, last_change)
        }

        fn preview(
            &self,
            _: &ScalingPolicy,
            observation: &Observation,
            _: Option<SystemTime>,
        ) -> Recommendation {
            Recommendation {
                current_nodes: observation.current_nodes,
                desired_nodes: self.0.load(Ordering::SeqCst),
                rule: "target",
                reason: "scripted".into(),
                metrics: Vec::new(),
                utilization_percent: Some(90.0),
            }
        }
    }

    struct Setup {
        autoscaler: Autoscaler,
        store: Arc<dyn Store>,
        keys: Keys,
        desired: Arc<AtomicU32>,
        last_change_seen: Arc<Mutex<Option<SystemTime>>>,
        fence: Compare,
        dir: tempfile::TempDir,
        _follower: Shutdown,
    }

    fn script(dir: &Path, exit: i32) -> PathBuf {
        let path = dir.join(format!("scale-{exit}.sh"));
        let body = format!(
            "#!/bin/sh\necho \"$MERIDIAN_SCALE_DESIRED $MERIDIAN_SCALE_SOURCE\" >> {}/runs\nexit {exit}\n",
            dir.display()
        );
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    async fn put<T: serde::Serialize>(store: &Arc<dyn Store>, key: String, value: &T) -> i64 {
        store
            .txn(Txn::new().put(key, keys::encode(value)))
            .await
            .unwrap()
            .revision
    }

    /// A service with three healthy nodes (and one failed), autoscaled, with an exec
    /// actuator exiting with `exit`.
    async fn setup(exit: i32, cooldown_ms: u32) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::in_memory());
        let keys = Keys::new("/meridian/");
        let command = script(dir.path(), exit);
        let policy = ServicePolicy {
            name: SERVICE.into(),
            federation: "prod".into(),
            scaling: ScalingPolicy {
                autoscale: true,
                cooldown_ms,
                actuator: Some(ScalingActuator::Exec(ExecActuator {
                    command: command.to_str().unwrap().into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
            ..Default::default()
        };
        put(&store, keys.key(Kind::Service, SERVICE), &policy).await;
        for (id, status) in [
            ("n1", NodeStatus::Healthy),
            ("n2", NodeStatus::Healthy),
            ("n3", NodeStatus::Unknown),
            ("n4", NodeStatus::Failed),
        ] {
            let node = Node {
                id: id.into(),
                address: "127.0.0.1:1".into(),
                federation: "prod".into(),
                region: "eu".into(),
                zone: "eu-a".into(),
                services: vec![SERVICE.into()],
                status,
                ..Default::default()
            };
            put(&store, keys.key(Kind::Node, id), &node).await;
        }
        let leader_revision = put(&store, keys.leader(), &"cp-a").await;
        let fence = Compare::ModRevision {
            key: keys.leader(),
            revision: leader_revision,
        };
        let (follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
        let follower_stop = Shutdown::new();
        tokio::spawn(follower.run(follower_stop.clone()));
        assert!(
            state
                .wait_for(leader_revision, Duration::from_secs(5))
                .await
        );
        let events = EventLog::new(Arc::clone(&store), keys.clone(), state.clone());
        let desired = Arc::new(AtomicU32::new(3));
        let last_change_seen = Arc::new(Mutex::new(None));
        let (scripted, seen) = (Arc::clone(&desired), Arc::clone(&last_change_seen));
        let autoscaler = Autoscaler {
            state,
            load: Arc::new(NoLoad),
            engines: Engines::with_factory(move || {
                Box::new(Scripted(Arc::clone(&scripted), Arc::clone(&seen)))
            }),
            execution: Execution {
                actuators: Actuators::new(Allowlist::new(vec![command], Vec::new())),
                records: Records::new(Arc::clone(&store), keys.clone()),
                events,
            },
        };
        Setup {
            autoscaler,
            store,
            keys,
            desired,
            last_change_seen,
            fence,
            dir,
            _follower: follower_stop,
        }
    }

    impl Setup {
        async fn record(&self) -> ScalingRecord {
            self.autoscaler
                .execution
                .records
                .get(SERVICE)
                .await
                .unwrap()
                .0
        }

        async fn events(&self) -> Vec<Event> {
            let listing = self.store.list(&self.keys.dir(Kind::Event)).await.unwrap();
            listing
                .kvs
                .iter()
                .map(|kv| keys::decode(&kv.key, &kv.value).unwrap())
                .collect()
        }

        fn runs(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("runs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned)
                .collect()
        }

        /// Waits until the newest decision has an outcome other than pending.
        async fn settled(&self) -> Decision {
            let started = Instant::now();
            loop {
                let record = self.record().await;
                if let Some(last) = record.last().filter(|d| d.outcome != Outcome::Pending) {
                    return last.clone();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the actuation did not finish: {record:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    #[tokio::test]
    async fn a_changed_recommendation_is_recorded_once_and_carried_out() {
        let setup = setup(0, 0).await;
        setup.autoscaler.tick(&setup.fence).await;
        assert!(
            setup.record().await.history.is_empty(),
            "3 usable nodes and 3 desired: nothing to decide"
        );

        setup.desired.store(5, Ordering::SeqCst);
        setup.autoscaler.tick(&setup.fence).await;
        let decision = setup.settled().await;
        assert_eq!(
            (decision.current_nodes, decision.desired_nodes),
            (3, 5),
            "healthy and unknown nodes count, the failed one does not"
        );
        assert_eq!(decision.source, Source::Auto);
        assert_eq!(decision.outcome, Outcome::Executed, "{decision:?}");
        assert_eq!(setup.runs(), ["5 auto"]);
        assert!(setup.record().await.last_change_at.is_some());

        // The same recommendation again changes nothing and runs nothing.
        setup.autoscaler.tick(&setup.fence).await;
        setup.autoscaler.tick(&setup.fence).await;
        assert_eq!(setup.record().await.history.len(), 1);
        assert_eq!(setup.runs().len(), 1);

        let kinds: Vec<EventKind> = setup.events().await.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::ScalingDecided, EventKind::ScalingExecuted]
        );
    }

    #[tokio::test]
    async fn a_failed_actuation_is_retried_after_the_cooldown_not_before() {
        let setup = setup(1, 60_000).await;
        setup.desired.store(6, Ordering::SeqCst);
        setup.autoscaler.tick(&setup.fence).await;
        let failed = setup.settled().await;
        assert_eq!(failed.outcome, Outcome::Failed);
        let record = setup.record().await;
        let retry_at = record.next_retry_at.expect("a retry is planned");
        let wait = retry_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(
            wait > Duration::from_secs(55),
            "the retry waits for the cooldown: {wait:?}"
        );
        for _ in 0..3 {
            setup.autoscaler.tick(&setup.fence).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(setup.runs().len(), 1, "no tight retry loop");

        // Once the retry time has come (moved here instead of waiting a minute), the
        // next tick runs the actuator again for the same decision.
        setup
            .autoscaler
            .execution
            .records
            .update(SERVICE, None, |r| {
                r.next_retry_at = Some(SystemTime::now());
                Some(())
            })
            .await
            .unwrap();
        setup.autoscaler.tick(&setup.fence).await;
        let started = Instant::now();
        while setup.runs().len() < 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "no retry");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let record = setup.record().await;
        assert_eq!(record.history.len(), 1, "a retry is not a new decision");
        let failures = setup
            .events()
            .await
            .iter()
            .filter(|e| e.kind == EventKind::ScalingFailed)
            .count();
        assert!(failures >= 1);
    }

    /// A decision written straight into the store, as another replica would have.
    async fn stored_decision(setup: &Setup, desired: u32, at: SystemTime) -> u64 {
        let decision = Decision {
            seq: 0,
            service: SERVICE.into(),
            current_nodes: 3,
            desired_nodes: desired,
            utilization_percent: None,
            reason: "before the leader changed".into(),
            source: Source::Manual,
            decided_by: "alice".into(),
            decided_at: at,
            rule: "manual".into(),
            metrics: Vec::new(),
            outcome: Outcome::Pending,
            outcome_detail: String::new(),
        };
        let (_, seq) = setup
            .autoscaler
            .execution
            .records
            .update(SERVICE, None, |r| r.push(decision.clone()))
            .await
            .unwrap();
        seq.unwrap()
    }

    #[tokio::test]
    async fn a_new_leader_decides_with_the_stored_cooldown_start() {
        let setup = setup(0, 0).await;
        let changed_at = SystemTime::now() - Duration::from_secs(20);
        let seq = stored_decision(&setup, 5, changed_at).await;
        setup
            .autoscaler
            .execution
            .records
            .update(SERVICE, None, |r| {
                r.set_outcome(seq, Outcome::Executed, "done".into(), None)
                    .then_some(())
            })
            .await
            .unwrap();
        // A fresh autoscaler (a new leader's) hands the stored start to its engine.
        setup.autoscaler.tick(&setup.fence).await;
        assert_eq!(*setup.last_change_seen.lock().unwrap(), Some(changed_at));
        assert_eq!(setup.record().await.history.len(), 1, "history kept");
    }

    #[tokio::test]
    async fn a_decision_left_pending_by_a_stopped_replica_is_run_again() {
        let setup = setup(0, 0).await;
        // Pending for ten minutes: far longer than the 30 s exec timeout.
        stored_decision(&setup, 5, SystemTime::now() - Duration::from_secs(600)).await;
        setup.autoscaler.tick(&setup.fence).await;
        let record = setup.record().await;
        let last = record.last().unwrap();
        assert_eq!(last.outcome, Outcome::Failed, "{last:?}");
        assert!(last.outcome_detail.contains("stopped"), "{last:?}");
        setup.autoscaler.tick(&setup.fence).await;
        let started = Instant::now();
        while setup.runs().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "not run again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(setup.runs(), ["5 manual"]);
        assert_eq!(setup.settled().await.outcome, Outcome::Executed);

        // A decision pending for a moment is left to the replica running it.
        stored_decision(&setup, 4, SystemTime::now()).await;
        setup.autoscaler.tick(&setup.fence).await;
        assert_eq!(
            setup.record().await.last().unwrap().outcome,
            Outcome::Pending
        );
    }

    #[tokio::test]
    async fn a_deposed_leader_records_nothing() {
        let setup = setup(0, 0).await;
        let stale = Compare::ModRevision {
            key: setup.keys.leader(),
            revision: 1,
        };
        setup.desired.store(5, Ordering::SeqCst);
        setup.autoscaler.tick(&stale).await;
        assert!(setup.record().await.history.is_empty());
        assert!(setup.runs().is_empty(), "nothing is carried out either");
    }

    #[tokio::test]
    async fn a_policy_no_longer_allowed_fails_at_run_time() {
        let mut setup = setup(0, 0).await;
        setup.autoscaler.execution.actuators = Actuators::new(Allowlist::default());
        setup.desired.store(4, Ordering::SeqCst);
        setup.autoscaler.tick(&setup.fence).await;
        let decision = setup.settled().await;
        assert_eq!(decision.outcome, Outcome::Failed);
        assert!(
            decision.outcome_detail.contains("--scaling-exec-allow"),
            "{}",
            decision.outcome_detail
        );
        assert!(setup.runs().is_empty());
    }
}
