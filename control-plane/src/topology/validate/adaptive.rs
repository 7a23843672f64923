//! The rules for a service's adaptive-routing tuning: a number of candidates a pick can
//! sample cheaply (2 to 8), a hot threshold that is a utilisation (above 0, at most 100),
//! and a report lifetime between 100 ms and a minute. Zeros mean the defaults.

use meridian_shared::domain::AdaptivePolicy;
use meridian_shared::domain::adaptive::MAX_CHOICES;

use super::{Invalid, invalid};

/// Highest hot threshold: a node a hundred times over its capacity.
pub const MAX_HOT_UTILIZATION: f64 = 100.0;
/// Shortest report lifetime.
pub const MIN_REPORT_TTL_MS: u32 = 100;
/// Longest report lifetime: a minute.
pub const MAX_REPORT_TTL_MS: u32 = 60_000;

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
        }
    }
}
