//! `meridianctl metrics`: the federation at a glance (federations, regions, nodes by
//! status, proxies connected and in sync) and each service's traffic per region over the
//! control plane's load window: calls/s, error rate, merged p50/p99, utilisation.

use clap::Args;
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, text_cell, timestamp_json};
use super::{CtlError, Output};

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only this federation (default: all).
    #[arg(long)]
    federation: Option<String>,
}

pub(super) async fn run(
    mut admin: Admin,
    args: MetricsArgs,
    format: Output,
) -> Result<(), CtlError> {
    let metrics = admin
        .get_global_metrics(pb::GetGlobalMetricsRequest {
            federation: args.federation.unwrap_or_default(),
        })
        .await?
        .into_inner();
    match format {
        Output::Table => output::emit(&render(&metrics)),
        Output::Json => output::emit_json(&json(&metrics)),
    }
}

fn render(m: &pb::GlobalMetrics) -> String {
    let summary = format!(
        "federations {}  regions {}  services {}\n\
         nodes: {} active, {} unhealthy, {} lost, {} draining\n\
         proxies: {} connected, {} in sync\n\
         traffic over the last {}s:\n",
        m.federations,
        m.regions,
        m.services,
        m.nodes_active,
        m.nodes_unhealthy,
        m.nodes_lost,
        m.nodes_draining,
        m.proxies_connected,
        m.proxies_in_sync,
        m.window_ms / 1_000,
    );
    summary + &traffic_table(&m.traffic).render()
}

fn traffic_table(rows: &[pb::ServiceRegionMetrics]) -> Table {
    let mut table = Table::new(&[
        "SERVICE",
        "REGION",
        "CALLS/S",
        "ERRORS",
        "P50",
        "P99",
        "UTIL",
        "IN-FLIGHT/NODE",
        "SERVING/NODES",
    ]);
    for row in rows {
        let has_calls = row.calls_per_second > 0.0;
        table.push(vec![
            row.service.clone(),
            text_cell(&row.region),
            format!("{:.1}", row.calls_per_second),
            if has_calls {
                format!("{:.2}%", row.error_rate * 100.0)
            } else {
                "-".to_owned()
            },
            latency_cell(has_calls, row.latency_p50_ms),
            latency_cell(has_calls, row.latency_p99_ms),
            row.utilization_percent
                .map_or_else(|| "-".to_owned(), |u| format!("{u:.0}%")),
            format!("{:.1}", row.in_flight_per_node),
            format!("{}/{}", row.nodes_reporting, row.nodes_routable),
        ]);
    }
    table
}

fn latency_cell(has_calls: bool, ms: f64) -> String {
    if !has_calls {
        "-".to_owned()
    } else if ms < 10.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

pub(crate) fn json(m: &pb::GlobalMetrics) -> Value {
    let traffic: Vec<Value> = m
        .traffic
        .iter()
        .map(|r| {
            json!({
                "service": r.service,
                "region": r.region,
                "calls_per_second": r.calls_per_second,
                "error_rate": r.error_rate,
                "latency_p50_ms": r.latency_p50_ms,
                "latency_p99_ms": r.latency_p99_ms,
                "utilization_percent": r.utilization_percent,
                "in_flight_per_node": r.in_flight_per_node,
                "nodes_reporting": r.nodes_reporting,
                "nodes_routable": r.nodes_routable,
            })
        })
        .collect();
    json!({
        "federations": m.federations,
        "regions": m.regions,
        "services": m.services,
        "nodes": {
            "active": m.nodes_active,
            "unhealthy": m.nodes_unhealthy,
            "lost": m.nodes_lost,
            "draining": m.nodes_draining,
        },
        "proxies": {
            "connected": m.proxies_connected,
            "in_sync": m.proxies_in_sync,
        },
        "window_ms": m.window_ms,
        "at": timestamp_json(m.at.as_ref()),
        "traffic": traffic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::GlobalMetrics {
        pb::GlobalMetrics {
            federations: 1,
            regions: 2,
            services: 1,
            nodes_active: 3,
            nodes_unhealthy: 1,
            proxies_connected: 2,
            proxies_in_sync: 2,
            window_ms: 60_000,
            traffic: vec![
                pb::ServiceRegionMetrics {
                    service: "demo.v1.Echo".into(),
                    region: "eu-west".into(),
                    calls_per_second: 412.5,
                    error_rate: 0.0125,
                    latency_p50_ms: 1.234,
                    latency_p99_ms: 48.7,
                    utilization_percent: Some(63.2),
                    in_flight_per_node: 2.5,
                    nodes_reporting: 2,
                    nodes_routable: 3,
                },
                pb::ServiceRegionMetrics {
                    service: "demo.v1.Echo".into(),
                    region: "us-east".into(),
                    nodes_routable: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn the_table_shows_rates_percentiles_and_nodes_and_dashes_without_traffic() {
        let rendered = render(&sample());
        assert!(rendered.contains("nodes: 3 active, 1 unhealthy, 0 lost, 0 draining"));
        assert!(rendered.contains("proxies: 2 connected, 2 in sync"));
        assert!(rendered.contains("traffic over the last 60s"));
        let eu = rendered
            .lines()
            .find(|l| l.contains("eu-west"))
            .expect("eu row");
        for cell in ["412.5", "1.25%", "1.23ms", "49ms", "63%", "2.5", "2/3"] {
            assert!(eu.contains(cell), "{cell} missing from {eu:?}");
        }
        let us = rendered
            .lines()
            .find(|l| l.contains("us-east"))
            .expect("us row");
        let cells: Vec<&str> = us.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "demo.v1.Echo",
                "us-east",
                "0.0",
                "-",
                "-",
                "-",
                "-",
                "0.0",
                "0/1"
            ]
        );
    }

    #[test]
    fn json_keeps_unknown_utilisation_as_null() {
        let value = json(&sample());
        assert_eq!(value["traffic"][0]["utilization_percent"], 63.2);
        assert_eq!(value["traffic"][1]["utilization_percent"], Value::Null);
        assert_eq!(value["nodes"]["unhealthy"], 1);
        assert_eq!(value["proxies"]["in_sync"], 2);
    }
}
