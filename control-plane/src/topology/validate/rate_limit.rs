//! The rules for a service's rate limits per client tier: at most
//! [`MAX_RATE_LIMIT_TIERS`] tiers, each named by the rules for names (1 to 63 bytes) and
//! unique, with a finite rate above 0 and at most [`MAX_CALLS_PER_SECOND`] and a bounded
//! burst; a tier header that is a valid header name; a default tier that is one of the
//! tiers. Settings without tiers are refused rather than silently ignored.

use std::collections::HashSet;

use meridian_shared::domain::RateLimitPolicy;
use meridian_shared::domain::limits::HEADER_NAME_BYTES;
use meridian_shared::domain::rate_limit::{MAX_BURST, MAX_CALLS_PER_SECOND, MAX_RATE_LIMIT_TIERS};

use super::{Invalid, check_name, invalid};

const FIELD: &str = "service_policy.rate_limit";

pub fn rate_limit(p: &RateLimitPolicy) -> Result<(), Invalid> {
    if p.tiers.len() > MAX_RATE_LIMIT_TIERS {
        return Err(invalid(
            format!("{FIELD}.tiers"),
            format!(
                "{} tiers exceed the limit of {MAX_RATE_LIMIT_TIERS}",
                p.tiers.len()
            ),
        ));
    }
    if p.tiers.is_empty() && (!p.tier_header.is_empty() || !p.default_tier.is_empty()) {
        return Err(invalid(
            format!("{FIELD}.tiers"),
            "a tier header or default tier needs at least one tier",
        ));
    }
    let mut names = HashSet::new();
    for (i, tier) in p.tiers.iter().enumerate() {
        let field = format!("{FIELD}.tiers[{i}]");
        check_name(&format!("{field}.name"), &tier.name)?;
        if !names.insert(tier.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("tier {:?} is listed twice", tier.name),
            ));
        }
        let rate = tier.calls_per_second;
        if !rate.is_finite() || rate <= 0.0 || rate > MAX_CALLS_PER_SECOND {
            return Err(invalid(
                format!("{field}.calls_per_second"),
                format!("{rate} is not a rate above 0 and at most {MAX_CALLS_PER_SECOND}"),
            ));
        }
        if tier.burst > MAX_BURST {
            return Err(invalid(
                format!("{field}.burst"),
                format!("{} is above {MAX_BURST}", tier.burst),
            ));
        }
    }
    if !p.tier_header.is_empty()
        && (p.tier_header.len() > HEADER_NAME_BYTES as usize
            || p.tier_header.bytes().any(|b| b.is_ascii_uppercase())
            || http::HeaderName::from_bytes(p.tier_header.as_bytes()).is_err()
            || p.tier_header.starts_with("grpc-")
            || p.tier_header.starts_with(':'))
    {
        return Err(invalid(
            format!("{FIELD}.tier_header"),
            format!(
                "{:?} is not a header name a client may send (lowercase, not grpc-*)",
                p.tier_header
            ),
        ));
    }
    if !p.default_tier.is_empty() && !names.contains(p.default_tier.as_str()) {
        return Err(invalid(
            format!("{FIELD}.default_tier"),
            format!("{:?} is not one of the tiers", p.default_tier),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::RateLimitTier;

    use super::*;

    fn tier(name: &str, calls_per_second: f64) -> RateLimitTier {
        RateLimitTier {
            name: name.into(),
            calls_per_second,
            burst: 0,
        }
    }

    fn good() -> RateLimitPolicy {
        RateLimitPolicy {
            tiers: vec![tier("free", 10.0), tier("pro", 1_000.0)],
            tier_header: "x-plan".into(),
            default_tier: "free".into(),
        }
    }

    #[track_caller]
    fn refused(policy: RateLimitPolicy, field: &str, words: &str) {
        let err = rate_limit(&policy).expect_err("the bad value was accepted");
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(words), "{err}");
    }

    #[test]
    fn a_full_policy_and_no_policy_pass() {
        rate_limit(&good()).unwrap();
        rate_limit(&RateLimitPolicy::default()).unwrap();
        let fractional = RateLimitPolicy {
            tiers: vec![tier("trickle", 0.5)],
            ..Default::default()
        };
        rate_limit(&fractional).unwrap();
    }

    #[test]
    fn tiers_are_bounded_named_and_unique() {
        let mut p = good();
        p.tiers = (0..17).map(|i| tier(&format!("t{i}"), 1.0)).collect();
        refused(p, "service_policy.rate_limit.tiers", "limit of 16");

        let mut p = good();
        p.tiers[1].name = "x".repeat(64);
        refused(p, "service_policy.rate_limit.tiers[1].name", "63");

        let mut p = good();
        p.tiers[1].name = "Pro".into();
        refused(p, "service_policy.rate_limit.tiers[1].name", "lowercase");

        let mut p = good();
        p.tiers[1].name = "free".into();
        refused(p, "service_policy.rate_limit.tiers[1].name", "twice");
    }

    #[test]
    fn rates_are_finite_positive_and_bounded() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 2_000_000.0] {
            let mut p = good();
            p.tiers[0].calls_per_second = bad;
            refused(
                p,
                "service_policy.rate_limit.tiers[0].calls_per_second",
                "rate",
            );
        }
        let mut p = good();
        p.tiers[0].burst = MAX_BURST + 1;
        refused(p, "service_policy.rate_limit.tiers[0].burst", "above");
    }

    #[test]
    fn the_header_and_default_tier_must_make_sense() {
        for bad in ["x plan", "X-Plan", "grpc-timeout", ""] {
            let mut p = good();
            p.tier_header = bad.into();
            if bad.is_empty() {
                rate_limit(&p).unwrap();
                continue;
            }
            refused(p, "service_policy.rate_limit.tier_header", "header name");
        }
        let mut p = good();
        p.default_tier = "gold".into();
        refused(p, "service_policy.rate_limit.default_tier", "\"gold\"");

        let p = RateLimitPolicy {
            default_tier: "free".into(),
            ..Default::default()
        };
        refused(p, "service_policy.rate_limit.tiers", "at least one tier");
    }
}
