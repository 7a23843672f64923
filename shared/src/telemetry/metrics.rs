//! The Prometheus recorder: `metrics` macros anywhere in the process land here, and the
//! HTTP endpoints render them at `/metrics`. No listener of its own: each binary serves
//! the text on its existing HTTP port.
//!
//! Every histogram is exported as a Prometheus **histogram** (cumulative `_bucket` series
//! with an `le` label, `_sum`, `_count`), never as a summary: buckets from many proxies
//! and regions can be added up and `histogram_quantile` computed over a whole federation,
//! which quantiles computed inside each process cannot. Durations are in seconds (names
//! end in `_seconds`) with [`LATENCY_BUCKETS`]; the other histograms count things
//! (changes folded into a push, writes merged into a transaction) with [`COUNT_BUCKETS`].

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Bucket bounds (seconds) of every `_seconds` histogram: 0.5 ms to 30 s, close enough
/// together around the usual gRPC latencies (1–100 ms) that `histogram_quantile`, which
/// interpolates linearly inside a bucket, lands within a few percent of the true value.
pub const LATENCY_BUCKETS: [f64; 26] = [
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds of the histograms that count things rather than time them.
pub const COUNT_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1_000.0, 5_000.0, 10_000.0,
];

/// The histograms whose values are counts, not durations.
const COUNT_HISTOGRAMS: [&str; 2] = [
    "meridian_control_debounce_folded_changes",
    "meridian_control_group_commit_size",
];

#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus metrics recorder: {0}")]
pub struct MetricsError(#[from] BuildError);

/// Installs the global recorder and returns the handle that renders the exposition text.
/// Records `meridian_build_info{component, version} 1` so dashboards can tell which build
/// runs where. Starts the upkeep task that keeps histograms bounded; call inside the tokio
/// runtime.
pub fn install_prometheus(component: &'static str) -> Result<PrometheusHandle, MetricsError> {
    let handle = builder()?.install_recorder()?;
    metrics::gauge!(
        "meridian_build_info",
        "component" => component,
        "version" => env!("CARGO_PKG_VERSION")
    )
    .set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The exporter's settings: buckets for every histogram (none is left a summary).
fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut builder = PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS)?;
    for name in COUNT_HISTOGRAMS {
        builder = builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), &COUNT_BUCKETS)?;
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_rendered_with_cumulative_buckets_not_quantiles() {
        let recorder = builder().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let latency = metrics::histogram!("meridian_control_push_latency_seconds");
            for ms in [1.0, 4.0, 22.0, 22.0] {
                latency.record(ms / 1_000.0);
            }
            metrics::histogram!("meridian_control_group_commit_size").record(3.0);
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE meridian_control_push_latency_seconds histogram"),
            "{text}"
        );
        assert!(!text.contains("quantile="), "{text}");
        for (le, count) in [
            ("0.001", 1),
            ("0.005", 2),
            ("0.02", 2),
            ("0.025", 4),
            ("+Inf", 4),
        ] {
            let line =
                format!("meridian_control_push_latency_seconds_bucket{{le=\"{le}\"}} {count}");
            assert!(text.contains(&line), "missing {line}:\n{text}");
        }
        assert!(
            text.contains("meridian_control_group_commit_size_bucket{le=\"5\"} 1"),
            "{text}"
        );
    }
}
