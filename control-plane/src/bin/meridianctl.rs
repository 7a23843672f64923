//! `meridianctl`: the operator CLI. See `meridianctl --help`.

use std::process::ExitCode;

use clap::Parser;
use meridian_control_plane::ctl::{self, CtlArgs};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match ctl::run(CtlArgs::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meridianctl: {e}");
            ExitCode::FAILURE
        }
    }
}
