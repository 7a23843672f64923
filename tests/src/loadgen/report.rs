//! Aggregated results of a load run.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

#[derive(Debug, Clone)]
pub struct Report {
    pub latencies: Histogram<u64>,
    pub errors: u64,
    pub elapsed: Duration,
    /// Calls per serving node (the proxy's `x-meridian-node`, or "direct").
    pub served_by: BTreeMap<String, u64>,
}

impl Report {
    pub fn empty() -> Self {
        Report {
            latencies: new_histogram(),
            errors: 0,
            elapsed: Duration::ZERO,
            served_by: BTreeMap::new(),
        }
    }

    pub fn merge(&mut self, other: &Report) {
        self.latencies
            .add(&other.latencies)
            .expect("histograms share bounds");
        self.errors += other.errors;
        for (node, n) in &other.served_by {
            *self.served_by.entry(node.clone()).or_default() += n;
        }
    }

    pub fn calls(&self) -> u64 {
        self.latencies.len()
    }

    pub fn throughput(&self) -> f64 {
        self.calls() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, q: f64) -> u64 {
        self.latencies.value_at_quantile(q)
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "calls": self.calls(),
            "errors": self.errors,
            "seconds": self.elapsed.as_secs_f64(),
            "throughput_per_s": self.throughput(),
            "p50_us": self.percentile_us(0.50),
            "p90_us": self.percentile_us(0.90),
            "p99_us": self.percentile_us(0.99),
            "p999_us": self.percentile_us(0.999),
            "max_us": self.latencies.max(),
            "served_by": self.served_by,
        })
    }

    pub fn summary(&self) -> String {
        format!(
            "{} calls in {:.1}s: {:.0}/s, {} errors, p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
            self.calls(),
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.errors,
            self.percentile_us(0.50),
            self.percentile_us(0.90),
            self.percentile_us(0.99),
            self.latencies.max()
        )
    }
}
