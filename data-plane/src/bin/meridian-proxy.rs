//! `meridian-proxy`: the data-plane process. See `meridian-proxy --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_data_plane::{Proxy, ProxyArgs};
use meridian_shared::{Shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = match ProxyArgs::parse().load_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meridian-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match telemetry::init("meridian-proxy", &config.log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("meridian-proxy: {e}");
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
    config: meridian_shared::config::ProxyConfig,
) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = telemetry::install_prometheus("proxy")?;
    Proxy::bind(config, metrics)
        .await?
        .serve(Shutdown::on_signals())
        .await?;
    Ok(())
}
