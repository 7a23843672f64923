//! `meridian-demo-node`: a demo backend of a Meridian federation. See
//! `meridian-demo-node --help` and `meridian_tests::demo_node`.

use std::process::ExitCode;

use clap::Parser;
use meridian_shared::Shutdown;
use meridian_shared::telemetry::{self, LogConfig};
use meridian_tests::demo_node::{DemoNode, DemoNodeArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = DemoNodeArgs::parse();
    let _telemetry = match telemetry::init("meridian-demo-node", &LogConfig::default()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("meridian-demo-node: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::on_signals();
    let node = match DemoNode::bind(args).await {
        Ok(node) => node,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Tests read this line to find the port; it must stay the first line on stdout.
    println!(
        "{}{}",
        meridian_tests::demo_node::process::LISTENING_PREFIX,
        node.local_addr()
    );
    match node.serve(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
