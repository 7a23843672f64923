//! `meridianctl nodes list|register|drain|deregister|fail|recover`, and how a node prints
//! (also used by `meridianctl topology`).

use std::time::SystemTime;

use clap::{Args, Subcommand};
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, age_cell, list_cell, place_cell, text_cell, timestamp_json};
use super::{CtlError, Output, enums, labels};

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// List nodes, optionally filtered; filters combine (all must match).
    List(ListArgs),
    /// Register a node by hand. It has no lease and stays until deregistered.
    Register(RegisterArgs),
    /// Stop sending new requests to a node; requests in flight finish.
    Drain {
        /// The node's id.
        id: String,
        /// Why, shown in events and in `nodes list`.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a node from the topology at once.
    Deregister {
        /// The node's id.
        id: String,
    },
    /// Mark a node failed so proxies stop routing to it.
    Fail {
        /// The node's id.
        id: String,
        /// Why it failed (required), shown in events and in `nodes list`.
        #[arg(long)]
        reason: String,
    },
    /// Return a failed, draining or quarantined node to service.
    Recover {
        /// The node's id.
        id: String,
        /// Why, shown in events.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Default, Args)]
pub struct ListArgs {
    /// Only nodes of this federation.
    #[arg(long)]
    federation: Option<String>,
    /// Only nodes in this region.
    #[arg(long)]
    region: Option<String>,
    /// Only nodes in this zone.
    #[arg(long)]
    zone: Option<String>,
    /// Only nodes serving this gRPC service, e.g. demo.v1.Echo.
    #[arg(long)]
    service: Option<String>,
    /// Only nodes with this status.
    #[arg(long, value_parser = enums::status_parser())]
    status: Option<pb::NodeStatus>,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// The node's unique id, e.g. eu-west-a-1.
    id: String,
    /// Where to reach it: HOST:PORT (IPv4, [IPv6] or DNS name).
    #[arg(long, value_name = "HOST:PORT")]
    address: String,
    /// The federation the node belongs to.
    #[arg(long)]
    federation: String,
    /// The region it runs in; it must exist in the federation.
    #[arg(long)]
    region: String,
    /// The zone it runs in; it must be one of the region's zones.
    #[arg(long)]
    zone: String,
    /// The gRPC services it serves, fully qualified and comma-separated,
    /// e.g. demo.v1.Echo,demo.v1.Greeter.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "SERVICE,..."
    )]
    services: Vec<String>,
    /// Relative weight for the weighted algorithm, 1 to 10000 (default 100).
    #[arg(long)]
    weight: Option<u32>,
    /// Concurrent requests the node can take, 1 to 1000000 (default: unknown); used for
    /// scaling decisions.
    #[arg(long)]
    capacity: Option<u32>,
    /// A label as KEY=VALUE, e.g. --label hw=arm64; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = labels::parse_label)]
    labels: Vec<(String, String)>,
    /// Replace a node already registered under this id with a different spec, instead of
    /// refusing.
    #[arg(long)]
    replace: bool,
}

pub(super) async fn run(
    mut admin: Admin,
    command: NodesCommand,
    format: Output,
) -> Result<(), CtlError> {
    let node = match command {
        NodesCommand::List(filter) => {
            let request = pb::ListNodesRequest {
                federation: filter.federation.unwrap_or_default(),
                region: filter.region.unwrap_or_default(),
                zone: filter.zone.unwrap_or_default(),
                service: filter.service.unwrap_or_default(),
                status: filter.status.unwrap_or(pb::NodeStatus::Unspecified) as i32,
            };
            let mut nodes = admin.list_nodes(request).await?.into_inner().nodes;
            // In the request, status UNSPECIFIED means "any", so `--status unknown` (whose
            // wire value that is) fetches every node and filters here.
            if filter.status == Some(pb::NodeStatus::Unspecified) {
                nodes.retain(|n| n.status == pb::NodeStatus::Unspecified as i32);
            }
            return print_list(&nodes, format);
        }
        NodesCommand::Register(args) => {
            let request = pb::RegisterNodeRequest {
                replace: args.replace,
                node: Some(pb::Node {
                    id: args.id,
                    address: args.address,
                    federation: args.federation,
                    region: args.region,
                    zone: args.zone,
                    services: args.services,
                    weight: args.weight.unwrap_or(0),
                    capacity: args.capacity.unwrap_or(0),
                    labels: labels::to_map(&args.labels),
                    ..pb::Node::default()
                }),
            };
            admin.register_node(request).await?
        }
        NodesCommand::Drain { id, reason } => {
            admin
                .drain_node(pb::DrainNodeRequest { id, reason })
                .await?
        }
        NodesCommand::Fail { id, reason } => {
            admin.fail_node(pb::FailNodeRequest { id, reason }).await?
        }
        NodesCommand::Recover { id, reason } => {
            admin
                .recover_node(pb::RecoverNodeRequest { id, reason })
                .await?
        }
        NodesCommand::Deregister { id } => {
            admin
                .deregister_node(pb::DeregisterNodeRequest { id: id.clone() })
                .await?;
            return super::print_deleted("node", &id, format);
        }
    };
    print_list(std::slice::from_ref(node.get_ref()), format)
}

