//! Forecasts of one metric's demand (see [`super::hpa`]: metric × nodes) at a horizon.
//!
//! - **Holt's linear trend** (double exponential smoothing) over the raw observations of
//!   the last two hours (at most [`MAX_SAMPLES`]). Observations need not be evenly spaced:
//!   the trend is kept per second and the level update projects it over each gap,
//!   `level = α·y + (1−α)·(level + trend·Δt)`, `trend = β·(level − level₀)/Δt + (1−β)·trend`,
//!   and the forecast is `level + trend·horizon`. α = 0.5 and β = 0.3: autoscaling wants to
//!   see a ramp within a handful of observations, more than it wants to ignore noise (the
//!   tolerance band and the stabilisation windows absorb noise; a late forecast is
//!   useless). On an exact linear ramp Holt's forecast converges to the ramp itself. A gap
//!   of more than [`MAX_GAP`] between observations starts the history over.
//! - **Holt-Winters additive** when the policy sets a season and the history covers two
//!   full seasons: the season is cut into [`SEASON_SLOTS`] buckets (a daily season: 30
//!   minutes each), each bucket holds the mean of the observations that fell in it, the
//!   last three seasons are kept, a missing bucket repeats the one before it. Initial
//!   level and seasonal offsets come from the first season, the initial trend from the
//!   difference of the first two seasons' means. α = 0.3, β = 0.05, γ = 0.3: the level
//!   follows within a few buckets, the trend is slow (it spans seasons), the seasonal
//!   shape adapts over about three seasons. With less history it falls back to Holt.
//!
//! Forecasts are never negative. Fewer than [`MIN_SAMPLES`] observations give none.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Raw observations kept for Holt.
pub const MAX_SAMPLES: usize = 1_440;
/// How far back raw observations are kept.
pub const RAW_SPAN: Duration = Duration::from_secs(2 * 3600);
/// A gap between observations after which Holt starts over: a trend drawn across an
/// outage of the load reports (or a leader that was not leading) says nothing.
pub const MAX_GAP: Duration = Duration::from_secs(600);
/// Observations needed before Holt forecasts.
pub const MIN_SAMPLES: usize = 3;
/// Buckets per season for Holt-Winters.
pub const SEASON_SLOTS: u64 = 48;
/// Seasons of buckets kept.
const SEASONS_KEPT: u64 = 3;

const HOLT_ALPHA: f64 = 0.5;
const HOLT_BETA: f64 = 0.3;
const HW_ALPHA: f64 = 0.3;
const HW_BETA: f64 = 0.05;
const HW_GAMMA: f64 = 0.3;

/// Which method made a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Holt,
    HoltWinters,
}

/// A forecast value and how it was made.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    pub value: f64,
    pub method: Method,
}

/// One metric's history.
#[derive(Debug, Clone, Default)]
pub struct MetricHistory {
    /// (seconds since the epoch, value), oldest first, strictly increasing times.
    raw: VecDeque<(f64, f64)>,
    /// (bucket index since the epoch, sum, count), oldest first.
    buckets: VecDeque<(u64, f64, u32)>,
    /// The bucket width the buckets were made with; a new season restarts them.
    bucket_ms: u64,
}

impl MetricHistory {
    /// Adds an observation. One at the same instant as the last replaces it; one older
    /// than the last is ignored (a clock that stepped back).
    pub fn record(&mut self, at: SystemTime, value: f64, season: Duration) {
        if !value.is_finite() {
            return;
        }
        let t = seconds(at);
        match self.raw.back_mut() {
            Some(last) if t < last.0 => return,
            Some(last) if t == last.0 => last.1 = value,
            Some(last) if t - last.0 > MAX_GAP.as_secs_f64() => {
                self.raw.clear();
                self.raw.push_back((t, value));
            }
            _ => self.raw.push_back((t, value)),
        }
        while self.raw.len() > MAX_SAMPLES
            || self
                .raw
                .front()
                .is_some_and(|(first, _)| t - first > RAW_SPAN.as_secs_f64())
        {
            self.raw.pop_front();
        }
        self.record_seasonal(at, value, season);
    }

    fn record_seasonal(&mut self, at: SystemTime, value: f64, season: Duration) {
        let bucket_ms = bucket_ms(season);
        if bucket_ms != self.bucket_ms {
            self.buckets.clear();
            self.bucket_ms = bucket_ms;
        }
        if bucket_ms == 0 {
            return;
        }
        let index = millis(at) / bucket_ms;
        match self.buckets.back_mut() {
            Some(last) if index < last.0 => return,
            Some(last) if index == last.0 => {
                last.1 += value;
                last.2 += 1;
            }
            _ => self.buckets.push_back((index, value, 1)),
        }
        let keep = SEASONS_KEPT * SEASON_SLOTS;
        while self
            .buckets
            .front()
            .is_some_and(|first| index - first.0 >= keep)
        {
            self.buckets.pop_front();
        }
    }

