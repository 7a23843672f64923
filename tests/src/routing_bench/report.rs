//! The benchmark's figures and tables: per cell (one algorithm in one scenario) the calls,
//! throughput, latency percentiles and each node's share over a time window of the
//! samples; for the degrading replica, how long its share took to fall below 5 % and the
//! p99 after; the goals of issue #14, each marked met or not.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::closed_loop::Sample;

/// The figures of one cell over one window.
#[derive(Debug, Clone)]
pub struct CellFigures {
    pub label: String,
    pub calls: u64,
    pub errors: u64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of the calls each node served, in node order.
    pub shares: Vec<f64>,
}

impl CellFigures {
    /// The samples that started within `[from, to)`.
    pub fn over(
        label: &str,
        samples: &[Sample],
        nodes: usize,
        from: Duration,
        to: Duration,
    ) -> Self {
        let mut histogram =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
        let mut per_node = vec![0u64; nodes];
        let mut errors = 0;
        for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
            match s.node {
                Some(n) => {
                    per_node[n] += 1;
                    let _ = histogram.record(s.latency.as_micros().max(1) as u64);
                }
                None => errors += 1,
            }
        }
        let calls = histogram.len();
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1_000.0;
        CellFigures {
            label: label.to_owned(),
            calls,
            errors,
            throughput: calls as f64 / (to - from).as_secs_f64().max(1e-9),
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            shares: per_node
                .iter()
                .map(|&n| n as f64 / calls.max(1) as f64)
                .collect(),
        }
    }
}

/// Each node's p50 and p99 latency over all `samples`, for the log: what the proxy's
/// estimates were chasing (`fast-1 2.3/9.8, ...`).
pub fn per_node_latency(samples: &[Sample], names: &[String]) -> String {
    let mut histograms: Vec<Histogram<u64>> = names
        .iter()
        .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds"))
        .collect();
    for s in samples {
        if let Some(h) = s.node.and_then(|n| histograms.get_mut(n)) {
            let _ = h.record(s.latency.as_micros().max(1) as u64);
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    names
        .iter()
        .zip(&histograms)
        .map(|(name, h)| format!("{name} {:.1}/{:.1}", ms(h, 0.5), ms(h, 0.99)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// When the share of `node` fell below `threshold` for good: the end of the first
/// `bucket`-long window after `from` from which every window up to `to` stays below it,
/// measured from `from`; `None` if it never did.
pub fn time_to_share_below(
    samples: &[Sample],
    node: usize,
    threshold: f64,
    from: Duration,
    to: Duration,
    bucket: Duration,
) -> Option<Duration> {
    let buckets = ((to - from).as_secs_f64() / bucket.as_secs_f64()).floor() as usize;
    let mut counts = vec![(0u64, 0u64); buckets];
    for s in samples.iter().filter(|s| s.at >= from && s.at < to) {
        let b = ((s.at - from).as_secs_f64() / bucket.as_secs_f64()) as usize;
        if let (Some(slot), Some(n)) = (counts.get_mut(b), s.node) {
            slot.1 += 1;
            if n == node {
                slot.0 += 1;
            }
        }
    }
    let below = |&(on, all): &(u64, u64)| all > 0 && (on as f64) < threshold * all as f64;
    let mut first_of_run = None;
    for (b, c) in counts.iter().enumerate() {
        match (below(c), first_of_run) {
            (true, None) => first_of_run = Some(b),
            (false, _) => first_of_run = None,
            _ => {}
        }
    }
    first_of_run.map(|b| bucket * (b as u32 + 1))
}

/// A markdown table of `cells`, the share on `watched` nodes (by name) as last columns.
pub fn table(cells: &[CellFigures], node_names: &[String], watched: &[usize]) -> String {
    let mut out = String::from("| algorithm | calls/s | p50 ms | p99 ms | p99.9 ms | errors |");
    for &w in watched {
        let _ = write!(out, " share {} |", node_names[w]);
    }
    out.push_str("\n|---|---:|---:|---:|---:|---:|");
    for _ in watched {
        out.push_str("---:|");
    }
    out.push('\n');
    for c in cells {
        let _ = write!(
            out,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            c.label, c.throughput, c.p50_ms, c.p99_ms, c.p999_ms, c.errors
        );
        for &w in watched {
            let _ = write!(out, " {:.1} % |", 100.0 * c.shares[w]);
        }
        out.push('\n');
    }
    out
}

/// One goal line: what, the figure, the bound, met or not.
pub fn goal(what: &str, met: bool, detail: String) -> String {
    format!(
        "- {} {what}: {detail}\n",
        if met { "**met**" } else { "**not met**" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, node: usize) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            node: Some(node),
            latency: Duration::from_millis(1),
        }
    }

    #[test]
    fn the_share_falls_below_for_good_at_the_end_of_the_first_quiet_window() {
        // Node 1 serves every call for 300 ms, once at 450 ms (a tenth of its window),
        // then never again: the quiet windows start at 500 ms, the first ends at 600 ms.
        let mut samples = Vec::new();
        for ms in (0..1_000).step_by(10) {
            let on_1 = ms < 300 || ms == 450;
            samples.push(sample(ms, if on_1 { 1 } else { 0 }));
        }
        let t = time_to_share_below(
            &samples,
            1,
            0.05,
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_millis(100),
        );
        assert_eq!(t, Some(Duration::from_millis(600)));
        let figures = CellFigures::over("x", &samples, 2, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(figures.calls, 100);
        assert!((figures.shares[1] - 0.31).abs() < 1e-9);
    }
}
