//! `meridian-control`: the control-plane process. See `meridian-control --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_control_plane::{ControlArgs, ControlPlane};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ControlArgs::parse();
    let config = args.load_config().map(|mut config| {
        if let Some(token) = args.add_dev_token(&mut config) {
            eprintln!(
                "meridian-control: dev mode (embedded store). Operator token for this run:\n  export MERIDIAN_TOKEN={token}"
            );
        }
        config
    });
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
