//! The rules for a service's adaptive-routing tuning: a number of candidates a pick can
//! sample cheaply (2 to 8), a hot threshold that is a utilisation (above 0, at most 100),
//! a report lifetime and an out-of-band report interval between 100 ms and a minute, at
//! most a few probes per call, a probe floor between 100 ms and a minute, and a hot
//! quantile that is a fraction. Zeros mean the defaults (or off).

use meridian_shared::domain::AdaptivePolicy;
use meridian_shared::domain::adaptive::MAX_CHOICES;

use super::{Invalid, invalid};

/// Highest hot threshold: a node a hundred times over its capacity.
pub const MAX_HOT_UTILIZATION: f64 = 100.0;
/// Shortest report lifetime.
pub const MIN_REPORT_TTL_MS: u32 = 100;
/// Longest report lifetime: a minute.
pub const MAX_REPORT_TTL_MS: u32 = 60_000;
/// Most probes a call may trigger (Prequal sends a few per call at most).
pub const MAX_PROBES_PER_CALL: f64 = 4.0;

const FIELD: &str = "service_policy.adaptive";

pub fn adaptive(a: &AdaptivePolicy) -> Result<(), Invalid> {
    if a.choices == 1 || a.choices > MAX_CHOICES {
        return Err(invalid(
            format!("{FIELD}.choices"),
            format!("{} is outside 2 to {MAX_CHOICES} (0: 3)", a.choices),
        ));
    }
    let hot = a.hot_utilization;
    if !(0.0..=MAX_HOT_UTILIZATION).contains(&hot) {
        return Err(invalid(
            format!("{FIELD}.hot_utilization"),
            format!("{hot} is outside 0 to {MAX_HOT_UTILIZATION} (0: 1.5)"),
        ));
    }
    if a.report_ttl_ms != 0 && !(MIN_REPORT_TTL_MS..=MAX_REPORT_TTL_MS).contains(&a.report_ttl_ms) {
        return Err(invalid(
            format!("{FIELD}.report_ttl_ms"),
            format!(
                "{} is outside {MIN_REPORT_TTL_MS} to {MAX_REPORT_TTL_MS} (0: 2000)",
                a.report_ttl_ms
            ),
        ));
    }
    within_ms("oob_report_interval_ms", a.oob_report_interval_ms, "off")?;
    within_ms("probe_idle_interval_ms", a.probe_idle_interval_ms, "1000")?;
    let rate = a.probes_per_call;
    if !(0.0..=MAX_PROBES_PER_CALL).contains(&rate) {
        return Err(invalid(
            format!("{FIELD}.probes_per_call"),
            format!("{rate} is outside 0 to {MAX_PROBES_PER_CALL} (0: no probes)"),
        ));
    }
    let quantile = a.probe_hot_quantile;
    if !(0.0..=1.0).contains(&quantile) {
        return Err(invalid(
            format!("{FIELD}.probe_hot_quantile"),
            format!("{quantile} is outside 0 to 1 (0: 0.8)"),
        ));
    }
    Ok(())
}

/// `ms` is 0 or within the report lifetime's bounds; `zero` says what 0 means.
fn within_ms(name: &str, ms: u32, zero: &str) -> Result<(), Invalid> {
    if ms != 0 && !(MIN_REPORT_TTL_MS..=MAX_REPORT_TTL_MS).contains(&ms) {
        return Err(invalid(
            format!("{FIELD}.{name}"),
            format!("{ms} is outside {MIN_REPORT_TTL_MS} to {MAX_REPORT_TTL_MS} (0: {zero})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_sane_values_pass_and_each_bad_field_is_named() {
        assert!(adaptive(&AdaptivePolicy::default()).is_ok());
        let good = AdaptivePolicy {
            choices: 8,
            hot_utilization: 0.9,
            report_ttl_ms: 100,
            ignore_node_reports: false,
            oob_report_interval_ms: 100,
            probes_per_call: 4.0,
            probe_idle_interval_ms: 60_000,
            probe_hot_quantile: 1.0,
        };
        assert!(adaptive(&good).is_ok());
        let field_of = |a: AdaptivePolicy| adaptive(&a).unwrap_err().field;
        for choices in [1, 9] {
            let bad = AdaptivePolicy {
                choices,
                ..good.clone()
            };
            assert_eq!(field_of(bad), "service_policy.adaptive.choices");
        }
        for hot in [-0.5, f64::NAN, f64::INFINITY, 101.0] {
            let bad = AdaptivePolicy {
                hot_utilization: hot,
                ..good.clone()
            };
            assert_eq!(field_of(bad), "service_policy.adaptive.hot_utilization");
        }
        for ttl in [99, 60_001] {
            let bad = AdaptivePolicy {
                report_ttl_ms: ttl,
                ..good.clone()
            };
            assert_eq!(field_of(bad), "service_policy.adaptive.report_ttl_ms");
            let bad = AdaptivePolicy {
                oob_report_interval_ms: ttl,
                ..good.clone()
            };
            assert_eq!(
                field_of(bad),
                "service_policy.adaptive.oob_report_interval_ms"
            );
            let bad = AdaptivePolicy {
                probe_idle_interval_ms: ttl,
                ..good.clone()
            };
            assert_eq!(
                field_of(bad),
                "service_policy.adaptive.probe_idle_interval_ms"
            );
        }
        for rate in [-0.1, f64::NAN, 4.5] {
            let bad = AdaptivePolicy {
                probes_per_call: rate,
                ..good.clone()
            };
            assert_eq!(field_of(bad), "service_policy.adaptive.probes_per_call");
        }
        for quantile in [-0.1, f64::NAN, 1.5] {
            let bad = AdaptivePolicy {
                probe_hot_quantile: quantile,
                ..good.clone()
            };
            assert_eq!(field_of(bad), "service_policy.adaptive.probe_hot_quantile");
        }
    }
}
