//! The autoscaler's decision rule (placeholder: keeps the current count until the engine
//! lands).

use std::time::SystemTime;

use meridian_shared::domain::ScalingPolicy;

use super::Observation;

/// One metric behind a recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricReading {
    /// "utilization_percent", "calls_per_second_per_node", "in_flight_per_node",
    /// "latency_p99_ms".
    pub name: &'static str,
    pub current: f64,
    pub target: f64,
    /// The forecast at the horizon, when predictive scaling is on.
    pub forecast: Option<f64>,
    /// Nodes this metric alone recommends.
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
#[derive(Debug, Default)]
pub struct ServiceAutoscaler {}

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
        let _ = (policy, last_change);
        Recommendation {
            current_nodes: observation.current_nodes,
            desired_nodes: observation.current_nodes,
            rule: "none",
            reason: "the autoscaler engine is not built yet".into(),
            metrics: Vec::new(),
            utilization_percent: None,
        }
    }

    /// The same as [`Self::recommend`] without remembering the observation: what
    /// `RecommendScaling` shows.
    pub fn preview(
        &self,
        policy: &ScalingPolicy,
        observation: &Observation,
        last_change: Option<SystemTime>,
    ) -> Recommendation {
        let _ = (policy, last_change);
        Recommendation {
            current_nodes: observation.current_nodes,
            desired_nodes: observation.current_nodes,
            rule: "none",
            reason: "the autoscaler engine is not built yet".into(),
            metrics: Vec::new(),
            utilization_percent: None,
        }
    }
}
