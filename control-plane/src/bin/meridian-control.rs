//! `meridian-control`: the control-plane process. See `meridian-control --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_control_plane::{ControlArgs, ControlPlane};

#[tokio::main]
async fn main() -> ExitCode {
    let config = ControlArgs::parse().load_config();
    meridian_shared::process::run(
        "meridian-control",
        "control",
        config,
        |config| &config.log,
        |config, metrics, shutdown| async move {
            ControlPlane::bind(config, metrics)
                .await?
                .serve(shutdown)
                .await?;
            Ok(())
        },
    )
    .await
}
