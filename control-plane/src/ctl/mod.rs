//! `meridianctl`, the operator CLI: parses the command line, connects to a control plane
//! and runs one command. Output is a human table by default and JSON with `-o json`;
//! errors print the gRPC status and message and exit non-zero.

mod connect;
mod status;

use clap::{Parser, Subcommand, ValueEnum};

pub use connect::CtlError;

/// Operate a Meridian federation: inspect and change topology, nodes, services, proxies,
/// events and configuration through the control plane's Admin API.
#[derive(Debug, Parser)]
#[command(name = "meridianctl", version, about, long_about)]
pub struct CtlArgs {
    /// Control-plane gRPC address.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_CONTROL_PLANE",
        default_value = "http://127.0.0.1:7700",
        value_name = "URL"
    )]
    pub control_plane: String,

    /// Bearer token for the Admin API (viewer or operator role). Never printed.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Output format: table for people, json for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Give up on a call after this many seconds.
    #[arg(long, global = true, default_value_t = 10, value_name = "SECONDS")]
    pub timeout: u64,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the control plane answers and is serving (grpc.health.v1).
    Status,
}

/// Runs the parsed command, printing its result to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let channel = connect::channel(&args).await?;
    match args.command {
        Command::Status => status::run(channel, &args).await,
    }
}
