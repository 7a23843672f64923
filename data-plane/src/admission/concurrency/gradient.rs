//! The adaptive concurrency limit: a gradient limit in the style of Netflix's
//! concurrency-limits (`GradientLimit`) and Envoy's adaptive concurrency filter.
//!
//! Little's law says that once a backend is saturated, more calls in flight only add
//! queueing: latency rises in proportion. So every sample window the limit compares the
//! window's mean round-trip time with the no-load one (the *min RTT*):
//!
//! ```text
//! gradient = clamp(min_rtt × 1.1 / sample_rtt, 0.5, 1)
//! limit    = limit × gradient + sqrt(limit)        (the queue allowance)
//! limit    = bounded by min_limit and max_limit, smoothed (20 % of the step per window)
//! ```
//!
//! At a saturated backend with `W` workers, `sample_rtt ≈ min_rtt × in_flight / W`, so the
//! limit settles where `limit × W / (limit / 1.1) + sqrt(limit) = limit`, i.e. near
//! `1.1 W + sqrt(limit)`: a little above the backend's real capacity, enough to keep it busy,
//! never so much that calls pile up in its queue. The 10 % tolerance keeps noise in the
//! measured RTTs from shrinking the limit of an idle backend; the gradient's floor of 0.5
//! keeps one slow window from halving the limit more than once.
//!
//! The min RTT is measured (Envoy's way) at the start and again every `min_rtt_interval`:
//! the limit drops to `min_limit` for one window (calls let in earlier drain) and the mean
//! RTT of the next window, at that low concurrency, is the new min RTT. Without that, a
//! min RTT taken under load would ratchet the limit up. The limit does not grow while
//! less than half of it is used: an idle service must not earn a limit it never tested.
//!
//! This file is the arithmetic only, driven with measured windows; [`super`] feeds it.

use std::time::Duration;

use tokio::time::Instant;

/// The sample RTT may exceed the min RTT by this share before the limit shrinks.
const TOLERANCE: f64 = 1.1;
/// The most one window shrinks the limit by (as a gradient).
const MIN_GRADIENT: f64 = 0.5;
/// Share of each computed step taken per window.
const SMOOTHING: f64 = 0.2;

/// Where the limit is in its min-RTT measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Following the gradient.
    Steady,
    /// Held at `min_limit` for a window while calls let in before drain; the limit to
    /// come back to.
    Draining(f64),
    /// Held at `min_limit`; this window's mean RTT becomes the min RTT.
    Measuring(f64),
}

/// One window's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub mean_rtt: Duration,
    /// The most calls in flight at once during the window.
    pub peak_in_flight: u32,
}

#[derive(Debug)]
pub struct GradientLimit {
    min_limit: f64,
    max_limit: f64,
    limit: f64,
    min_rtt: Option<Duration>,
    min_rtt_interval: Duration,
    next_measurement: Instant,
    phase: Phase,
}

impl GradientLimit {
    /// A limit starting at `initial` that measures its min RTT first (so the first windows
    /// run at `min_limit`).
    pub fn new(initial: u32, min_limit: u32, max_limit: u32, min_rtt_interval: Duration) -> Self {
        let initial = f64::from(initial);
        GradientLimit {
            min_limit: f64::from(min_limit),
            max_limit: f64::from(max_limit),
            limit: initial,
            min_rtt: None,
            min_rtt_interval,
            next_measurement: Instant::now(),
            phase: Phase::Measuring(initial),
        }
    }

    /// The limit to enforce now.
    pub fn limit(&self) -> u32 {
        let limit = match self.phase {
            Phase::Steady => self.limit,
            Phase::Draining(_) | Phase::Measuring(_) => self.min_limit,
        };
        limit.round() as u32
    }

