//! The Kubernetes HPA rule, per target: `desired = ceil(current × metric / target)`, with
//! no change while the metric is within the tolerance band around its target
//! (`|metric / target − 1| ≤ tolerance`, the band's edge included).
//!
//! Every target is expressed as a *demand* in node units, `current × metric`: the rule is
//! then `ceil(demand / target)`. Demand is what the forecaster extrapolates, because it
//! survives a change in the node count (calls/s per node halves when the nodes double;
//! the calls/s do not), so a scale event does not read as a falling trend.
//!
//! A service with 0 usable nodes that still has load (calls through a proxy that found no
//! endpoint, or nodes that just all failed) is computed as if it had 1, so the rule can
//! recommend a count at all: its answer is at least 1.

use meridian_shared::domain::ScalingPolicy;

use crate::scaling::ServiceLoad;

/// Float slack for "exactly at the band edge" and "exactly a whole node": ratios like
/// 0.77 / 0.70 are not exact in binary.
const EPSILON: f64 = 1e-9;

/// A target the policy sets and the load measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub name: &'static str,
    /// The measured value, in the metric's unit.
    pub current: f64,
    pub target: f64,
}

impl Target {
    /// The metric in words with its unit, e.g. "utilisation 92%".
    pub fn describe(&self, value: f64) -> String {
        match self.name {
            "utilization_percent" => format!("utilisation {value:.0}%"),
            "calls_per_second_per_node" => format!("{value:.1} calls/s per node"),
            "in_flight_per_node" => format!("{value:.1} in flight per node"),
            "latency_p99_ms" => format!("p99 {value:.0} ms"),
            other => format!("{other} {value}"),
        }
    }

    /// The target in the same words, e.g. "70%".
    pub fn describe_target(&self) -> String {
        match self.name {
            "utilization_percent" => format!("{:.0}%", self.target),
            "calls_per_second_per_node" => format!("{} calls/s per node", self.target),
            "in_flight_per_node" => format!("{} in flight per node", self.target),
            "latency_p99_ms" => format!("{:.0} ms", self.target),
            _ => format!("{}", self.target),
        }
    }
}

/// The targets the policy sets that the load measures, in a fixed order. A target whose
/// metric is unknown (utilisation with no ORCA reports and no node capacity, p99 with no
/// completed call) is left out.
pub fn measured_targets(policy: &ScalingPolicy, load: &ServiceLoad, current: u32) -> Vec<Target> {
    let per_node = f64::from(current.max(1));
    let mut targets = Vec::new();
    if let (Some(target), Some(current)) = (
        policy.effective_target_utilization_percent(),
        load.utilization_percent,
    ) {
        targets.push(Target {
            name: "utilization_percent",
            current,
            target: f64::from(target),
        });
    }
    if policy.target_calls_per_second_per_node > 0.0 {
        targets.push(Target {
            name: "calls_per_second_per_node",
            current: load.calls_per_second / per_node,
            target: policy.target_calls_per_second_per_node,
        });
    }
    if policy.target_in_flight_per_node > 0.0 {
        targets.push(Target {
            name: "in_flight_per_node",
            current: load.in_flight_per_node,
            target: policy.target_in_flight_per_node,
        });
    }
    if let (t @ 1.., Some(p99)) = (policy.target_latency_p99_ms, load.latency_p99_ms) {
        targets.push(Target {
            name: "latency_p99_ms",
            current: p99,
            target: f64::from(t),
        });
    }
    targets.retain(|t| t.current.is_finite() && t.current >= 0.0 && t.target > 0.0);
    targets
}

/// The node count the rule computes against: the current count, or 1 when there is none.
pub fn base_nodes(current: u32) -> u32 {
    current.max(1)
}

/// Whether `value` is within the tolerance band around `target`.
pub fn within_tolerance(value: f64, target: f64, tolerance_percent: u32) -> bool {
    (value / target - 1.0).abs() <= f64::from(tolerance_percent) / 100.0 + EPSILON
}

/// The HPA rule for one target at a metric value: the current count inside the tolerance
/// band, else `ceil(base × value / target)`, at least 1.
pub fn recommend(current: u32, value: f64, target: f64, tolerance_percent: u32) -> u32 {
    if within_tolerance(value, target, tolerance_percent) {
        // With 0 nodes and a metric on target the service still needs one.
        return current.max(1);
    }
    let desired = (f64::from(base_nodes(current)) * value / target - EPSILON).ceil();
    if desired >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        (desired as u32).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_the_ceiling_of_current_times_metric_over_target() {
        assert_eq!(recommend(4, 92.0, 70.0, 10), 6); // 4 × 92 / 70 = 5.26
        assert_eq!(recommend(4, 35.0, 70.0, 10), 2); // 4 × 35 / 70 = 2
        assert_eq!(recommend(3, 140.0, 70.0, 10), 6); // exactly 6, not 7
        assert_eq!(recommend(10, 1.0, 70.0, 10), 1); // never below 1
    }

    #[test]
    fn no_change_inside_the_tolerance_band_including_its_edge() {
        // ±10% around 70: 63 .. 77 keeps the count.
        assert_eq!(recommend(4, 77.0, 70.0, 10), 4);
        assert_eq!(recommend(4, 63.0, 70.0, 10), 4);
        assert_eq!(recommend(4, 77.1, 70.0, 10), 5);
        assert_eq!(recommend(4, 62.9, 70.0, 10), 4); // 4 × 62.9 / 70 = 3.59 → 4
        assert_eq!(recommend(10, 62.9, 70.0, 10), 9);
    }

    #[test]
    fn zero_nodes_with_load_recommend_at_least_one() {
        assert_eq!(recommend(0, 70.0, 70.0, 10), 1);
        assert_eq!(recommend(0, 350.0, 70.0, 10), 5);
    }

    #[test]
    fn targets_follow_the_policy_and_what_is_measured() {
        let load = ServiceLoad {
            calls_per_second: 300.0,
            utilization_percent: None,
            in_flight_per_node: 4.0,
            latency_p99_ms: Some(250.0),
            ..Default::default()
        };
        let policy = ScalingPolicy {
            target_calls_per_second_per_node: 50.0,
            target_latency_p99_ms: 200,
            ..Default::default()
        };
        let targets = measured_targets(&policy, &load, 3);
        let names: Vec<_> = targets.iter().map(|t| t.name).collect();
        assert_eq!(names, ["calls_per_second_per_node", "latency_p99_ms"]);
        assert_eq!(targets[0].current, 100.0);
        // Utilisation is the default target only when no other is set, and it needs a
        // measurement.
        let default_policy = ScalingPolicy::default();
        assert!(measured_targets(&default_policy, &load, 3).is_empty());
        let measured = ServiceLoad {
            utilization_percent: Some(80.0),
            ..load
        };
        let targets = measured_targets(&default_policy, &measured, 3);
        assert_eq!(targets[0].name, "utilization_percent");
        assert_eq!(targets[0].target, 70.0);
    }
}
