//! `meridianctl failover list|start|clear`: send a service's traffic to one of its
//! failover tiers (or a region) until cleared.

use clap::{Args, Subcommand};
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, text_cell};
use super::{CtlError, Output};

#[derive(Debug, Subcommand)]
pub enum FailoverCommand {
    /// List the failovers in force.
    List,
    /// Send SERVICE's traffic to a tier or backup group of its policy, or to a region.
    Start(StartArgs),
    /// End SERVICE's failover: traffic returns to its normal tiers.
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The gRPC service, e.g. demo.v1.Echo.
    pub service: String,
    /// Where to send it: a failover tier name of the service's policy, or a region.
    #[arg(long = "to", value_name = "TIER|REGION")]
    pub target: String,
    /// Why (shown in events and `failover list`).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ClearArgs {
    /// The gRPC service, e.g. demo.v1.Echo.
    pub service: String,
    /// Why (shown in events).
    #[arg(long, default_value = "")]
    pub reason: String,
}

pub(super) async fn run(
    mut admin: Admin,
    command: FailoverCommand,
    format: Output,
) -> Result<(), CtlError> {
    let failovers = match command {
        FailoverCommand::List => {
            admin
                .list_failovers(pb::ListFailoversRequest {})
                .await?
                .into_inner()
                .failovers
        }
        FailoverCommand::Start(args) => {
            let request = pb::StartFailoverRequest {
                service: args.service,
                target: args.target,
                reason: args.reason,
            };
            vec![admin.start_failover(request).await?.into_inner()]
        }
        FailoverCommand::Clear(args) => {
            let service = args.service.clone();
            admin
                .clear_failover(pb::ClearFailoverRequest {
                    service: args.service,
                    reason: args.reason,
                })
                .await?;
            return match format {
                Output::Json => output::emit_json(&json!({ "service": service, "cleared": true })),
                Output::Table => output::emit(&format!("failover of {service} cleared\n")),
            };
        }
    };
    match format {
        Output::Table => output::emit(&table(&failovers).render()),
        Output::Json => output::emit_json(&Value::Array(failovers.iter().map(to_json).collect())),
    }
}

fn table(failovers: &[pb::ActiveFailover]) -> Table {
    let mut table = Table::new(&["SERVICE", "TARGET", "SINCE", "BY", "REASON"]);
    for f in failovers {
        table.push(vec![
            f.service.clone(),
            f.target.clone(),
            since(f.started_at.as_ref()),
            text_cell(&f.started_by),
            text_cell(&f.reason),
        ]);
    }
    table
}

fn since(at: Option<&prost_types::Timestamp>) -> String {
    at.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
}

pub(crate) fn to_json(f: &pb::ActiveFailover) -> Value {
    json!({
        "service": f.service,
        "target": f.target,
        "reason": f.reason,
        "started_by": f.started_by,
        "started_at": output::timestamp_json(f.started_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Command, CtlArgs, Noun};
    use super::*;

    #[test]
    fn start_takes_a_service_and_a_target() {
        let args = CtlArgs::try_parse_from([
            "meridianctl",
            "failover",
            "start",
            "demo.v1.Echo",
            "--to",
            "us-east",
            "--reason",
            "drill",
        ])
        .unwrap();
        let Command::Failover(Noun {
            verb: Some(FailoverCommand::Start(start)),
        }) = args.command
        else {
            panic!("parsed as {:?}", args.command);
        };
        assert_eq!(
            (
                start.service.as_str(),
                start.target.as_str(),
                start.reason.as_str()
            ),
            ("demo.v1.Echo", "us-east", "drill")
        );
        assert!(
            CtlArgs::try_parse_from(["meridianctl", "failover", "start", "demo.v1.Echo"]).is_err(),
            "--to is required"
        );
    }
}
