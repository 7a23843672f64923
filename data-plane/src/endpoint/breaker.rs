//! A per-endpoint circuit breaker, so the balancers only ever pick endpoints that are
//! ready (the "failure through readiness" approach of linkerd2-proxy: breaking and
//! balancing never disagree). Closed: calls flow; after `threshold` consecutive failures
//! (connection refused, reset, UNAVAILABLE) it opens for a jittered penalty that doubles
//! from a minimum to a maximum each time it re-opens. When the penalty is over, one probe
//! call is let through (half-open): success closes the breaker and resets the penalty,
//! failure re-opens it. All state is in atomics; readers on the request path never lock.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::clock;

/// What a breaker is configured with (from the service's outlier policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    pub threshold: u32,
    pub min_penalty: Duration,
    pub max_penalty: Duration,
    /// Failure share over `window` that opens the breaker, in percent.
    pub failure_rate_percent: u32,
    /// Calls needed in the window before the failure rate counts.
    pub min_requests: u32,
    pub window: Duration,
}

impl Default for BreakerSettings {
    /// The defaults of the outlier policy.
    fn default() -> Self {
        BreakerSettings::from_policy(&meridian_shared::domain::OutlierPolicy::default())
    }
}

impl BreakerSettings {
    /// The settings an outlier policy asks for; zero fields take its defaults.
    pub fn from_policy(policy: &meridian_shared::domain::OutlierPolicy) -> Self {
        BreakerSettings {
            threshold: policy.effective_consecutive_failures(),
            min_penalty: policy.effective_base_ejection(),
            max_penalty: policy.effective_max_ejection(),
            failure_rate_percent: policy.effective_failure_rate_percent(),
            min_requests: policy.effective_min_requests(),
            window: policy.effective_window(),
        }
    }
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    threshold: u32,
    min_penalty_ns: i64,
    max_penalty_ns: i64,
    consecutive_failures: AtomicU32,
    /// When the current penalty ends (ns since the process epoch); 0 when closed.
    open_until: AtomicI64,
    /// The penalty to apply on the next opening.
    next_penalty_ns: AtomicI64,
    /// When the single half-open probe went out (ns since the epoch); 0 when none.
    probe_since: AtomicI64,
    /// `meridian_proxy_endpoint_breaker_open{node}`, once the endpoint knows its node.
    state_gauge: std::sync::OnceLock<metrics::Gauge>,
    /// The failure-rate window: when it started, calls and failures in it.
    window_start: AtomicI64,
    window_calls: AtomicU32,
    window_failures: AtomicU32,
}

/// A probe that never reported (its call was dropped) stops blocking new probes after this.
const PROBE_TIMEOUT_NS: i64 = 10_000_000_000;

impl Default for Breaker {
    fn default() -> Self {
        Breaker::with_settings(BreakerSettings::default())
    }
}

impl Breaker {
    pub fn new(threshold: u32, min_penalty: Duration, max_penalty: Duration) -> Self {
        Breaker::with_settings(BreakerSettings {
            threshold,
            min_penalty,
            max_penalty,
            ..BreakerSettings::default()
        })
    }

    pub fn with_settings(settings: BreakerSettings) -> Self {
        let BreakerSettings {
            threshold,
            min_penalty,
            max_penalty,
            ..
        } = settings;
        let min = nanos(min_penalty);
        Breaker {
            settings,
            threshold: threshold.max(1),
            min_penalty_ns: min,
            max_penalty_ns: nanos(max_penalty).max(min),
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicI64::new(0),
            next_penalty_ns: AtomicI64::new(min),
            probe_since: AtomicI64::new(0),
            state_gauge: std::sync::OnceLock::new(),
            window_start: AtomicI64::new(now_ns()),
            window_calls: AtomicU32::new(0),
            window_failures: AtomicU32::new(0),
        }
    }

    /// Whether a new call may go to this endpoint now: closed, or open with its penalty
    /// over and no probe out. Only reads, so balancers may ask about endpoints they do
    /// not end up choosing.
    pub fn is_ready(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = now_ns();
        if now < until {
            return false;
        }
        let probe = self.probe_since.load(Ordering::Acquire);
        probe == 0 || now - probe > PROBE_TIMEOUT_NS
    }

