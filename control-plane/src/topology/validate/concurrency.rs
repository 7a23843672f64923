//! The rules for a service's concurrency policy: a static limit must be set, limits and
//! the queue within sane maxima, an adaptive limit's bounds in order, the queue waits and
//! the adaptive sample windows bounded. A policy without a limit (`kind` unspecified) must
//! not set the other fields, so an operator who forgot `kind` hears it instead of getting
//! no limit silently.

use meridian_shared::domain::{ConcurrencyLimitKind, ConcurrencyPolicy};

use super::{Invalid, invalid};

/// Highest limit, static or adaptive (calls in flight per proxy and service).
pub const MAX_LIMIT: u32 = 100_000;
/// Most calls waiting in one service's queue on one proxy.
pub const MAX_QUEUE: u32 = 100_000;
/// Longest queue wait: a minute.
pub const MAX_QUEUE_WAIT_MS: u32 = 60_000;
/// Shortest adaptive sample window.
pub const MIN_SAMPLE_WINDOW_MS: u32 = 10;
/// Longest adaptive sample window.
pub const MAX_SAMPLE_WINDOW_MS: u32 = 10_000;
/// Longest time between min-RTT measurements: an hour.
pub const MAX_MIN_RTT_INTERVAL_MS: u32 = 3_600_000;

const FIELD: &str = "service_policy.concurrency";

pub fn concurrency(c: &ConcurrencyPolicy) -> Result<(), Invalid> {
    if c.kind == ConcurrencyLimitKind::None {
        if *c != ConcurrencyPolicy::default() {
            return Err(invalid(
                format!("{FIELD}.kind"),
                "is unspecified (no limit) but other concurrency fields are set; set kind to static or adaptive, or clear them",
            ));
        }
        return Ok(());
    }
    at_most("limit", c.limit, MAX_LIMIT)?;
    at_most("min_limit", c.min_limit, MAX_LIMIT)?;
    at_most("max_limit", c.max_limit, MAX_LIMIT)?;
    at_most("max_queue", c.max_queue, MAX_QUEUE)?;
    at_most("max_queue_wait_ms", c.max_queue_wait_ms, MAX_QUEUE_WAIT_MS)?;
    match c.kind {
        ConcurrencyLimitKind::Static => static_limit(c)?,
        _ => adaptive_limit(c)?,
    }
    let max_wait = c.effective_max_queue_wait().as_millis();
    if u128::from(c.target_queue_wait_ms) > max_wait {
        return Err(invalid(
            format!("{FIELD}.target_queue_wait_ms"),
            format!(
                "{} is above the longest queue wait ({max_wait} ms)",
                c.target_queue_wait_ms
            ),
        ));
    }
    Ok(())
}

fn static_limit(c: &ConcurrencyPolicy) -> Result<(), Invalid> {
    if c.limit == 0 {
        return Err(invalid(
            format!("{FIELD}.limit"),
            "is required for a static limit (1 to 100000)",
        ));
    }
    for (name, value) in [
        ("min_limit", c.min_limit),
        ("max_limit", c.max_limit),
        ("sample_window_ms", c.sample_window_ms),
        ("min_rtt_interval_ms", c.min_rtt_interval_ms),
    ] {
        if value != 0 {
            return Err(invalid(
                format!("{FIELD}.{name}"),
                "applies to adaptive limits only; leave it 0 with a static limit",
            ));
        }
    }
    Ok(())
}

fn adaptive_limit(c: &ConcurrencyPolicy) -> Result<(), Invalid> {
    let (min, max) = (c.effective_min_limit(), c.effective_max_limit());
    if c.max_limit != 0 && c.min_limit > c.max_limit {
        return Err(invalid(
            format!("{FIELD}.min_limit"),
            format!("{} is above max_limit {}", c.min_limit, c.max_limit),
        ));
    }
    if c.limit != 0 && !(min..=max).contains(&c.limit) {
        return Err(invalid(
            format!("{FIELD}.limit"),
            format!(
                "the starting limit {} is outside min_limit {min} to max_limit {max}",
                c.limit
            ),
        ));
    }
    if c.sample_window_ms != 0
        && !(MIN_SAMPLE_WINDOW_MS..=MAX_SAMPLE_WINDOW_MS).contains(&c.sample_window_ms)
    {
        return Err(invalid(
            format!("{FIELD}.sample_window_ms"),
            format!(
                "{} is outside {MIN_SAMPLE_WINDOW_MS} to {MAX_SAMPLE_WINDOW_MS}",
                c.sample_window_ms
            ),
        ));
    }
    at_most(
        "min_rtt_interval_ms",
        c.min_rtt_interval_ms,
        MAX_MIN_RTT_INTERVAL_MS,
    )?;
    let window = c.effective_sample_window();
    if c.effective_min_rtt_interval() < window * 10 {
        return Err(invalid(
            format!("{FIELD}.min_rtt_interval_ms"),
            format!(
                "must be at least ten sample windows ({} ms)",
                window.as_millis() * 10
            ),
        ));
    }
    Ok(())
}

