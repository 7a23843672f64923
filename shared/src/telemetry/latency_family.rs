//! Latency histograms for a hot path: recording a duration is two relaxed atomic adds
//! into fixed [`LATENCY_BUCKETS`], with no clock read, lock or allocation. The
//! Prometheus recorder's own histograms instead keep every sample (with the instant it
//! was taken) until its next upkeep: at tens of thousands of calls a second that is
//! megabytes held, and a clock read per call. `/metrics` renders a family's series after
//! the recorder's text ([`crate::admin_http::router`]), in the same histogram format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use super::metrics::LATENCY_BUCKETS;

/// Counts per bucket, the last one past every bound (`+Inf`), and the sum of what was
/// recorded.
#[derive(Debug, Default)]
pub struct LatencySeries {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencySeries {
    pub fn record(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        // Prometheus buckets are inclusive: `le` is the first bound at or above the value.
        let index = LATENCY_BUCKETS.partition_point(|&bound| bound < seconds);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// One histogram metric: its name, label names, and a series per label values, held by
/// whoever records into them (a series nobody holds any more is no longer rendered).
#[derive(Debug)]
pub struct LatencyFamily {
    name: &'static str,
    help: &'static str,
    label_names: &'static [&'static str],
    series: Mutex<Vec<HeldSeries>>,
}

/// A series' label values, and the series while someone holds it.
type HeldSeries = (Box<[String]>, Weak<LatencySeries>);

impl LatencyFamily {
    pub const fn new(
        name: &'static str,
        help: &'static str,
        label_names: &'static [&'static str],
    ) -> LatencyFamily {
        LatencyFamily {
            name,
            help,
            label_names,
            series: Mutex::new(Vec::new()),
        }
    }

    /// The series with these label values (in the order of the family's label names):
    /// the one already held by someone, or a new one.
    pub fn series(&self, label_values: &[&str]) -> Arc<LatencySeries> {
        assert_eq!(
            label_values.len(),
            self.label_names.len(),
            "{}: one value per label",
            self.name
        );
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series.retain(|(_, held)| held.strong_count() > 0);
        let found = series
            .iter()
            .find(|(values, _)| {
                values
                    .iter()
                    .map(String::as_str)
                    .eq(label_values.iter().copied())
            })
            .and_then(|(_, held)| held.upgrade());
        if let Some(histogram) = found {
            return histogram;
        }
        let histogram = Arc::new(LatencySeries::default());
        let values = label_values.iter().map(|v| (*v).to_owned()).collect();
        series.push((values, Arc::downgrade(&histogram)));
        histogram
    }

    /// Appends the family in Prometheus text format: cumulative `_bucket` series with an
    /// `le` label, `_sum` (seconds) and `_count`. Nothing when no series is held.
    pub fn render(&self, out: &mut String) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut live = series
            .iter()
            .filter_map(|(values, held)| Some((values, held.upgrade()?)))
            .peekable();
        if live.peek().is_none() {
            return;
        }
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}", self.help);
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (values, histogram) in live {
            let mut labels = String::new();
            for (label, value) in self.label_names.iter().zip(values.iter()) {
                let _ = write!(labels, "{label}=\"{}\",", escape(value));
            }
            let mut count = 0;
            for (index, bucket) in histogram.buckets.iter().enumerate() {
                count += bucket.load(Ordering::Relaxed);
                let le = LATENCY_BUCKETS
                    .get(index)
                    .map_or_else(|| "+Inf".to_owned(), f64::to_string);
                let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {count}");
            }
            let labels = labels.trim_end_matches(',');
            let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}

/// A label value as the text format wants it: backslash, double quote and line feed
/// escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    static FAMILY: LatencyFamily = LatencyFamily::new(
        "test_duration_seconds",
        "What the test timed.",
        &["service", "node"],
    );

    #[test]
    fn renders_cumulative_buckets_sum_and_count_per_series() {
        let a = FAMILY.series(&["s", "n"]);
        let b = FAMILY.series(&["s", "other \"node\""]);
        for ms in [1, 4, 22, 22] {
            a.record(Duration::from_millis(ms));
        }
        b.record(Duration::from_secs(60));
        let mut text = String::new();
        FAMILY.render(&mut text);
        assert_eq!(
            text.matches("# TYPE test_duration_seconds histogram")
                .count(),
            1
        );
        for line in [
            "test_duration_seconds_bucket{service=\"s\",node=\"n\",le=\"0.0005\"} 0",
            // A value on a bound counts in that bound's bucket.
            "test_duration_seconds_bucket{service=\"s\",node=\"n\",le=\"0.001\"} 1",
            "test_duration_seconds_bucket{service=\"s\",node=\"n\",le=\"0.005\"} 2",
            "test_duration_seconds_bucket{service=\"s\",node=\"n\",le=\"0.02\"} 2",
            "test_duration_seconds_bucket{service=\"s\",node=\"n\",le=\"0.025\"} 4",
            "test_duration_seconds_bucket{service=\"s\",node=\"n\",le=\"+Inf\"} 4",
            "test_duration_seconds_sum{service=\"s\",node=\"n\"} 0.049",
            "test_duration_seconds_count{service=\"s\",node=\"n\"} 4",
            "test_duration_seconds_bucket{service=\"s\",node=\"other \\\"node\\\"\",le=\"30\"} 0",
            "test_duration_seconds_bucket{service=\"s\",node=\"other \\\"node\\\"\",le=\"+Inf\"} 1",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "missing {line}:\n{text}"
            );
        }
    }

    #[test]
    fn the_same_labels_share_a_series_until_nobody_holds_it() {
        static SHARED: LatencyFamily = LatencyFamily::new("shared_seconds", "Shared.", &["node"]);
        let first = SHARED.series(&["n"]);
        let second = SHARED.series(&["n"]);
        assert!(Arc::ptr_eq(&first, &second));
        first.record(Duration::from_millis(1));
        drop((first, second));
        let mut text = String::new();
        SHARED.render(&mut text);
        assert_eq!(text, "", "a series nobody holds is not rendered");
        let again = SHARED.series(&["n"]);
        again.record(Duration::from_millis(1));
        SHARED.render(&mut text);
        assert!(
            text.contains("shared_seconds_count{node=\"n\"} 1\n"),
            "{text}"
        );
    }
}