    /// A call is going to this endpoint: when the breaker is half-open, this call is the
    /// probe.
    pub fn start_call(&self) {
        if self.open_until.load(Ordering::Acquire) != 0 {
            self.probe_since.store(now_ns(), Ordering::Release);
        }
    }

    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// Whether the breaker is open (penalty running or probe out).
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Records a successful call; returns whether it closed the breaker (the endpoint is
    /// back and should warm up).
    pub fn record_success(&self) -> bool {
        self.count(false);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let closed = self.open_until.swap(0, Ordering::AcqRel) != 0;
        if closed {
            self.next_penalty_ns
                .store(self.min_penalty_ns, Ordering::Relaxed);
            self.probe_since.store(0, Ordering::Release);
            metrics::counter!("meridian_proxy_breaker_transitions_total", "to" => "closed")
                .increment(1);
            if let Some(gauge) = self.state_gauge.get() {
                gauge.set(0.0);
            }
        }
        closed
    }

    pub fn record_failure(&self) {
        self.record_failure_unless_capped(true);
    }

    /// Records a failure; the breaker may open only when `may_open` (false when the
    /// service already has its maximum share of endpoints ejected).
    pub fn record_failure_unless_capped(&self, may_open: bool) {
        let (calls, failed) = self.count(true);
        let rate_exceeded = calls >= self.settings.min_requests
            && u64::from(failed) * 100
                >= u64::from(self.settings.failure_rate_percent) * u64::from(calls);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let was_open = self.open_until.load(Ordering::Acquire) != 0;
        // A failed probe re-opens at once; a closed breaker opens at the threshold; other
        // calls failing while it is open (started before it opened) change nothing.
        if was_open && self.probe_since.load(Ordering::Acquire) == 0 {
            return;
        }
        if was_open || ((failures >= self.threshold || rate_exceeded) && may_open) {
            self.open();
        }
    }

    /// Sets the gauge that exports this breaker's state for `node`.
    pub fn export_state(&self, gauge: metrics::Gauge) {
        let _ = self.state_gauge.set(gauge);
    }

    /// Counts a call in the failure-rate window (starting a new window when the last one
    /// is over); returns the window's calls and failures so far.
    fn count(&self, failed: bool) -> (u32, u32) {
        let now = now_ns();
        let start = self.window_start.load(Ordering::Relaxed);
        if now - start > nanos(self.settings.window)
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.window_calls.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
        }
        let calls = self.window_calls.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = if failed {
            self.window_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.window_failures.load(Ordering::Relaxed)
        };
        (calls, failures)
    }

    fn open(&self) {
        // A readmitted endpoint starts with a fresh window.
        self.window_calls.store(0, Ordering::Relaxed);
        self.window_failures.store(0, Ordering::Relaxed);
        let penalty = self.next_penalty_ns.load(Ordering::Relaxed);
        let jittered = rand::rng().random_range(penalty / 2..=penalty).max(1);
        self.open_until
            .store(now_ns() + jittered, Ordering::Release);
        self.next_penalty_ns.store(
            penalty.saturating_mul(2).min(self.max_penalty_ns),
            Ordering::Relaxed,
        );
        self.probe_since.store(0, Ordering::Release);
        metrics::counter!("meridian_proxy_breaker_transitions_total", "to" => "open").increment(1);
        if let Some(gauge) = self.state_gauge.get() {
            gauge.set(1.0);
        }
    }
}

pub(crate) fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Nanoseconds since a process-wide epoch, on tokio's clock (so paused-time tests work).
pub(crate) fn now_ns() -> i64 {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| tokio::time::Instant::now() - Duration::from_secs(1));
    let now = clock::now();
    if now >= epoch {
        nanos(now - epoch)
    } else {
        -nanos(epoch - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(3, Duration::from_secs(1), Duration::from_secs(8))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_once_after_the_penalty() {
        let b = breaker();
        b.record_failure();
        b.record_failure();
        assert!(b.is_ready(), "two failures are under the threshold");
        b.record_success();
        b.record_failure();
        b.record_failure();
        assert!(b.is_ready(), "a success resets the count");
        b.record_failure();
        assert!(!b.is_ready(), "three consecutive failures open it");

        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(b.is_ready(), "after the penalty one probe goes through");
        assert!(b.is_ready(), "asking does not take the probe");
        b.start_call();
        assert!(!b.is_ready(), "only one probe at a time");
        b.record_success();
        assert!(b.is_ready() && b.is_ready(), "a successful probe closes it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_with_a_longer_penalty() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(b.is_ready());
        b.start_call();
        b.record_failure();
        assert!(!b.is_ready());
        // The second penalty is between 1 s and 2 s (jittered half to full of 2 s).
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!b.is_ready(), "the penalty doubled");
        tokio::time::advance(Duration::from_millis(1_002)).await;
        assert!(b.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_calls_started_before_opening_do_not_extend_the_penalty() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure();
        }
        b.record_failure();
        b.record_failure();
        tokio::time::advance(Duration::from_millis(1_001)).await;
        assert!(
            b.is_ready(),
            "late failures while open must not push the probe back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_high_failure_rate_opens_it_without_consecutive_failures() {
        let b = Breaker::with_settings(BreakerSettings {
            threshold: 100,
            min_requests: 10,
            failure_rate_percent: 50,
            window: Duration::from_secs(10),
            ..BreakerSettings::default()
        });
        // Alternating success and failure: never two failures in a row, 50 % failing.
        for _ in 0..4 {
            b.record_success();
            b.record_failure();
        }
        assert!(
            b.is_ready(),
            "under min_requests the rate does not count yet"
        );
        b.record_success();
        b.record_failure();
        assert!(!b.is_ready(), "10 calls at 50 % failures open it");
    }

    #[tokio::test(start_paused = true)]
    async fn the_failure_rate_window_rolls_over() {
        let b = Breaker::with_settings(BreakerSettings {
            threshold: 100,
            min_requests: 10,
            failure_rate_percent: 50,
            window: Duration::from_secs(10),
            ..BreakerSettings::default()
        });
        for _ in 0..4 {
            b.record_success();
            b.record_failure();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        b.record_success();
        b.record_failure();
        assert!(b.is_ready(), "failures of an old window must not count");
    }
}
