//! Reading Prometheus exposition text the way Prometheus does, for tests that check what
//! an operator's queries would show: the histogram buckets of a metric summed over every
//! series and process (`sum by (le)`), the increase between two scrapes (`rate` over the
//! window, times its length), and `histogram_quantile` with Prometheus's own algorithm.

use std::collections::BTreeMap;

/// Cumulative bucket counts by upper bound (`le`), `+Inf` as `f64::INFINITY`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub BTreeMap<OrderedBound, f64>);

/// An `le` bound that can key a map (no NaN in exposition bounds).
#[derive(Debug, Clone, Copy)]
pub struct OrderedBound(pub f64);

impl PartialEq for OrderedBound {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrderedBound {}

impl PartialOrd for OrderedBound {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrderedBound {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl Buckets {
    /// `sum by (le) (name_bucket{...})` over every series of `text` whose labels contain
    /// all of `matching` (`label="value"` pairs).
    pub fn scrape(text: &str, name: &str, matching: &[(&str, &str)]) -> Buckets {
        let prefix = format!("{name}_bucket{{");
        let mut sums = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with(&prefix)) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let labels = &series[prefix.len()..series.len() - 1];
            if !matching
                .iter()
                .all(|(k, v)| labels.contains(&format!("{k}=\"{v}\"")))
            {
                continue;
            }
            let Some(le) = label(labels, "le") else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("a numeric le")
            };
            let count: f64 = value.parse().expect("a numeric bucket count");
            *sums.entry(OrderedBound(bound)).or_insert(0.0) += count;
        }
        Buckets(sums)
    }

    /// Adds `other` bucket by bucket (`sum` over processes).
    pub fn add(&mut self, other: &Buckets) {
        for (le, count) in &other.0 {
            *self.0.entry(*le).or_insert(0.0) += count;
        }
    }

    /// The increase from `earlier` to `self` (a counter reset is not expected in tests).
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, count)| (*le, count - earlier.0.get(le).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// The index of the bucket an observation of `value` falls in (the first whose upper
    /// bound is at least `value`), in bound order.
    pub fn bucket_of(&self, value: f64) -> usize {
        self.0.keys().take_while(|le| le.0 < value).count()
    }

    /// Observations counted (the `+Inf` bucket).
    pub fn total(&self) -> f64 {
        self.0
            .get(&OrderedBound(f64::INFINITY))
            .copied()
            .unwrap_or(0.0)
    }

    /// `histogram_quantile(q, ...)` as Prometheus computes it (promql/quantile.go,
    /// `bucketQuantile`): find the bucket holding rank q × total, interpolate linearly
    /// inside it (from 0 for the first bucket); a rank in the `+Inf` bucket gives the
    /// highest finite bound. `None` without observations or a `+Inf` bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let buckets: Vec<(f64, f64)> = self.0.iter().map(|(le, c)| (le.0, *c)).collect();
        let (last_bound, total) = *buckets.last()?;
        if last_bound != f64::INFINITY || total <= 0.0 || buckets.len() < 2 {
            return None;
        }
        let rank = q * total;
        let index = buckets.iter().position(|(_, count)| *count >= rank)?;
        if index == buckets.len() - 1 {
            return Some(buckets[buckets.len() - 2].0);
        }
        let (end, count_end) = buckets[index];
        let (start, count_start) = if index == 0 {
            if end <= 0.0 {
                return Some(end);
            }
            (0.0, 0.0)
        } else {
            buckets[index - 1]
        };
        if count_end == count_start {
            return Some(end);
        }
        Some(start + (end - start) * (rank - count_start) / (count_end - count_start))
    }
}

/// The value of `name` in a `a="x",b="y"` label list.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// The metric names a `/metrics` text declares (`# TYPE name kind`), with the series
/// names a histogram adds (`_bucket`, `_sum`, `_count`).
pub fn exported_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.push(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE d_seconds histogram
d_seconds_bucket{service=\"s\",node=\"a\",le=\"0.01\"} 10
d_seconds_bucket{service=\"s\",node=\"a\",le=\"0.02\"} 90
d_seconds_bucket{service=\"s\",node=\"a\",le=\"+Inf\"} 100
d_seconds_bucket{service=\"s\",node=\"b\",le=\"0.01\"} 0
d_seconds_bucket{service=\"s\",node=\"b\",le=\"0.02\"} 0
d_seconds_bucket{service=\"s\",node=\"b\",le=\"+Inf\"} 100
d_seconds_sum{service=\"s\",node=\"a\"} 1
";

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
        let a = Buckets::scrape(TEXT, "d_seconds", &[("node", "a")]);
        assert_eq!(a.total(), 100.0);
        // rank 50 lies in (0.01, 0.02]: 10 → 90 counts.
        assert!((a.quantile(0.5).unwrap() - 0.015).abs() < 1e-9);
        assert!((a.quantile(0.05).unwrap() - 0.005).abs() < 1e-9);
        // rank 99 lies in +Inf: the highest finite bound.
        assert_eq!(a.quantile(0.99), Some(0.02));
        let both = Buckets::scrape(TEXT, "d_seconds", &[]);
        assert_eq!(both.total(), 200.0);
        assert_eq!(both.since(&a).total(), 100.0);
        assert!(exported_names(TEXT).contains(&"d_seconds_bucket".to_owned()));
    }
}