    /// The forecast `horizon` after the last observation: Holt-Winters when `season` is set
    /// and two seasons are covered, else Holt.
    pub fn forecast(&self, horizon: Duration, season: Duration) -> Option<Forecast> {
        if let Some(value) = self.holt_winters(horizon, season) {
            return Some(Forecast {
                value: value.max(0.0),
                method: Method::HoltWinters,
            });
        }
        holt(self.raw.iter().copied(), horizon).map(|value| Forecast {
            value: value.max(0.0),
            method: Method::Holt,
        })
    }

    fn holt_winters(&self, horizon: Duration, season: Duration) -> Option<f64> {
        let bucket_ms = bucket_ms(season);
        if bucket_ms == 0 || bucket_ms != self.bucket_ms {
            return None;
        }
        let (first, last) = (self.buckets.front()?.0, self.buckets.back()?.0);
        if last - first + 1 < 2 * SEASON_SLOTS {
            return None;
        }
        // Evenly spaced series, a missing bucket repeating the one before.
        let mut series = Vec::with_capacity((last - first + 1) as usize);
        let mut next = self.buckets.iter().peekable();
        let mut previous = 0.0;
        for index in first..=last {
            if let Some(&&(i, sum, count)) = next.peek()
                && i == index
            {
                previous = sum / f64::from(count);
                next.next();
            }
            series.push(previous);
        }
        let steps = horizon.as_millis().div_ceil(u128::from(bucket_ms)).max(1);
        holt_winters(&series, SEASON_SLOTS as usize, steps as usize)
    }
}

/// Holt's linear trend over irregular (seconds, value) samples; the forecast `horizon`
/// after the last one.
pub fn holt(samples: impl IntoIterator<Item = (f64, f64)>, horizon: Duration) -> Option<f64> {
    let mut samples = samples.into_iter();
    let (mut t0, y0) = samples.next()?;
    let (t1, y1) = samples.next()?;
    if t1 <= t0 {
        return None;
    }
    let mut level = y1;
    let mut trend = (y1 - y0) / (t1 - t0);
    t0 = t1;
    let mut seen = 2;
    for (t, y) in samples {
        let dt = t - t0;
        if dt <= 0.0 {
            continue;
        }
        let previous = level;
        level = HOLT_ALPHA * y + (1.0 - HOLT_ALPHA) * (level + trend * dt);
        trend = HOLT_BETA * (level - previous) / dt + (1.0 - HOLT_BETA) * trend;
        t0 = t;
        seen += 1;
    }
    (seen >= MIN_SAMPLES).then_some(level + trend * horizon.as_secs_f64())
}

/// Additive Holt-Winters over an evenly spaced series with period `m` (at least two
/// periods long); the forecast `steps` after the last value.
pub fn holt_winters(series: &[f64], m: usize, steps: usize) -> Option<f64> {
    if m == 0 || series.len() < 2 * m {
        return None;
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, second) = (mean(&series[..m]), mean(&series[m..2 * m]));
    let mut level = first;
    let mut trend = (second - first) / m as f64;
    // seasonal[i % m]: the latest estimate for position i of the season.
    let mut seasonal: Vec<f64> = series[..m].iter().map(|y| y - first).collect();
    for (i, &y) in series.iter().enumerate().skip(m) {
        let previous = level;
        let s = seasonal[i % m];
        level = HW_ALPHA * (y - s) + (1.0 - HW_ALPHA) * (level + trend);
        trend = HW_BETA * (level - previous) + (1.0 - HW_BETA) * trend;
        seasonal[i % m] = HW_GAMMA * (y - level) + (1.0 - HW_GAMMA) * s;
    }
    let target = series.len() - 1 + steps;
    Some(level + steps as f64 * trend + seasonal[target % m])
}

