//! `meridian-control`: the control-plane process. See `meridian-control --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_control_plane::{ControlArgs, ControlPlane};
use meridian_shared::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ControlArgs::parse();
    let config = match args.load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meridian-control: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init("meridian-control", &config.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("meridian-control: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: meridian_shared::config::ControlPlaneConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = telemetry::install_prometheus("control")?;
    let shutdown = Shutdown::on_signals();
    ControlPlane::bind(config, metrics)
        .await?
        .serve(shutdown)
        .await?;
    Ok(())
}
