//! The life of a Meridian process, shared by `meridian-control` and `meridian-proxy`:
//! configuration errors exit 2 before anything starts; then telemetry and the metrics
//! recorder come up, the component runs until SIGTERM/SIGINT, and a failure is logged and
//! exits 1.

use std::error::Error;
use std::process::ExitCode;

use crate::Shutdown;
use crate::config::ConfigError;
use crate::telemetry::{self, LogConfig, PrometheusHandle};

/// Runs a component. `component` names it in metrics (`control`, `proxy`); `binary` in
/// messages and traces. Call from inside the tokio runtime.
pub async fn run<C, F, Fut>(
    binary: &'static str,
    component: &'static str,
    config: Result<C, ConfigError>,
    log_config: impl FnOnce(&C) -> &LogConfig,
    component_main: F,
) -> ExitCode
where
    F: FnOnce(C, PrometheusHandle, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn Error>>>,
{
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init(binary, log_config(&config)) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return ExitCode::from(2);
        }
    };
    let metrics = match telemetry::install_prometheus(component) {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match component_main(config, metrics, Shutdown::on_signals()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{binary} failed: {e}");
            ExitCode::FAILURE
        }
    }
}
