//! The engine end to end, with explicit instants: what an operator relies on from each rule.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_shared::domain::{PredictiveScaling, ScalingPolicy, ScheduledScaling};

use super::*;

/// 2026-11-30T00:00:00Z (a Monday) plus `secs`.
fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_996_800 + secs)
}

/// Load with utilisation `util`% (and some calls, so it counts as load).
fn util(percent: f64) -> Option<ServiceLoad> {
    Some(ServiceLoad {
        window: Duration::from_secs(10),
        calls_per_second: 100.0,
        utilization_percent: Some(percent),
        nodes_reporting: 1,
        ..Default::default()
    })
}

fn calls(per_second: f64) -> Option<ServiceLoad> {
    Some(ServiceLoad {
        window: Duration::from_secs(10),
        calls_per_second: per_second,
        nodes_reporting: 1,
        ..Default::default()
    })
}

fn obs(secs: u64, current: u32, load: Option<ServiceLoad>) -> Observation {
    Observation {
        at: at(secs),
        current_nodes: current,
        load,
    }
}

/// Utilisation target 70% ±10%, no windows that would hide the rule under test.
fn reactive() -> ScalingPolicy {
    ScalingPolicy {
        target_utilization_percent: 70,
        scale_down_stabilization_ms: 1,
        ..Default::default()
    }
}

