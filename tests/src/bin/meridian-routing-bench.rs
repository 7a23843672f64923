//! `meridian-routing-bench`: the routing-quality benchmark. See
//! `meridian-routing-bench --help` and `meridian_tests::routing_bench`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use meridian_tests::routing_bench::{self, RoutingBenchArgs};

#[tokio::main]
async fn main() -> ExitCode {
    let args = RoutingBenchArgs::parse();
    let deadline = Duration::from_secs(args.deadline);
    // Returning (rather than exiting) from every branch drops the cluster, nodes and
    // proxies, which stops them.
    let outcome = tokio::select! {
        outcome = tokio::time::timeout(deadline, routing_bench::run(&args)) => outcome,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("meridian-routing-bench: interrupted; stopping every process started");
            return ExitCode::FAILURE;
        }
    };
    match outcome {
        Ok(Ok(report)) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("meridian-routing-bench: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("meridian-routing-bench: the run took longer than --deadline {deadline:?}");
            ExitCode::FAILURE
        }
    }
}
