//! A service's scaling policy: node-count bounds, the targets the autoscaler steers by,
//! its damping (tolerance, stabilisation windows, step limit, cooldown), predictive and
//! scheduled scaling, and the actuator that carries decisions out. Numeric fields at 0
//! mean "the documented default" (see `ScalingPolicy` in topology.proto); the
//! `effective_*` helpers resolve them.

use std::time::Duration;

use meridian_proto::v1 as pb;
use serde::{Deserialize, Serialize};

/// HPA-style scaling bounds, targets and actions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScalingPolicy {
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub target_utilization_percent: u32,
    pub tolerance_percent: u32,
    pub scale_down_stabilization_ms: u32,
    pub scale_up_stabilization_ms: u32,
    pub target_calls_per_second_per_node: f64,
    pub target_in_flight_per_node: f64,
    pub target_latency_p99_ms: u32,
    pub max_step: u32,
    pub cooldown_ms: u32,
    pub predictive: PredictiveScaling,
    pub schedules: Vec<ScheduledScaling>,
    pub actuator: Option<ScalingActuator>,
    pub autoscale: bool,
}

impl ScalingPolicy {
    /// The utilisation target in percent: the one set, else 70 when no other target is set,
    /// else none.
    pub fn effective_target_utilization_percent(&self) -> Option<u32> {
        match self.target_utilization_percent {
            0 if self.target_calls_per_second_per_node > 0.0
                || self.target_in_flight_per_node > 0.0
                || self.target_latency_p99_ms > 0 =>
            {
                None
            }
            0 => Some(70),
            set => Some(set),
        }
    }

    pub fn effective_tolerance_percent(&self) -> u32 {
        or_default(self.tolerance_percent, 10)
    }

    pub fn effective_scale_down_stabilization(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(
            self.scale_down_stabilization_ms,
            300_000,
        )))
    }

    pub fn effective_scale_up_stabilization(&self) -> Duration {
        Duration::from_millis(u64::from(self.scale_up_stabilization_ms))
    }

    pub fn effective_cooldown(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(self.cooldown_ms, 60_000)))
    }
}

/// Forecasting ahead of the measured metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PredictiveScaling {
    pub enabled: bool,
    pub horizon_ms: u32,
    /// 0: no season (Holt's linear trend); else Holt-Winters with this period.
    pub season_ms: u32,
}

impl PredictiveScaling {
    pub fn effective_horizon(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(self.horizon_ms, 60_000)))
    }
}

/// A UTC window, between two cron expressions with seconds, that raises the minimum.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduledScaling {
    pub name: String,
    pub start: String,
    pub end: String,
    pub min_nodes: u32,
}

/// What carries a decision out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ScalingActuator {
    Exec(ExecActuator),
    Webhook(WebhookActuator),
}

/// A command run with the decision as JSON on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecActuator {
    pub command: String,
    pub args: Vec<String>,
    pub timeout_ms: u32,
}

impl ExecActuator {
    pub fn effective_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(self.timeout_ms, 30_000)))
    }
}

/// An HTTP POST of the decision as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookActuator {
    pub url: String,
    pub bearer_token_file: String,
    pub timeout_ms: u32,
    pub max_attempts: u32,
}

impl WebhookActuator {
    pub fn effective_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(or_default(self.timeout_ms, 10_000)))
    }

    pub fn effective_max_attempts(&self) -> u32 {
        or_default(self.max_attempts, 3)
    }
}

fn or_default(value: u32, default: u32) -> u32 {
    if value == 0 { default } else { value }
}

impl From<ScalingPolicy> for pb::ScalingPolicy {
    fn from(s: ScalingPolicy) -> Self {
        pb::ScalingPolicy {
            min_nodes: s.min_nodes,
            max_nodes: s.max_nodes,
            target_utilization_percent: s.target_utilization_percent,
            tolerance_percent: s.tolerance_percent,
            scale_down_stabilization_ms: s.scale_down_stabilization_ms,
            scale_up_stabilization_ms: s.scale_up_stabilization_ms,
            target_calls_per_second_per_node: s.target_calls_per_second_per_node,
            target_in_flight_per_node: s.target_in_flight_per_node,
            target_latency_p99_ms: s.target_latency_p99_ms,
            max_step: s.max_step,
            cooldown_ms: s.cooldown_ms,
            predictive: Some(pb::PredictiveScaling {
                enabled: s.predictive.enabled,
                horizon_ms: s.predictive.horizon_ms,
                season_ms: s.predictive.season_ms,
            }),
            schedules: s
                .schedules
                .into_iter()
                .map(|w| pb::ScheduledScaling {
                    name: w.name,
                    start: w.start,
                    end: w.end,
                    min_nodes: w.min_nodes,
                })
                .collect(),
            actuator: s.actuator.map(|a| pb::ScalingActuator {
                kind: Some(match a {
                    ScalingActuator::Exec(e) => {
                        pb::scaling_actuator::Kind::Exec(pb::ExecActuator {
                            command: e.command,
                            args: e.args,
                            timeout_ms: e.timeout_ms,
                        })
                    }
                    ScalingActuator::Webhook(w) => {
                        pb::scaling_actuator::Kind::Webhook(pb::WebhookActuator {
                            url: w.url,
                            bearer_token_file: w.bearer_token_file,
                            timeout_ms: w.timeout_ms,
                            max_attempts: w.max_attempts,
                        })
                    }
                }),
            }),
            autoscale: s.autoscale,
        }
    }
}

impl From<pb::ScalingPolicy> for ScalingPolicy {
    /// An actuator message without a kind means no actuator.
    fn from(p: pb::ScalingPolicy) -> Self {
        let predictive = p.predictive.unwrap_or_default();
        ScalingPolicy {
            min_nodes: p.min_nodes,
            max_nodes: p.max_nodes,
            target_utilization_percent: p.target_utilization_percent,
            tolerance_percent: p.tolerance_percent,
            scale_down_stabilization_ms: p.scale_down_stabilization_ms,
            scale_up_stabilization_ms: p.scale_up_stabilization_ms,
            target_calls_per_second_per_node: p.target_calls_per_second_per_node,
            target_in_flight_per_node: p.target_in_flight_per_node,
            target_latency_p99_ms: p.target_latency_p99_ms,
            max_step: p.max_step,
            cooldown_ms: p.cooldown_ms,
            predictive: PredictiveScaling {
                enabled: predictive.enabled,
                horizon_ms: predictive.horizon_ms,
                season_ms: predictive.season_ms,
            },
            schedules: p
                .schedules
                .into_iter()
                .map(|w| ScheduledScaling {
                    name: w.name,
                    start: w.start,
                    end: w.end,
                    min_nodes: w.min_nodes,
                })
                .collect(),
            actuator: p.actuator.and_then(|a| a.kind).map(|kind| match kind {
                pb::scaling_actuator::Kind::Exec(e) => ScalingActuator::Exec(ExecActuator {
                    command: e.command,
                    args: e.args,
                    timeout_ms: e.timeout_ms,
                }),
                pb::scaling_actuator::Kind::Webhook(w) => {
                    ScalingActuator::Webhook(WebhookActuator {
                        url: w.url,
                        bearer_token_file: w.bearer_token_file,
                        timeout_ms: w.timeout_ms,
                        max_attempts: w.max_attempts,
                    })
                }
            }),
            autoscale: p.autoscale,
        }
    }
}