#[test]
fn utilisation_above_target_scales_up_by_the_hpa_rule() {
    let mut a = ServiceAutoscaler::new();
    let r = a.recommend(&reactive(), &obs(0, 4, util(92.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (6, "target"));
    assert!(
        r.reason
            .contains("utilisation 92% above target 70% (±10%) → 6 nodes"),
        "{}",
        r.reason
    );
    assert_eq!(r.utilization_percent, Some(92.0));
    assert_eq!(
        r.metrics,
        vec![MetricReading {
            name: "utilization_percent",
            current: 92.0,
            target: 70.0,
            forecast: None,
            recommended_nodes: 6,
        }]
    );
}

#[test]
fn the_tolerance_band_keeps_the_count_up_to_its_edge() {
    let mut a = ServiceAutoscaler::new();
    let r = a.recommend(&reactive(), &obs(0, 4, util(77.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (4, "none"));
    assert!(
        r.reason.contains("within ±10% of target 70%"),
        "{}",
        r.reason
    );
    let r = a.recommend(&reactive(), &obs(10, 4, util(77.5)), None);
    assert_eq!((r.desired_nodes, r.rule), (5, "target"));
}

#[test]
fn the_largest_recommendation_among_targets_wins() {
    let policy = ScalingPolicy {
        target_utilization_percent: 70,
        target_calls_per_second_per_node: 50.0,
        target_in_flight_per_node: 10.0,
        ..reactive()
    };
    let load = Some(ServiceLoad {
        calls_per_second: 400.0,          // 100 per node: 8 nodes
        utilization_percent: Some(105.0), // 6 nodes
        in_flight_per_node: 5.0,          // 2 nodes
        nodes_reporting: 4,
        ..Default::default()
    });
    let r = ServiceAutoscaler::new().recommend(&policy, &obs(0, 4, load), None);
    assert_eq!((r.desired_nodes, r.rule), (8, "target"));
    assert!(
        r.reason
            .starts_with("100.0 calls/s per node above target 50 calls/s per node"),
        "{}",
        r.reason
    );
    let per_metric: Vec<_> = r
        .metrics
        .iter()
        .map(|m| (m.name, m.recommended_nodes))
        .collect();
    assert_eq!(
        per_metric,
        [
            ("utilization_percent", 6),
            ("calls_per_second_per_node", 8),
            ("in_flight_per_node", 2)
        ]
    );
}

#[test]
fn without_load_reports_the_count_stays() {
    let mut a = ServiceAutoscaler::new();
    for load in [None, calls(0.0)] {
        let r = a.recommend(&reactive(), &obs(0, 3, load), None);
        assert_eq!((r.desired_nodes, r.rule), (3, "none"));
        assert!(r.reason.contains("no proxy reported calls"), "{}", r.reason);
        assert!(r.metrics.is_empty());
    }
    // The minimum still holds without load.
    let policy = ScalingPolicy {
        min_nodes: 5,
        ..reactive()
    };
    let r = a.recommend(&policy, &obs(10, 3, None), None);
    assert_eq!((r.desired_nodes, r.rule), (5, "min"));
}

#[test]
fn an_unmeasurable_target_changes_nothing() {
    // Utilisation is the default target; this load has calls but no utilisation.
    let r = ServiceAutoscaler::new().recommend(
        &ScalingPolicy::default(),
        &obs(0, 3, calls(100.0)),
        None,
    );
    assert_eq!((r.desired_nodes, r.rule), (3, "none"));
    assert!(
        r.reason.contains("no target could be measured"),
        "{}",
        r.reason
    );
}

#[test]
fn zero_nodes_with_load_recommend_at_least_one() {
    let policy = ScalingPolicy {
        target_calls_per_second_per_node: 40.0,
        ..reactive()
    };
    let r = ServiceAutoscaler::new().recommend(&policy, &obs(0, 0, calls(100.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (3, "target"));
    assert!(r.reason.contains("no usable node"), "{}", r.reason);
}

#[test]
fn min_max_and_step_bound_the_count() {
    let bounded = ScalingPolicy {
        min_nodes: 2,
        max_nodes: 5,
        ..reactive()
    };
    let mut a = ServiceAutoscaler::new();
    let r = a.recommend(&bounded, &obs(0, 4, util(140.0)), None); // wants 8
    assert_eq!((r.desired_nodes, r.rule), (5, "max"));
    assert!(
        r.reason.contains("max_nodes allows at most 5"),
        "{}",
        r.reason
    );
    let r = a.recommend(&bounded, &obs(10, 4, util(10.0)), None); // wants 1
    assert_eq!((r.desired_nodes, r.rule), (2, "min"));
    // Already at the maximum: nothing changes.
    let r = a.recommend(&bounded, &obs(20, 5, util(140.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (5, "none"));

    let stepped = ScalingPolicy {
        max_step: 2,
        ..reactive()
    };
    let mut a = ServiceAutoscaler::new();
    let r = a.recommend(&stepped, &obs(0, 4, util(140.0)), None); // wants 8
    assert_eq!((r.desired_nodes, r.rule), (6, "step"));
    assert!(
        r.reason.contains("at most 2 nodes per decision"),
        "{}",
        r.reason
    );
    let r = a.recommend(&stepped, &obs(10, 8, util(10.0)), None); // wants 2
    assert_eq!((r.desired_nodes, r.rule), (6, "step"));
    // A hard minimum is not step-limited.
    let floor = ScalingPolicy {
        min_nodes: 9,
        ..stepped
    };
    let r = a.recommend(&floor, &obs(20, 4, util(70.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (9, "min"));
}

#[test]
fn a_dip_shorter_than_the_scale_down_window_does_not_scale_down() {
    let policy = ScalingPolicy {
        target_utilization_percent: 70,
        scale_down_stabilization_ms: 120_000,
        ..Default::default()
    };
    let mut a = ServiceAutoscaler::new();
    assert_eq!(
        a.recommend(&policy, &obs(0, 6, util(70.0)), None)
            .desired_nodes,
        6
    );
    // 90 s at 20%: 2 nodes would do, but the window remembers the 6.
    for s in (10..=90).step_by(10) {
        let r = a.recommend(&policy, &obs(s, 6, util(20.0)), None);
        assert_eq!((r.desired_nodes, r.rule), (6, "none"), "at {s} s");
        assert!(
            r.reason
                .contains("held at 6 by the scale-down stabilisation window (2 min)"),
            "{}",
            r.reason
        );
    }
    assert_eq!(
        a.recommend(&policy, &obs(100, 6, util(70.0)), None)
            .desired_nodes,
        6
    );
    // A sustained drop: down only once the last 6 is older than the window.
    for s in (110..=220).step_by(10) {
        let r = a.recommend(&policy, &obs(s, 6, util(20.0)), None);
        assert_eq!(r.desired_nodes, 6, "at {s} s");
    }
    let r = a.recommend(&policy, &obs(230, 6, util(20.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (2, "target"));
}

#[test]
fn a_new_leader_seeded_with_past_decisions_keeps_holding_a_scale_down() {
    let policy = ScalingPolicy {
        target_utilization_percent: 70,
        scale_down_stabilization_ms: 120_000,
        ..Default::default()
    };
    // Fresh, the engine has no memory: low load scales down at once.
    let r = ServiceAutoscaler::new().recommend(&policy, &obs(100, 6, util(20.0)), None);
    assert_eq!(r.desired_nodes, 2);
    // Seeded with the old leader's decision of 6 at 30 s, it holds until 150 s.
    let mut a = ServiceAutoscaler::new();
    a.remember_recommendation(at(30), 6);
    let r = a.recommend(&policy, &obs(100, 6, util(20.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (6, "none"));
    let r = a.recommend(&policy, &obs(151, 6, util(20.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (2, "target"));
}

#[test]
fn the_scale_up_window_delays_a_scale_up() {
    let policy = ScalingPolicy {
        target_utilization_percent: 70,
        scale_up_stabilization_ms: 30_000,
        ..Default::default()
    };
    let mut a = ServiceAutoscaler::new();
    a.recommend(&policy, &obs(0, 3, util(70.0)), None);
    for s in (10..=30).step_by(10) {
        let r = a.recommend(&policy, &obs(s, 3, util(140.0)), None);
        assert_eq!((r.desired_nodes, r.rule), (3, "none"), "at {s} s");
        assert!(
            r.reason
                .contains("held at 3 by the scale-up stabilisation window (30 s)"),
            "{}",
            r.reason
        );
    }
    let r = a.recommend(&policy, &obs(40, 3, util(140.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (6, "target"));
}

#[test]
fn the_cooldown_holds_changes_but_not_the_bounds() {
    let policy = ScalingPolicy {
        cooldown_ms: 60_000,
        ..reactive()
    };
    let mut a = ServiceAutoscaler::new();
    let changed = Some(at(0));
    let r = a.recommend(&policy, &obs(30, 4, util(140.0)), changed);
    assert_eq!((r.desired_nodes, r.rule), (4, "cooldown"));
    assert!(
        r.reason.contains(
            "in cooldown until 2026-11-30T00:01:00Z (60 s after the last change): would go to 8"
        ),
        "{}",
        r.reason
    );
    // At the end of the cooldown the change goes through.
    let r = a.recommend(&policy, &obs(60, 4, util(140.0)), changed);
    assert_eq!((r.desired_nodes, r.rule), (8, "target"));
    // Nothing to hold back: no cooldown rule.
    let r = a.recommend(&policy, &obs(40, 4, util(70.0)), changed);
    assert_eq!(r.rule, "none");

    // Bounds apply in the cooldown: a minimum above current raises the count now.
    let floor = ScalingPolicy {
        min_nodes: 5,
        max_nodes: 10,
        ..policy.clone()
    };
    let r = a.recommend(&floor, &obs(45, 4, util(140.0)), changed);
    assert_eq!((r.desired_nodes, r.rule), (5, "min"));
    assert!(r.reason.contains("despite the cooldown"), "{}", r.reason);
    let r = a.recommend(&floor, &obs(46, 12, util(140.0)), changed);
    assert_eq!((r.desired_nodes, r.rule), (10, "max"));
}

#[test]
fn a_scheduled_window_raises_the_minimum_while_open() {
    // Open from :00 to :05 of every 10 s.
    let policy = ScalingPolicy {
        schedules: vec![ScheduledScaling {
            name: "burst".into(),
            start: "*/10 * * * * *".into(),
            end: "5-59/10 * * * * *".into(),
            min_nodes: 6,
        }],
        cooldown_ms: 60_000,
        ..reactive()
    };
    let mut a = ServiceAutoscaler::new();
    let r = a.recommend(&policy, &obs(9, 2, util(70.0)), None);
    assert_eq!((r.desired_nodes, r.rule), (2, "none"));
    // Opens at 10 s, even right after a change.
    let r = a.recommend(&policy, &obs(10, 2, util(70.0)), Some(at(9)));
    assert_eq!((r.desired_nodes, r.rule), (6, "schedule"));
    assert!(
        r.reason.contains(
            "scheduled window \"burst\" (open since 2026-11-30T00:00:10Z until \
             2026-11-30T00:00:15Z) keeps at least 6 nodes"
        ),
        "{}",
        r.reason
    );
    let r = a.recommend(&policy, &obs(14, 6, util(70.0)), Some(at(10)));
    assert_eq!((r.desired_nodes, r.rule), (6, "none"));
    // Closed at 15 s: the metrics decide again (within tolerance at 6: stays).
    let r = a.recommend(&policy, &obs(15, 6, util(70.0)), Some(at(10)));
    assert_eq!((r.desired_nodes, r.rule), (6, "none"));
    // Closed, after the cooldown, at low load: down to what the metrics ask.
    let r = a.recommend(&policy, &obs(75, 6, util(20.0)), Some(at(10)));
    assert_eq!((r.desired_nodes, r.rule), (2, "target"));
}

fn predictive(enabled: bool) -> ScalingPolicy {
    ScalingPolicy {
        target_calls_per_second_per_node: 100.0,
        predictive: PredictiveScaling {
            enabled,
            horizon_ms: 60_000,
            season_ms: 0,
        },
        ..reactive()
    }
}

/// The first observation (seconds) at which the autoscaler scales up, on a ramp of
/// 100 calls/s rising by 5 calls/s each second, 4 nodes (target 100 per node: the ramp
/// crosses 440 calls/s, the top of the tolerance band, at 68 s).
fn first_scale_up(policy: &ScalingPolicy) -> (u64, Recommendation) {
    let mut a = ServiceAutoscaler::new();
    for s in (0..=300).step_by(5) {
        let r = a.recommend(policy, &obs(s, 4, calls(100.0 + 5.0 * s as f64)), None);
        if r.desired_nodes > 4 {
            return (s, r);
        }
    }
    panic!("never scaled up");
}

#[test]
fn predictive_scaling_scales_up_ahead_of_a_ramp() {
    let (reactive_at, r) = first_scale_up(&predictive(false));
    assert_eq!(reactive_at, 70);
    assert_eq!(r.rule, "target");
    let (predictive_at, r) = first_scale_up(&predictive(true));
    assert!(
        predictive_at + 30 <= reactive_at,
        "predictive at {predictive_at} s, reactive at {reactive_at} s"
    );
    assert_eq!(r.rule, "predictive");
    assert!(
        r.reason.contains("forecast (Holt's linear trend)")
            && r.reason.contains("in 60 s (measured"),
        "{}",
        r.reason
    );
    let m = &r.metrics[0];
    let forecast = m.forecast.expect("a forecast");
    assert!(forecast > m.current && forecast > m.target * 1.1, "{m:?}");
    assert_eq!(m.recommended_nodes, r.desired_nodes);
}

#[test]
fn a_falling_forecast_never_scales_down() {
    // Load falls from 600 to 520 calls/s on 4 nodes: still above the target band
    // throughout; the forecast says it will be back on target.
    let mut a = ServiceAutoscaler::new();
    let mut last = None;
    for s in (0..=40).step_by(5) {
        last = Some(a.recommend(
            &predictive(true),
            &obs(s, 4, calls(600.0 - 2.0 * s as f64)),
            None,
        ));
    }
    let r = last.unwrap();
    let m = &r.metrics[0];
    assert!(m.forecast.unwrap() < 0.8 * m.current, "{m:?}");
    assert_eq!((r.desired_nodes, r.rule), (6, "target"));

    // At the target, a falling forecast changes nothing.
    let mut a = ServiceAutoscaler::new();
    for s in (0..=40).step_by(5) {
        let r = a.recommend(&predictive(true), &obs(s, 4, calls(400.0 - s as f64)), None);
        assert_eq!(r.desired_nodes, 4, "at {s} s: {}", r.reason);
    }
}

#[test]
fn preview_says_what_recommend_would_without_remembering() {
    let policy = ScalingPolicy {
        target_utilization_percent: 70,
        scale_down_stabilization_ms: 120_000,
        ..Default::default()
    };
    let mut a = ServiceAutoscaler::new();
    assert_eq!(
        a.recommend(&policy, &obs(0, 6, util(35.0)), None)
            .desired_nodes,
        3
    );
    // A preview at full load would put a 6 in the scale-down window, were it remembered.
    let r = a.preview(&policy, &obs(10, 6, util(70.0)), None);
    assert_eq!(r.desired_nodes, 6);
    let preview = a.preview(&policy, &obs(20, 6, util(35.0)), None);
    let real = a.recommend(&policy, &obs(20, 6, util(35.0)), None);
    assert_eq!(preview, real);
    assert_eq!(real.desired_nodes, 3, "{}", real.reason);
}

#[test]
fn with_a_season_the_forecast_anticipates_the_daily_peak() {
    // A "day" of 8 minutes: 400 ± 200 calls/s over 4 nodes, target 100 per node.
    let season = 480u64;
    let policy = ScalingPolicy {
        predictive: PredictiveScaling {
            enabled: true,
            horizon_ms: 60_000,
            season_ms: season as u32 * 1000,
        },
        ..predictive(true)
    };
    let load = |t: u64| 400.0 + 200.0 * (std::f64::consts::TAU * t as f64 / season as f64).sin();
    let mut a = ServiceAutoscaler::new();
    let mut ahead = None;
    for t in (0..4 * season).step_by(10) {
        let r = a.recommend(&policy, &obs(t, 4, calls(load(t))), None);
        if t >= 2 * season && r.rule == "predictive" && ahead.is_none() {
            ahead = Some((t, r));
        }
    }
    let (t, r) = ahead.expect("the forecast never raised the count");
    assert!(r.reason.contains("forecast (Holt-Winters)"), "{}", r.reason);
    // Raised while the measured load was still inside the band, ahead of the rise.
    assert!(r.metrics[0].current <= 110.0, "at {t} s: {:?}", r.metrics);
}
