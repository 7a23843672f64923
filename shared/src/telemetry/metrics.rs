//! The Prometheus recorder: `metrics` macros anywhere in the process land here, and the
//! HTTP endpoints render them at `/metrics`. No listener of its own: each binary serves
//! the text on its existing HTTP port.

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

#[derive(Debug, thiserror::Error)]
#[error("cannot install the Prometheus metrics recorder: {0}")]
pub struct MetricsError(#[from] BuildError);

/// Installs the global recorder and returns the handle that renders the exposition text.
/// Records `meridian_build_info{component, version} 1` so dashboards can tell which build
/// runs where. Starts the upkeep task that keeps histograms bounded; call inside the tokio
/// runtime.
pub fn install_prometheus(component: &'static str) -> Result<PrometheusHandle, MetricsError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
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
