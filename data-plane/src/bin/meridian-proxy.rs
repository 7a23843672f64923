//! `meridian-proxy`: the data-plane process. See `meridian-proxy --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_data_plane::{Proxy, ProxyArgs};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = ProxyArgs::parse().load_config();
    meridian_shared::process::run(
        "meridian-proxy",
        "proxy",
        config,
        |config| &config.log,
        |config, metrics, shutdown| async move {
            Proxy::bind(config, metrics).await?.serve(shutdown).await?;
            Ok(())
        },
    )
    .await
}