    /// The no-load RTT measured last.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Takes one window's measurements at `now`; returns the limit to enforce from now.
    pub fn update(&mut self, now: Instant, window: Window) -> u32 {
        match self.phase {
            Phase::Draining(resume) => {
                self.phase = Phase::Measuring(resume);
                return self.limit();
            }
            Phase::Measuring(resume) => {
                self.min_rtt = Some(window.mean_rtt);
                self.limit = resume;
                self.phase = Phase::Steady;
                self.next_measurement = now + self.min_rtt_interval;
                return self.limit();
            }
            Phase::Steady => {}
        }
        if now >= self.next_measurement {
            self.phase = Phase::Draining(self.limit);
            return self.limit();
        }
        let min_rtt = self.min_rtt.unwrap_or(window.mean_rtt);
        let sample = window.mean_rtt.as_secs_f64().max(1e-9);
        let gradient = (min_rtt.as_secs_f64() * TOLERANCE / sample).clamp(MIN_GRADIENT, 1.0);
        let app_limited = f64::from(window.peak_in_flight) < self.limit / 2.0;
        if gradient >= 1.0 && app_limited {
            return self.limit();
        }
        let target = self.limit * gradient + self.limit.sqrt();
        let next = self.limit * (1.0 - SMOOTHING) + target * SMOOTHING;
        self.limit = next.clamp(self.min_limit, self.max_limit);
        self.limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN_RTT: Duration = Duration::from_millis(50);
    const WINDOW: Duration = Duration::from_millis(100);

    /// A backend with `workers` workers each taking 50 ms: the RTT at `in_flight` calls.
    fn backend_rtt(workers: u32, in_flight: u32) -> Duration {
        MIN_RTT.mul_f64((f64::from(in_flight) / f64::from(workers)).max(1.0))
    }

    /// Drives `limit` for `windows` windows against a backend of `workers` workers under
    /// more demand than any limit (so the limit is always full); returns the limits seen.
    fn drive(limit: &mut GradientLimit, workers: u32, windows: u32) -> Vec<u32> {
        let mut now = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..windows {
            let in_flight = limit.limit();
            let window = Window {
                mean_rtt: backend_rtt(workers, in_flight),
                peak_in_flight: in_flight,
            };
            now += WINDOW;
            seen.push(limit.update(now, window));
        }
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_settles_just_above_a_saturated_backends_capacity() {
        for (workers, start) in [(20, 20), (20, 200), (50, 5)] {
            let mut limit = GradientLimit::new(start, 3, 1_000, Duration::from_secs(3_600));
            let seen = drive(&mut limit, workers, 300);
            let last = &seen[250..];
            let (low, high) = (*last.iter().min().unwrap(), *last.iter().max().unwrap());
            println!(
                "{workers} workers, starting at {start}: settled between {low} and {high} (first windows {:?})",
                &seen[..12]
            );
            let capacity = f64::from(workers);
            assert!(
                f64::from(low) >= capacity && f64::from(high) <= capacity * 1.1 + 12.0,
                "{workers} workers: the limit settled between {low} and {high}"
            );
            assert_eq!(limit.min_rtt(), Some(MIN_RTT), "measured at min_limit");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_windows_measure_the_min_rtt_at_the_minimum_limit() {
        let mut limit = GradientLimit::new(20, 3, 1_000, Duration::from_secs(1));
        assert_eq!(limit.limit(), 3, "measuring first");
        let now = Instant::now();
        let window = |rtt_ms| Window {
            mean_rtt: Duration::from_millis(rtt_ms),
            peak_in_flight: 3,
        };
        assert_eq!(
            limit.update(now + WINDOW, window(40)),
            20,
            "measured: back to 20"
        );
        assert_eq!(limit.min_rtt(), Some(Duration::from_millis(40)));
        // A second later the min RTT is measured again: one window draining, one measuring.
        let later = now + Duration::from_millis(1_200);
        assert_eq!(limit.update(later, window(80)), 3);
        assert_eq!(limit.update(later + WINDOW, window(80)), 3);
        assert_eq!(limit.update(later + WINDOW * 2, window(60)), 20);
        assert_eq!(limit.min_rtt(), Some(Duration::from_millis(60)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_service_does_not_grow_its_limit() {
        let mut limit = GradientLimit::new(20, 3, 1_000, Duration::from_secs(3_600));
        let mut now = Instant::now();
        for _ in 0..100 {
            now += WINDOW;
            limit.update(
                now,
                Window {
                    mean_rtt: MIN_RTT,
                    peak_in_flight: 4,
                },
            );
        }
        assert_eq!(limit.limit(), 20);
    }
}
