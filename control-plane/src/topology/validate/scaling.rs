//! The rules for a service's scaling policy: targets finite and within sane maxima,
//! windows and horizons bounded, scheduled windows named, unique and parseable as 6-field
//! cron, and the actuator's syntax (an absolute program path, a parseable http(s) URL).
//! Which programs and URLs may be used at all is the control plane's allowlist, checked
//! where the actuator runs; this file only refuses what could never work.

use std::collections::HashSet;
use std::path::Path;

use meridian_shared::domain::{ScalingActuator, ScalingPolicy};

use super::{Invalid, check_name, invalid};
use crate::scaling::engine::schedule::check_cron;

/// Highest calls/s per node target.
pub const MAX_CALLS_PER_SECOND_PER_NODE: f64 = 1_000_000.0;
/// Highest in-flight per node target (the highest node capacity).
pub const MAX_IN_FLIGHT_PER_NODE: f64 = super::MAX_CAPACITY as f64;
/// Highest latency p99 target: 10 minutes.
pub const MAX_LATENCY_P99_MS: u32 = 600_000;
/// Longest stabilisation window: an hour (the HPA's limit too).
pub const MAX_STABILIZATION_MS: u32 = 3_600_000;
/// Longest cooldown: a day.
pub const MAX_COOLDOWN_MS: u32 = 86_400_000;
/// Longest forecast horizon: a day.
pub const MAX_HORIZON_MS: u32 = 86_400_000;
/// Longest season: a week.
pub const MAX_SEASON_MS: u32 = 7 * 86_400_000;
/// Most scheduled windows per service.
pub const MAX_SCHEDULES: usize = 16;
/// Longest cron expression.
pub const MAX_CRON_BYTES: usize = 256;
/// Longest program path, argument, or token file path.
pub const MAX_PATH_BYTES: usize = 1_024;
/// Most arguments of an exec actuator.
pub const MAX_ARGS: usize = 32;
/// Longest exec timeout: 10 minutes.
pub const MAX_EXEC_TIMEOUT_MS: u32 = 600_000;
/// Longest webhook URL.
pub const MAX_URL_BYTES: usize = 2_048;
/// Longest webhook timeout per attempt: 5 minutes.
pub const MAX_WEBHOOK_TIMEOUT_MS: u32 = 300_000;
/// Most webhook attempts.
pub const MAX_WEBHOOK_ATTEMPTS: u32 = 10;

const FIELD: &str = "service_policy.scaling";

pub fn scaling(s: &ScalingPolicy) -> Result<(), Invalid> {
    at_most_u32(
        "target_utilization_percent",
        s.target_utilization_percent,
        100,
        "",
    )?;
    at_most_u32("tolerance_percent", s.tolerance_percent, 100, "")?;
    if s.max_nodes != 0 && s.min_nodes > s.max_nodes {
        return Err(invalid(
            format!("{FIELD}.min_nodes"),
            "must not be above max_nodes",
        ));
    }
    target(
        "target_calls_per_second_per_node",
        s.target_calls_per_second_per_node,
        MAX_CALLS_PER_SECOND_PER_NODE,
    )?;
    target(
        "target_in_flight_per_node",
        s.target_in_flight_per_node,
        MAX_IN_FLIGHT_PER_NODE,
    )?;
    at_most_u32(
        "target_latency_p99_ms",
        s.target_latency_p99_ms,
        MAX_LATENCY_P99_MS,
        " (10 minutes)",
    )?;
    at_most_u32(
        "scale_down_stabilization_ms",
        s.scale_down_stabilization_ms,
        MAX_STABILIZATION_MS,
        " (an hour)",
    )?;
    at_most_u32(
        "scale_up_stabilization_ms",
        s.scale_up_stabilization_ms,
        MAX_STABILIZATION_MS,
        " (an hour)",
    )?;
    at_most_u32("cooldown_ms", s.cooldown_ms, MAX_COOLDOWN_MS, " (a day)")?;
    at_most_u32(
        "predictive.horizon_ms",
        s.predictive.horizon_ms,
        MAX_HORIZON_MS,
        " (a day)",
    )?;
    at_most_u32(
        "predictive.season_ms",
        s.predictive.season_ms,
        MAX_SEASON_MS,
        " (a week)",
    )?;
    schedules(s)?;
    match &s.actuator {
        None => Ok(()),
        Some(ScalingActuator::Exec(e)) => {
            let field = format!("{FIELD}.actuator.exec");
            absolute_path(&format!("{field}.command"), &e.command)?;
            if e.args.len() > MAX_ARGS {
                return Err(invalid(
                    format!("{field}.args"),
                    format!("{} arguments exceed the limit of {MAX_ARGS}", e.args.len()),
                ));
            }
            for (i, arg) in e.args.iter().enumerate() {
                if arg.len() > MAX_PATH_BYTES || arg.contains('\0') {
                    return Err(invalid(
                        format!("{field}.args[{i}]"),
                        format!("must be at most {MAX_PATH_BYTES} bytes without NUL bytes"),
                    ));
                }
            }
            at_most_u32(
                "actuator.exec.timeout_ms",
                e.timeout_ms,
                MAX_EXEC_TIMEOUT_MS,
                " (10 minutes)",
            )
        }
        Some(ScalingActuator::Webhook(w)) => {
            let field = format!("{FIELD}.actuator.webhook");
            webhook_url(&format!("{field}.url"), &w.url)?;
            if !w.bearer_token_file.is_empty() {
                absolute_path(&format!("{field}.bearer_token_file"), &w.bearer_token_file)?;
            }
            at_most_u32(
                "actuator.webhook.timeout_ms",
                w.timeout_ms,
                MAX_WEBHOOK_TIMEOUT_MS,
                " (5 minutes)",
            )?;
            at_most_u32(
                "actuator.webhook.max_attempts",
                w.max_attempts,
                MAX_WEBHOOK_ATTEMPTS,
                "",
            )
        }
    }
}

