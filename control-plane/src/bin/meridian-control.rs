//! `meridian-control`: the control-plane process. See `meridian-control --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_control_plane::reload::LoadConfig;
use meridian_control_plane::{ControlArgs, ControlPlane};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ControlArgs::parse();
    let config = args.load_config().map(|mut config| {
        let generated = args.add_dev_credentials(&mut config);
        if args.dev {
            eprintln!("meridian-control: dev mode (embedded store, loopback, no TLS).");
        }
        for credential in generated {
            eprintln!(
                "  {} token for this run (meridianctl, proxies and nodes read MERIDIAN_TOKEN):\n    export MERIDIAN_TOKEN={}",
                credential.role.name(),
                credential.token
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
            let config_file = args.config.clone();
            // A reload reads the file, variables and flags again, and keeps this run's
            // dev-mode tokens (random ones could not be told to anyone again).
            let dev_tokens = args.dev_tokens(&config);
            let load: LoadConfig = Box::new(move || {
                let mut config = args.load_config()?;
                config.auth.tokens.extend(dev_tokens.iter().cloned());
                Ok(config)
            });
            ControlPlane::bind(config, metrics)
                .await?
                .reload_with(load, config_file)?
                .serve(shutdown)
                .await?;
            Ok(())
        },
    )
    .await
}
