//! The autoscaler's decision rule for one service: pure (no I/O, no clock of its own; the
//! time comes with each [`Observation`]), so every rule is testable with explicit instants.
//!
//! A recommendation is made in this order, each step saying in the reason what it did:
//!
//! 1. **Targets** ([`hpa`]): per target the policy sets and the load measures, the HPA rule
//!    `ceil(current × metric / target)`, no change inside the tolerance band; the largest
//!    recommendation wins. Without load (no proxy reported a call in the window) the
//!    metrics recommend the current count: silence may be a broken reporting path as well
//!    as an idle service, and neither is a reason to remove nodes.
//! 2. **Forecast** ([`forecast`], predictive scaling on): the same rule on each metric's
//!    forecast at the horizon; it only ever raises the count (a rising forecast can also
//!    hold off a scale-down, a falling one never causes one). Rule "predictive" when it is
//!    what raised the count.
//! 3. **Stabilisation** ([`stabilize`]): the HPA's windows over the raw recommendations of
//!    steps 1–2.
//! 4. **Step**: at most `max_step` nodes added or removed by one decision (rule "step").
//! 5. **Bounds**: `min_nodes`, raised by the strongest open scheduled window
//!    ([`schedule`], rule "schedule" or "min"), and `max_nodes` (rule "max"). Bounds are
//!    hard: they are not step-limited, so an opening window gets its nodes at once.
//! 6. **Cooldown**: within `cooldown` after the last change the count stays — except that
//!    the bounds still hold (safety first: a minimum the operator or a window promised, or a
//!    maximum the operator set, is not postponed by a cooldown). Rule "cooldown" when a
//!    change was held back.
//!
//! The rule is "none" when the count does not change (and no cooldown held a change back).

mod forecast;
mod hpa;
pub mod schedule;
mod stabilize;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use meridian_shared::domain::ScalingPolicy;

use super::{Observation, ServiceLoad};
use forecast::{Method, MetricHistory};
use hpa::Target;
use stabilize::{RecommendationMemory, Stabilised};

/// One metric behind a recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading {
    /// "utilization_percent", "calls_per_second_per_node", "in_flight_per_node",
    /// "latency_p99_ms".
    pub name: &'static str,
    pub current: f64,
    pub target: f64,
    /// The forecast at the horizon, when predictive scaling is on, in the metric's unit at
    /// the current node count.
    pub forecast: Option<f64>,
    /// Nodes this metric alone recommends: the HPA rule on its current value, or on its
    /// forecast when that asks for more.
    pub recommended_nodes: u32,
}

/// What the engine recommends now.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub current_nodes: u32,
    pub desired_nodes: u32,
    /// "target", "predictive", "schedule", "min", "max", "step", "cooldown" or "none".
    pub rule: &'static str,
    /// Why, in words an operator can act on.
    pub reason: String,
    pub metrics: Vec<MetricReading>,
    /// The utilisation behind it, percent, if known.
    pub utilization_percent: Option<f64>,
}

/// One service's autoscaler: its memory of past observations and recommendations (for
/// stabilisation windows and forecasts).
#[derive(Debug, Clone, Default)]
pub struct ServiceAutoscaler {
    /// Demand history per metric name, for the forecasts.
    histories: BTreeMap<&'static str, MetricHistory>,
    /// Raw recommendations, for the stabilisation windows.
    memory: RecommendationMemory,
}