/// The bucket width for a season, 0 without one.
fn bucket_ms(season: Duration) -> u64 {
    let ms = u64::try_from(season.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        0
    } else {
        (ms / SEASON_SLOTS).max(1)
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn millis(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::f64::consts::TAU;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_795_996_800 + secs)
    }

    fn close(actual: f64, expected: f64, within_percent: f64) -> bool {
        (actual - expected).abs() <= expected.abs() * within_percent / 100.0
    }

    #[test]
    fn holt_on_a_linear_ramp_predicts_the_ramp() {
        // 100 + 2/s, observed every 5 s for a minute: forecast a minute ahead.
        let mut h = MetricHistory::default();
        for i in 0..=12 {
            h.record(at(i * 5), 100.0 + 2.0 * (i * 5) as f64, Duration::ZERO);
        }
        let f = h.forecast(Duration::from_secs(60), Duration::ZERO).unwrap();
        assert_eq!(f.method, Method::Holt);
        // At t = 60 s the ramp is at 220; at 120 s it will be 340.
        assert!(close(f.value, 340.0, 3.0), "forecast {}", f.value);
    }

    #[test]
    fn holt_with_noise_and_uneven_spacing_still_follows_the_ramp() {
        let mut h = MetricHistory::default();
        let mut t = 0;
        for i in 0..40u64 {
            t += 4 + i % 3; // 4, 5, 6 s apart
            let noise = [3.0, -2.0, 1.0, -3.0, 2.0][(i % 5) as usize];
            h.record(at(t), 50.0 + 1.5 * t as f64 + noise, Duration::ZERO);
        }
        let f = h.forecast(Duration::from_secs(30), Duration::ZERO).unwrap();
        let expected = 50.0 + 1.5 * (t + 30) as f64;
        assert!(
            close(f.value, expected, 5.0),
            "forecast {} vs {expected}",
            f.value
        );
    }

    #[test]
    fn holt_on_a_flat_signal_forecasts_the_same_level() {
        let mut h = MetricHistory::default();
        for i in 0..20 {
            h.record(at(i * 5), 80.0, Duration::ZERO);
        }
        let f = h
            .forecast(Duration::from_secs(300), Duration::ZERO)
            .unwrap();
        assert!(close(f.value, 80.0, 0.01), "{}", f.value);
    }

    #[test]
    fn too_little_history_forecasts_nothing() {
        let mut h = MetricHistory::default();
        assert!(
            h.forecast(Duration::from_secs(60), Duration::ZERO)
                .is_none()
        );
        h.record(at(0), 1.0, Duration::ZERO);
        h.record(at(5), 2.0, Duration::ZERO);
        assert!(
            h.forecast(Duration::from_secs(60), Duration::ZERO)
                .is_none()
        );
        h.record(at(10), 3.0, Duration::ZERO);
        assert!(
            h.forecast(Duration::from_secs(60), Duration::ZERO)
                .is_some()
        );
    }

    #[test]
    fn a_falling_forecast_is_never_negative() {
        let mut h = MetricHistory::default();
        for i in 0..10 {
            h.record(at(i * 5), 100.0 - 10.0 * i as f64, Duration::ZERO);
        }
        let f = h
            .forecast(Duration::from_secs(600), Duration::ZERO)
            .unwrap();
        assert_eq!(f.value, 0.0);
    }

    #[test]
    fn raw_history_is_bounded() {
        let mut h = MetricHistory::default();
        for i in 0..(MAX_SAMPLES as u64 * 2) {
            h.record(at(i), 1.0, Duration::ZERO);
        }
        assert_eq!(h.raw.len(), MAX_SAMPLES);
        let mut h = MetricHistory::default();
        for i in 0..100 {
            h.record(at(i * 300), 1.0, Duration::ZERO); // every 5 minutes
        }
        assert_eq!(h.raw.len(), 25, "two hours of 5-minute samples, both ends");
    }

    #[test]
    fn a_long_gap_starts_the_trend_over() {
        let mut h = MetricHistory::default();
        for i in 0..10 {
            h.record(at(i * 5), 100.0 + 10.0 * i as f64, Duration::ZERO);
        }
        // Reports stop for 15 minutes; afterwards the load is flat.
        for i in 0..3 {
            h.record(at(945 + i * 5), 150.0, Duration::ZERO);
        }
        let f = h.forecast(Duration::from_secs(60), Duration::ZERO).unwrap();
        assert!(close(f.value, 150.0, 0.01), "{}", f.value);
    }

    /// A daily-like cycle compressed to 8 minutes, observed every 10 s (one bucket each).
    fn periodic(t: u64, season: u64) -> f64 {
        100.0 + 50.0 * (TAU * t as f64 / season as f64).sin()
    }

    #[test]
    fn holt_winters_follows_a_periodic_signal_where_holt_cannot() {
        let season = 480;
        let s = Duration::from_secs(season);
        let mut h = MetricHistory::default();
        let end = 3 * season - 10;
        for t in (0..=end).step_by(10) {
            h.record(at(t), periodic(t, season), s);
        }
        // A quarter season ahead: from the middle of the rise to near the peak... the
        // signal at end + 120 s.
        let horizon = Duration::from_secs(120);
        let expected = periodic(end + 120, season);
        let hw = h.forecast(horizon, s).unwrap();
        assert_eq!(hw.method, Method::HoltWinters);
        assert!(close(hw.value, expected, 5.0), "{} vs {expected}", hw.value);
        // Holt over the same history extrapolates the last slope and misses by far more.
        let holt_only = h.forecast(horizon, Duration::ZERO).unwrap();
        assert_eq!(holt_only.method, Method::Holt);
        assert!(
            (holt_only.value - expected).abs() > 3.0 * (hw.value - expected).abs(),
            "holt {} hw {} expected {expected}",
            holt_only.value,
            hw.value
        );
    }

    #[test]
    fn holt_winters_needs_two_seasons_and_falls_back_to_holt() {
        let season = 480;
        let s = Duration::from_secs(season);
        let mut h = MetricHistory::default();
        for t in (0..season + 200).step_by(10) {
            h.record(at(t), periodic(t, season), s);
        }
        assert_eq!(
            h.forecast(Duration::from_secs(60), s).unwrap().method,
            Method::Holt
        );
    }

    #[test]
    fn seasonal_buckets_keep_three_seasons() {
        let season = 480;
        let s = Duration::from_secs(season);
        let mut h = MetricHistory::default();
        for t in (0..10 * season).step_by(10) {
            h.record(at(t), 1.0, s);
        }
        assert_eq!(h.buckets.len() as u64, SEASONS_KEPT * SEASON_SLOTS);
    }
}
