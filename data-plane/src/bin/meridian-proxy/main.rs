//! `meridian-proxy`: the data-plane process. See `meridian-proxy --help`.

mod allocator;

use std::process::ExitCode;

use clap::Parser;
use meridian_data_plane::reload::LoadConfig;
use meridian_data_plane::{Proxy, ProxyArgs};

#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = ProxyArgs::parse();
    let config = args.load_config();
    meridian_shared::process::run(
        "meridian-proxy",
        "proxy",
        config,
        |config| &config.log,
        |config, metrics, shutdown| async move {
            let config_file = args.config.clone();
            let load: LoadConfig = Box::new(move || args.load_config());
            Proxy::bind(config, metrics)
                .await?
                .reload_with(load, config_file)?
                .serve(shutdown)
                .await?;
            Ok(())
        },
    )
    .await
}