fn print_list(nodes: &[pb::Node], format: Output) -> Result<(), CtlError> {
    match format {
        Output::Table => output::emit(&table(nodes, SystemTime::now()).render()),
        Output::Json => output::emit_json(&Value::Array(nodes.iter().map(json).collect())),
    }
}

pub(super) fn table(nodes: &[pb::Node], now: SystemTime) -> Table {
    let mut table = Table::new(&[
        "NODE",
        "ADDRESS",
        "FEDERATION",
        "REGION/ZONE",
        "SERVICES",
        "WEIGHT",
        "STATUS",
        "SINCE",
        "REASON",
    ]);
    for n in nodes {
        let weight = match n.weight {
            0 => "default".to_owned(),
            w => w.to_string(),
        };
        table.push(vec![
            n.id.clone(),
            n.address.clone(),
            n.federation.clone(),
            place_cell(&n.region, &n.zone),
            list_cell(&n.services),
            weight,
            enums::node_status_name(n.status),
            age_cell(n.status_since.as_ref(), now),
            text_cell(&n.status_reason),
        ]);
    }
    table
}

pub(crate) fn json(node: &pb::Node) -> Value {
    json!({
        "id": node.id,
        "address": node.address,
        "federation": node.federation,
        "region": node.region,
        "zone": node.zone,
        "services": node.services,
        "weight": node.weight,
        "capacity": node.capacity,
        "labels": labels::json(&node.labels),
        "status": enums::node_status_name(node.status),
        "status_reason": node.status_reason,
        "status_since": timestamp_json(node.status_since.as_ref()),
        "registration": enums::registration_name(node.registration),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::tests::parse;
    use crate::ctl::{Command, Noun};

    fn nodes(command_line: &str) -> NodesCommand {
        match parse(command_line).expect("parses").command {
            Command::Nodes(Noun {
                verb: Some(command),
            }) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn register_takes_comma_lists_and_repeated_labels() {
        let NodesCommand::Register(args) = nodes(
            "nodes register eu-west-a-1 --address 10.0.0.1:50051 --federation prod \
             --region eu-west --zone eu-west-a --services a.v1.X,b.v1.Y --weight 200 \
             --label hw=arm64 --label tier=gold --replace",
        ) else {
            panic!("not a register");
        };
        assert_eq!(args.id, "eu-west-a-1");
        assert_eq!(args.services, ["a.v1.X", "b.v1.Y"]);
        assert_eq!((args.weight, args.capacity), (Some(200), None));
        assert_eq!(
            args.labels,
            [
                ("hw".into(), "arm64".into()),
                ("tier".into(), "gold".into())
            ]
        );
        assert!(args.replace);
    }

    #[test]
    fn status_filters_parse_by_name() {
        let NodesCommand::List(filter) = nodes("nodes list --status draining --zone eu-west-a")
        else {
            panic!("not a list");
        };
        assert_eq!(filter.status, Some(pb::NodeStatus::Draining));
        assert_eq!(filter.zone.as_deref(), Some("eu-west-a"));
        let err = parse("nodes list --status sleepy").expect_err("unknown status");
        assert!(err.to_string().contains("quarantined"), "{err}");
    }

    #[test]
    fn drain_reason_is_optional_and_fail_reason_is_not() {
        let NodesCommand::Drain { id, reason } = nodes("nodes drain n1") else {
            panic!("not a drain");
        };
        assert_eq!((id.as_str(), reason.as_str()), ("n1", ""));
        parse("nodes fail n1").expect_err("fail needs --reason");
    }
}