fn schedules(s: &ScalingPolicy) -> Result<(), Invalid> {
    if s.schedules.len() > MAX_SCHEDULES {
        return Err(invalid(
            format!("{FIELD}.schedules"),
            format!(
                "{} windows exceed the limit of {MAX_SCHEDULES}",
                s.schedules.len()
            ),
        ));
    }
    let mut names = HashSet::new();
    for (i, w) in s.schedules.iter().enumerate() {
        let field = format!("{FIELD}.schedules[{i}]");
        check_name(&format!("{field}.name"), &w.name)?;
        if !names.insert(w.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!(
                    "{:?} is used by an earlier window; names must be unique",
                    w.name
                ),
            ));
        }
        for (edge, expression) in [("start", &w.start), ("end", &w.end)] {
            if expression.len() > MAX_CRON_BYTES {
                return Err(invalid(
                    format!("{field}.{edge}"),
                    format!("must be at most {MAX_CRON_BYTES} bytes"),
                ));
            }
            check_cron(expression).map_err(|e| invalid(format!("{field}.{edge}"), e))?;
        }
        if w.min_nodes == 0 {
            return Err(invalid(
                format!("{field}.min_nodes"),
                "must be at least 1: a window raises the minimum node count",
            ));
        }
        if s.max_nodes != 0 && w.min_nodes > s.max_nodes {
            return Err(invalid(
                format!("{field}.min_nodes"),
                format!("{} is above max_nodes {}", w.min_nodes, s.max_nodes),
            ));
        }
    }
    Ok(())
}

/// `service_policy.scaling.{name}` at most `max`; `words` says the maximum in time.
fn at_most_u32(name: &str, value: u32, max: u32, words: &str) -> Result<(), Invalid> {
    if value > max {
        return Err(invalid(
            format!("{FIELD}.{name}"),
            format!("{value} is above {max}{words}"),
        ));
    }
    Ok(())
}

/// A target: 0 (not a target) or finite, positive and at most `max`.
fn target(name: &str, value: f64, max: f64) -> Result<(), Invalid> {
    if !value.is_finite() || value < 0.0 {
        return Err(invalid(
            format!("{FIELD}.{name}"),
            format!("{value} is not a finite, non-negative number"),
        ));
    }
    if value > max {
        return Err(invalid(
            format!("{FIELD}.{name}"),
            format!("{value} is above {max}"),
        ));
    }
    Ok(())
}

fn absolute_path(field: &str, path: &str) -> Result<(), Invalid> {
    if path.is_empty() {
        return Err(invalid(field, "must be set to an absolute path"));
    }
    if path.len() > MAX_PATH_BYTES || path.contains('\0') {
        return Err(invalid(
            field,
            format!("must be at most {MAX_PATH_BYTES} bytes without NUL bytes"),
        ));
    }
    if !Path::new(path).is_absolute() {
        return Err(invalid(
            field,
            format!("{path:?} is not an absolute path (start it with /)"),
        ));
    }
    Ok(())
}

fn webhook_url(field: &str, url: &str) -> Result<(), Invalid> {
    if url.len() > MAX_URL_BYTES {
        return Err(invalid(
            field,
            format!("{} bytes exceed the limit of {MAX_URL_BYTES}", url.len()),
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(field, format!("{url:?} is not a URL: {e}")))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(invalid(
            field,
            format!("{url:?} must be an http:// or https:// URL with a host"),
        ));
    }
    Ok(())
}
