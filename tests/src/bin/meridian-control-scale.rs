//! `meridian-control-scale`: the control-plane scale benchmark. See
//! `meridian-control-scale --help` and `meridian_tests::control_scale`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meridian_tests::control_scale::{self, ScaleArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = ScaleArgs::parse();
    let deadline = Duration::from_secs(args.deadline);
    // Returning (rather than exiting) from every branch drops the fleet, the control plane
    // and etcd, which stops them.
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(deadline, control_scale::run(&args)) => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("meridian-control-scale: interrupted; stopping etcd and the control plane");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(outcome) => {
            println!("{}", outcome.report.table());
            match outcome.error {
                None => ExitCode::SUCCESS,
                Some(e) => {
                    eprintln!("meridian-control-scale: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(_) => {
            eprintln!("meridian-control-scale: the run took longer than --deadline {deadline:?}");
            ExitCode::FAILURE
        }
    }
}
