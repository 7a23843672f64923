//! `meridianctl federations list|set|delete`, and how a federation prints (also used by
//! `meridianctl topology`).

use clap::Subcommand;
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, text_cell};
use super::{CtlError, Output, labels};

#[derive(Debug, Subcommand)]
pub enum FederationsCommand {
    /// List every federation.
    List,
    /// Create a federation, or replace it whole: a description or labels not given are
    /// removed.
    Set {
        /// The federation's name, e.g. "prod".
        name: String,
        /// Free text for operators, e.g. "production, all regions".
        #[arg(long, default_value = "")]
        description: String,
        /// A label as KEY=VALUE, e.g. --label team=payments; repeat for more.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = labels::parse_label)]
        labels: Vec<(String, String)>,
        /// Networks node addresses must be in, as CIDRs separated by commas, e.g.
        /// --allowed-networks 10.0.0.0/8,fd00::/8. Loopback and link-local addresses are
        /// refused unless listed (development: --allowed-networks 127.0.0.0/8).
        #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
        allowed_networks: Vec<String>,
    },
    /// Delete a federation; refused while regions or nodes still use it.
    Delete {
        /// The federation's name.
        name: String,
    },
}

pub(super) async fn run(
    mut admin: Admin,
    command: FederationsCommand,
    format: Output,
) -> Result<(), CtlError> {
    match command {
        FederationsCommand::List => {
            let federations = admin
                .list_federations(pb::ListFederationsRequest {})
                .await?
                .into_inner()
                .federations;
            print_list(&federations, format)
        }
        FederationsCommand::Set {
            name,
            description,
            labels,
            allowed_networks,
        } => {
            let federation = pb::Federation {
                name,
                description,
                labels: labels::to_map(&labels),
                allowed_networks,
            };
            let federation = admin
                .upsert_federation(pb::UpsertFederationRequest {
                    federation: Some(federation),
                })
                .await?
                .into_inner();
            print_list(std::slice::from_ref(&federation), format)
        }
        FederationsCommand::Delete { name } => {
            admin
                .delete_federation(pb::DeleteFederationRequest { name: name.clone() })
                .await?;
            super::print_deleted("federation", &name, format)
        }
    }
}

fn print_list(federations: &[pb::Federation], format: Output) -> Result<(), CtlError> {
    match format {
        Output::Table => output::emit(&table(federations).render()),
        Output::Json => output::emit_json(&Value::Array(federations.iter().map(json).collect())),
    }
}

pub(super) fn table(federations: &[pb::Federation]) -> Table {
    let mut table = Table::new(&["FEDERATION", "DESCRIPTION", "LABELS", "ALLOWED NETWORKS"]);
    for f in federations {
        table.push(vec![
            f.name.clone(),
            text_cell(&f.description),
            labels::cell(&f.labels),
            text_cell(&f.allowed_networks.join(",")),
        ]);
    }
    table
}

pub(crate) fn json(federation: &pb::Federation) -> Value {
    json!({
        "name": federation.name,
        "description": federation.description,
        "labels": labels::json(&federation.labels),
        "allowed_networks": federation.allowed_networks,
    })
}
