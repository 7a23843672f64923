//! `meridianctl`, the operator CLI: parses the command line, connects to a control plane
//! and runs one command. Output is a human table by default and JSON with `-o json`;
//! errors print the gRPC status and message and exit non-zero.

mod auth;
#[cfg(test)]
mod cli_tests;
mod config;
pub(crate) mod config_keys;
mod connect;
mod enums;
mod events;
mod failover;
#[cfg(test)]
mod fake_admin;
mod federations;
mod labels;
mod metrics;
mod nodes;
mod output;
mod proxies;
mod regions;
mod scaling;
mod services;
mod status;
mod topology;

/// The JSON documents `-o json` prints, one function per Admin message; the dashboard's
/// API answers with the same documents, so a script written against either reads both.
pub(crate) mod json {
    pub(crate) use super::events::json as event;
    pub(crate) use super::failover::to_json as failover;
    pub(crate) use super::federations::json as federation;
    pub(crate) use super::metrics::json as global_metrics;
    pub(crate) use super::nodes::json as node;
    pub(crate) use super::proxies::json as proxy;
    pub(crate) use super::regions::json as region;
    pub(crate) use super::scaling::service_json as service_scaling;
    pub(crate) use super::services::json as service_policy;
}

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;

pub use auth::BearerToken;
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
    pub token: Option<BearerToken>,

    /// CA (PEM) that signed the control plane's certificate; needed for https:// URLs.
    #[arg(long, global = true, env = "MERIDIAN_CA", value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,

    /// Client certificate (PEM) for a control plane that requires one (mTLS).
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<std::path::PathBuf>,

    /// Private key (PEM) of --cert.
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<std::path::PathBuf>,

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
    /// Show the whole topology: federations, regions, nodes and services.
    Topology(topology::TopologyArgs),
    /// List, create, replace or delete federations (no verb: list).
    Federations(Noun<federations::FederationsCommand>),
    /// List, create, replace or delete regions (no verb: list).
    Regions(Noun<regions::RegionsCommand>),
    /// List, register, drain, fail, recover or deregister nodes (no verb: list).
    Nodes(Noun<nodes::NodesCommand>),
    /// List, change or delete service routing policies (no verb: list).
    Services(Noun<services::ServicesCommand>),
    /// List the proxies subscribed to routing tables and the versions they hold.
    Proxies,
    /// Print the event history and, with --follow, new events as they happen.
    Events(events::EventsArgs),
    /// Show, change or validate the dynamic configuration (no verb: show).
    Config(Noun<config::ConfigCommand>),
    /// List, start or clear manual failovers of services (no verb: list).
    Failover(Noun<failover::FailoverCommand>),
    /// Show the federation at a glance and each service's traffic per region.
    Metrics(metrics::MetricsArgs),
    /// Scaling policies, decisions and recommendations; scale a service by hand (no verb:
    /// list).
    Scaling(Noun<scaling::ScalingCommand>),
}

/// A noun's verb; without one, the noun lists (as `kubectl get`-style CLIs do).
#[derive(Debug, Args)]
pub struct Noun<C: Subcommand> {
    #[command(subcommand)]
    verb: Option<C>,
}

impl<C: Subcommand> Noun<C> {
    /// The verb given, else `list`.
    fn or(self, list: C) -> C {
        self.verb.unwrap_or(list)
    }
}

/// Runs the parsed command, printing its result to stdout.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    // A token that cannot be sent is refused before anything goes over the network.
    let auth = auth::bearer_auth(args.token.as_ref())?;
    let channel = connect::channel(&args).await?;
    let format = args.output;
    if let Command::Status = args.command {
        return status::run(channel, &args).await;
    }
    let admin = auth::admin_client(channel, auth);
    match args.command {
        Command::Status => unreachable!("handled above: status uses grpc.health.v1, not Admin"),
        Command::Topology(cmd) => topology::run(admin, cmd, format).await,
        Command::Federations(noun) => {
            let cmd = noun.or(federations::FederationsCommand::List);
            federations::run(admin, cmd, format).await
        }
        Command::Regions(noun) => {
            let cmd = noun.or(regions::RegionsCommand::List { federation: None });
            regions::run(admin, cmd, format).await
        }
        Command::Nodes(noun) => {
            let cmd = noun.or(nodes::NodesCommand::List(nodes::ListArgs::default()));
            nodes::run(admin, cmd, format).await
        }
        Command::Services(noun) => {
            let cmd = noun.or(services::ServicesCommand::List { federation: None });
            services::run(admin, cmd, format).await
        }
        Command::Proxies => proxies::run(admin, format).await,
        Command::Events(cmd) => events::run(admin, cmd, format).await,
        Command::Config(noun) => {
            config::run(admin, noun.or(config::ConfigCommand::Get), format).await
        }
        Command::Failover(noun) => {
            let cmd = noun.or(failover::FailoverCommand::List);
            failover::run(admin, cmd, format).await
        }
        Command::Metrics(cmd) => metrics::run(admin, cmd, format).await,
        Command::Scaling(noun) => {
            let cmd = noun.or(scaling::ScalingCommand::List { service: None });
            scaling::run(admin, cmd, format).await
        }
    }
}

/// Confirms a deletion: `deleted node "eu-west-a-1"`, or `{"deleted": {...}}` in JSON.
fn print_deleted(kind: &str, name: &str, format: Output) -> Result<(), CtlError> {
    match format {
        Output::Table => output::emit(&format!("deleted {kind} {name:?}\n")),
        Output::Json => output::emit_json(&json!({ "deleted": { "kind": kind, "name": name } })),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Parses `meridianctl <command_line>`, split on whitespace.
    pub(crate) fn parse(command_line: &str) -> Result<CtlArgs, clap::Error> {
        CtlArgs::try_parse_from(
            std::iter::once("meridianctl").chain(command_line.split_whitespace()),
        )
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        CtlArgs::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere() {
        let args = parse("nodes list -o json --token t0k").expect("parses");
        assert_eq!(args.output, Output::Json);
        assert_eq!(args.token, Some(BearerToken::from("t0k".to_owned())));
        assert!(
            !format!("{args:?}").contains("t0k"),
            "token printed by Debug"
        );
    }

    #[test]
    fn malformed_labels_and_missing_flags_are_refused() {
        assert!(parse("federations set prod --label team=payments").is_ok());
        let err = parse("federations set prod --label team").expect_err("no '='");
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
        parse("nodes fail n1").expect_err("fail needs --reason");
        parse("regions set eu --federation prod --lat 1").expect_err("needs --lon and --zones");
        parse("topology --federation").expect_err("--federation needs a value");
    }
}