fn at_most(name: &str, value: u32, max: u32) -> Result<(), Invalid> {
    if value > max {
        return Err(invalid(
            format!("{FIELD}.{name}"),
            format!("{value} is above {max}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::QueueDropStrategy;

    use super::*;

    fn adaptive() -> ConcurrencyPolicy {
        ConcurrencyPolicy {
            kind: ConcurrencyLimitKind::Adaptive,
            limit: 20,
            min_limit: 2,
            max_limit: 200,
            max_queue: 50,
            max_queue_wait_ms: 500,
            drop_strategy: QueueDropStrategy::DropOldest,
            target_queue_wait_ms: 100,
            sample_window_ms: 100,
            min_rtt_interval_ms: 30_000,
        }
    }

    fn fixed() -> ConcurrencyPolicy {
        ConcurrencyPolicy {
            kind: ConcurrencyLimitKind::Static,
            limit: 10,
            max_queue: 5,
            ..Default::default()
        }
    }

    #[track_caller]
    fn refused(c: ConcurrencyPolicy, field: &str, words: &str) {
        let err = concurrency(&c).expect_err("accepted");
        assert_eq!(err.field, format!("{FIELD}.{field}"), "{err}");
        assert!(err.message.contains(words), "{err} does not say {words:?}");
    }

    #[test]
    fn good_policies_pass() {
        concurrency(&ConcurrencyPolicy::default()).unwrap();
        concurrency(&adaptive()).unwrap();
        concurrency(&fixed()).unwrap();
        concurrency(&ConcurrencyPolicy {
            kind: ConcurrencyLimitKind::Adaptive,
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        refused(
            ConcurrencyPolicy {
                max_queue: 5,
                ..Default::default()
            },
            "kind",
            "static or adaptive",
        );
        refused(
            ConcurrencyPolicy {
                limit: 0,
                ..fixed()
            },
            "limit",
            "required",
        );
        refused(
            ConcurrencyPolicy {
                limit: MAX_LIMIT + 1,
                ..fixed()
            },
            "limit",
            "above 100000",
        );
        refused(
            ConcurrencyPolicy {
                max_limit: 50,
                ..fixed()
            },
            "max_limit",
            "adaptive limits only",
        );
        refused(
            ConcurrencyPolicy {
                max_queue: MAX_QUEUE + 1,
                ..fixed()
            },
            "max_queue",
            "above",
        );
        refused(
            ConcurrencyPolicy {
                max_queue_wait_ms: 60_001,
                ..fixed()
            },
            "max_queue_wait_ms",
            "above 60000",
        );
        refused(
            ConcurrencyPolicy {
                target_queue_wait_ms: 600,
                ..adaptive()
            },
            "target_queue_wait_ms",
            "longest queue wait (500 ms)",
        );
        refused(
            ConcurrencyPolicy {
                min_limit: 300,
                ..adaptive()
            },
            "min_limit",
            "above max_limit 200",
        );
        refused(
            ConcurrencyPolicy {
                limit: 1,
                ..adaptive()
            },
            "limit",
            "outside min_limit 2",
        );
        refused(
            ConcurrencyPolicy {
                sample_window_ms: 5,
                ..adaptive()
            },
            "sample_window_ms",
            "outside 10 to 10000",
        );
        refused(
            ConcurrencyPolicy {
                min_rtt_interval_ms: 900,
                ..adaptive()
            },
            "min_rtt_interval_ms",
            "ten sample windows (1000 ms)",
        );
    }
}
