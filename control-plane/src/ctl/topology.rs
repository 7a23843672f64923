//! `meridianctl topology`: the whole topology at one store revision, printed as the
//! federations, regions, nodes and services tables one after another.

use std::time::SystemTime;

use clap::Args;
use meridian_proto::v1 as pb;
use serde_json::json;

use super::auth::Admin;
use super::{CtlError, Output, federations, nodes, output, regions, services};

#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Only this federation (default: all).
    #[arg(long)]
    federation: Option<String>,
}

pub(super) async fn run(
    mut admin: Admin,
    args: TopologyArgs,
    format: Output,
) -> Result<(), CtlError> {
    let topology = admin
        .get_topology(pb::GetTopologyRequest {
            federation: args.federation.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match format {
        Output::Table => output::emit(&render(&topology, SystemTime::now())),
        Output::Json => output::emit_json(&json!({
            "revision": topology.revision,
            "federations": topology.federations.iter().map(federations::json).collect::<Vec<_>>(),
            "regions": topology.regions.iter().map(regions::json).collect::<Vec<_>>(),
            "nodes": topology.nodes.iter().map(nodes::json).collect::<Vec<_>>(),
            "services": topology.services.iter().map(services::json).collect::<Vec<_>>(),
        })),
    }
}

fn render(topology: &pb::Topology, now: SystemTime) -> String {
    [
        format!("revision {}\n", topology.revision),
        federations::table(&topology.federations).render(),
        regions::table(&topology.regions).render(),
        nodes::table(&topology.nodes, now).render(),
        services::table(&topology.services).render(),
    ]
    .join("\n")
}