impl ServiceAutoscaler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes in an observation (history for the forecast and stabilisation) and says what
    /// to do now. `last_change` is when the last decision that changed the count was made
    /// (from the stored record), for the cooldown.
    pub fn recommend(
        &mut self,
        policy: &ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation {
        let now = observation.at;
        let current = observation.current_nodes;
        let proposal = match observation
            .load
            .as_ref()
            .filter(|l| l.calls_per_second > 0.0)
        {
            Some(load) => self.assess_targets(policy, load, current, now),
            None => Proposal::unchanged(
                current,
                "no proxy reported calls for the service in the window, so the metrics \
                 recommend no change"
                    .into(),
            ),
        };
        let mut draft = Draft {
            current,
            desired: proposal.nodes,
            rule: if proposal.predictive {
                "predictive"
            } else {
                "target"
            },
            reasons: vec![proposal.reason],
        };
        let stabilised = self.memory.stabilise(
            now,
            current,
            proposal.nodes,
            policy.effective_scale_up_stabilization(),
            policy.effective_scale_down_stabilization(),
        );
        draft.stabilise(stabilised);
        draft.limit_step(policy.max_step);
        let bounds = Bounds::of(policy, now);
        draft.bound(&bounds);
        if let Some(until) = cooldown_until(policy, last_change).filter(|until| *until > now) {
            draft.cool_down(&bounds, until, policy.effective_cooldown());
        }
        draft.finish(proposal.metrics, observation)
    }

    /// Seeds the stabilisation windows with a recommendation made at `at`, e.g. by a new
    /// leader from the stored decisions of the last scale-down window, so a leader change
    /// does not reopen the door to a scale-down the old leader's window was holding back.
    pub fn remember_recommendation(&mut self, at: SystemTime, nodes: u32) {
        self.memory.remember(at, nodes);
    }

    /// The same as [`Self::recommend`] without remembering the observation: what
    /// `RecommendScaling` shows. (It works on a copy of the memory, so it is exactly what
    /// `recommend` would say now.)
    pub fn preview(
        &self,
        policy: &ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation {
        self.clone().recommend(policy, observation, last_change)
    }

    /// Steps 1 and 2: the HPA rule per measured target, and the forecasts. Records each
    /// metric's demand in its history.
    fn assess_targets(
        &mut self,
        policy: &ScalingPolicy,
        load: &ServiceLoad,
        current: u32,
        now: SystemTime,
    ) -> Proposal {
        let targets = hpa::measured_targets(policy, load, current);
        if targets.is_empty() {
            return Proposal::unchanged(
                current,
                "no target could be measured (utilisation needs ORCA reports or node \
                 capacities; p99 needs completed calls), so the metrics recommend no change"
                    .into(),
            );
        }
        let tolerance = policy.effective_tolerance_percent();
        let predictive = &policy.predictive;
        let season = if predictive.enabled {
            Duration::from_millis(u64::from(predictive.season_ms))
        } else {
            Duration::ZERO
        };
        let horizon = predictive.effective_horizon();
        let base = f64::from(hpa::base_nodes(current));

        let mut metrics = Vec::with_capacity(targets.len());
        let mut reactive_best: Option<(u32, Target)> = None;
        let mut forecast_best: Option<(u32, Target, f64, Method)> = None;
        for t in targets {
            let reactive = hpa::recommend(current, t.current, t.target, tolerance);
            let history = self.histories.entry(t.name).or_default();
            history.record(now, t.current * base, season);
            let forecast = predictive
                .enabled
                .then(|| history.forecast(horizon, season))
                .flatten()
                .map(|f| (f.value / base, f.method));
            let predicted = forecast.map(|(v, _)| hpa::recommend(current, v, t.target, tolerance));
            if reactive_best.is_none_or(|(n, _)| reactive > n) {
                reactive_best = Some((reactive, t));
            }
            if let (Some(p), Some((v, method))) = (predicted, forecast)
                && forecast_best.is_none_or(|(n, ..)| p > n)
            {
                forecast_best = Some((p, t, v, method));
            }
            metrics.push(MetricReading {
                name: t.name,
                current: t.current,
                target: t.target,
                forecast: forecast.map(|(v, _)| v),
                recommended_nodes: reactive.max(predicted.unwrap_or(0)),
            });
        }
        let (reactive, winner) = reactive_best.expect("at least one target");
        let mut reason = describe_target(&winner, current, reactive, tolerance);
        let mut nodes = reactive;
        let mut raised = false;
        if let Some((predicted, t, value, method)) = forecast_best
            && predicted > reactive
        {
            nodes = predicted;
            raised = true;
            reason = format!(
                "{reason}; forecast ({}): {} in {} (measured {}) against target {} → {}",
                match method {
                    Method::Holt => "Holt's linear trend",
                    Method::HoltWinters => "Holt-Winters",
                },
                t.describe(value),
                words(horizon),
                t.describe(t.current),
                t.describe_target(),
                count(predicted),
            );
        }
        Proposal {
            nodes,
            predictive: raised && nodes > current,
            reason,
            metrics,
        }
    }
}

/// A recommendation on its way through steps 3 to 6.
struct Draft {
    current: u32,
    desired: u32,
    rule: &'static str,
    reasons: Vec<String>,
}

impl Draft {
    fn stabilise(&mut self, stabilised: Stabilised) {
        self.desired = stabilised.nodes();
        match stabilised {
            Stabilised::AsIs(_) => {}
            Stabilised::HeldUp { to, lowest, window } => self.reasons.push(format!(
                "held at {to} by the scale-up stabilisation window ({}): the lowest \
                 recommendation in it is {lowest}",
                words(window)
            )),
            Stabilised::HeldDown {
                to,
                highest,
                window,
            } => self.reasons.push(format!(
                "held at {to} by the scale-down stabilisation window ({}): the highest \
                 recommendation in it is {highest}",
                words(window)
            )),
        }
    }

    fn limit_step(&mut self, max_step: u32) {
        if max_step == 0 || self.desired.abs_diff(self.current) <= max_step {
            return;
        }
        self.desired = if self.desired > self.current {
            self.current.saturating_add(max_step)
        } else {
            self.current - max_step
        };
        self.rule = "step";
        self.reasons.push(format!(
            "limited to {}: at most {} per decision (max_step)",
            self.desired,
            count(max_step)
        ));
    }

    fn bound(&mut self, bounds: &Bounds) {
        if let Some((bounded, rule, why)) = bounds.apply(self.desired) {
            self.desired = bounded;
            self.rule = rule;
            self.reasons.push(why);
        }
    }

    /// In the cooldown only the bounds may move the count.
    fn cool_down(&mut self, bounds: &Bounds, until: SystemTime, cooldown: Duration) {
        let would = self.desired;
        match bounds.apply(self.current) {
            _ if would == bounds.clamp(self.current) => {}
            Some((bounded, rule, why)) => {
                self.desired = bounded;
                self.rule = rule;
                self.reasons.push(format!(
                    "{why}, despite the cooldown until {}",
                    schedule::format_utc(until)
                ));
            }
            None => {
                self.desired = self.current;
                self.rule = "cooldown";
                self.reasons.push(format!(
                    "in cooldown until {} ({} after the last change): would go to {would}",
                    schedule::format_utc(until),
                    words(cooldown)
                ));
            }
        }
    }

    fn finish(mut self, metrics: Vec<MetricReading>, observation: &Observation) -> Recommendation {
        if self.desired == self.current && self.rule != "cooldown" {
            self.rule = "none";
            self.reasons
                .push(format!("keeping {}", count(self.current)));
        }
        Recommendation {
            current_nodes: self.current,
            desired_nodes: self.desired,
            rule: self.rule,
            reason: self.reasons.join("; "),
            metrics,
            utilization_percent: observation
                .load
                .as_ref()
                .and_then(|l| l.utilization_percent),
        }
    }
}

/// What steps 1 and 2 propose.
struct Proposal {
    nodes: u32,
    /// The forecast raised the count above both the measured recommendation and current.
    predictive: bool,
    reason: String,
    metrics: Vec<MetricReading>,
}

impl Proposal {
    fn unchanged(current: u32, reason: String) -> Self {
        Proposal {
            nodes: current,
            predictive: false,
            reason,
            metrics: Vec::new(),
        }
    }
}

/// The winning target in words, e.g. "utilisation 92% above target 70% (±10%) → 6 nodes".
fn describe_target(t: &Target, current: u32, recommended: u32, tolerance: u32) -> String {
    let measured = t.describe(t.current);
    let target = t.describe_target();
    if current == 0 {
        format!("{measured} with no usable node → {}", count(recommended))
    } else if recommended == current {
        format!("{measured} within ±{tolerance}% of target {target}")
    } else {
        let side = if t.current > t.target {
            "above"
        } else {
            "below"
        };
        format!(
            "{measured} {side} target {target} (±{tolerance}%) → {}",
            count(recommended)
        )
    }
}

/// The hard bounds now: the minimum (the policy's, raised by an open window) and the
/// maximum.
struct Bounds {
    floor: u32,
    /// The window that raised the floor, in words, if one did.
    window: Option<String>,
    min_nodes: u32,
    ceiling: Option<u32>,
}

impl Bounds {
    fn of(policy: &ScalingPolicy, now: SystemTime) -> Self {
        let open = schedule::strongest_open(&policy.schedules, now)
            .filter(|w| w.window.min_nodes > policy.min_nodes);
        Bounds {
            floor: open
                .as_ref()
                .map_or(policy.min_nodes, |w| w.window.min_nodes),
            window: open.map(|w| {
                let until = w
                    .closes
                    .map(|c| format!(" until {}", schedule::format_utc(c)))
                    .unwrap_or_default();
                format!(
                    "scheduled window {:?} (open since {}{until}) keeps at least {} nodes",
                    w.window.name,
                    schedule::format_utc(w.opened),
                    w.window.min_nodes
                )
            }),
            min_nodes: policy.min_nodes,
            ceiling: (policy.max_nodes > 0).then_some(policy.max_nodes),
        }
    }

    fn clamp(&self, nodes: u32) -> u32 {
        self.apply(nodes).map_or(nodes, |(n, ..)| n)
    }

    /// The bounded count, its rule and why, when a bound changes `nodes`.
    fn apply(&self, nodes: u32) -> Option<(u32, &'static str, String)> {
        if nodes < self.floor {
            return Some(match &self.window {
                Some(why) => (self.floor, "schedule", why.clone()),
                None => (
                    self.floor,
                    "min",
                    format!("min_nodes keeps at least {}", self.min_nodes),
                ),
            });
        }
        match self.ceiling {
            Some(max) if nodes > max => {
                Some((max, "max", format!("max_nodes allows at most {max}")))
            }
            _ => None,
        }
    }
}

fn cooldown_until(policy: &ScalingPolicy, last_change: Option<SystemTime>) -> Option<SystemTime> {
    last_change?.checked_add(policy.effective_cooldown())
}

/// "1 node", "3 nodes".
fn count(nodes: u32) -> String {
    if nodes == 1 {
        "1 node".into()
    } else {
        format!("{nodes} nodes")
    }
}

/// "45 s", "5 min", "250 ms".
fn words(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 && secs < 10 {
        format!("{} ms", d.as_millis())
    } else if secs >= 120 && secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}
