//! `meridian-loadgen`: see `meridian-loadgen --help` and `meridian_tests::loadgen`.

use std::process::ExitCode;

use clap::Parser;
use meridian_shared::Shutdown;
use meridian_tests::loadgen::{self, LoadArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = LoadArgs::parse();
    let json = args.json;
    let stop = Shutdown::on_signals();
    match loadgen::run(args, stop).await {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{}", report.summary());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("meridian-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
