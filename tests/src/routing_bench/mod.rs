//! The routing-quality benchmark (issue #14, item 3): how well each balancing algorithm
//! places calls when nodes differ, measured end to end with real processes (etcd, a
//! `meridian-control`, `meridian-demo-node`s, one `meridian-proxy` per cell) and a
//! closed-loop load ([`closed_loop`]).
//!
//! Scenarios, every algorithm in each, plus oracles (balancers told the truth):
//!
//! - **slow**: three replicas, one 5× slower (2 ms vs 10 ms of work, four workers each);
//!   p50, p99, p99.9, throughput, share on the slow node. Oracles: `weighted` with the
//!   true capacities as weights (workers / service time: 5:5:1), and "best possible":
//!   the two fast nodes alone (with 8 clients and 4 workers each they never queue, so no
//!   placement can do better than never using the slow node).
//! - **degrading**: three equal replicas (2 ms, four workers); at t = 10 s one becomes 5×
//!   slower (DemoControl/SetLatency); how long until its share stays below 5 %, and the
//!   p99 over the 5 s after.
//! - **capacity**: three replicas of equal speed (5 ms) with 2, 4 and 8 workers (1:2:4),
//!   as many clients as workers; oracle: `weighted` 1:2:4.
//! - **hash**: consistent hashing over 10 nodes; the share of 2,000 keys that move when
//!   one node leaves and when it joins again (ideal: 1/10).
//! - **geo**: three regions in network namespaces with netem delays between them; the
//!   in-region share, the spill as eu-west loses its nodes, the added latency
//!   ([`geographic`]; needs root and `ip netns`, else it reports "not run").
//! - **shared** ([`shared_nodes`]): two proxies share three nodes and one loads a single
//!   node; the other proxy's figures with blind, trailer-fed, stream-fed and probing
//!   policies.
//!
//! A cell starts a fresh proxy (no latency estimates or reports carried over), waits until
//! every node is healthy and warm, runs the load, and stops the proxy. Nodes report their
//! utilisation (calls in flight over workers) in ORCA trailers, as the demo node does.
//! Every process is stopped when the run ends.

pub mod closed_loop;
pub mod geographic;
pub mod netns;
pub mod report;
pub mod shared_nodes;

use std::fmt::Write;
use std::time::Duration;

use clap::Parser;
use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::v1 as pb;

use self::closed_loop::{ClosedLoop, KEY_HEADER, Sample, key_placement};
use self::report::{CellFigures, goal, table, time_to_share_below};
use crate::cluster::{Cluster, ECHO, wait_steady, wait_usable};
use crate::demo_node::process::DemoNodeProcess;

/// Sizes of a run.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "meridian-routing-bench",
    about = "Benchmark Meridian's balancing algorithms for routing quality: a slow replica, a \
             degrading replica, heterogeneous capacity, consistent-hash key movement, and \
             regions in network namespaces (geo; needs root). Starts its own etcd, control \
             plane, demo nodes and proxies (the binaries built next to this one)."
)]
pub struct RoutingBenchArgs {
    /// Seconds of measured load per cell (the degrading scenario runs 10 s + 5 s).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of load before measuring, per cell.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Closed-loop clients in the slow and degrading scenarios.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Algorithms to run (default: all).
    #[arg(long, value_delimiter = ',')]
    pub algorithms: Vec<String>,
    /// Scenarios to run: slow, degrading, capacity, hash, shared, geo (default: all).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Multiplies every node's service time (2 ms becomes 2 × this): on a loaded machine,
    /// scheduling delays of a few milliseconds would otherwise drown the differences
    /// between nodes that the algorithms are meant to see.
    #[arg(long, default_value_t = 1)]
    pub time_scale: u32,
    /// Longest the whole run may take, seconds.
    #[arg(long, default_value_t = 1_800)]
    pub deadline: u64,
}

const ALGORITHMS: [(&str, pb::Algorithm); 7] = [
    ("round_robin", pb::Algorithm::RoundRobin),
    ("random", pb::Algorithm::Random),
    ("least_connections", pb::Algorithm::LeastConnections),
    ("weighted", pb::Algorithm::Weighted),
    ("geographic", pb::Algorithm::Geographic),
    ("consistent_hash", pb::Algorithm::ConsistentHash),
    ("adaptive", pb::Algorithm::Adaptive),
];

/// One node of a scenario: service time, workers, and its weight for the oracle.
struct NodeSpec {
    id: &'static str,
    latency_ms: u32,
    workers: u32,
    oracle_weight: u32,
}

/// A scenario's nodes, running and registered.
struct Fleet<'a> {
    cluster: &'a Cluster,
    time_scale: u32,
    specs: Vec<NodeSpec>,
    names: Vec<String>,
    processes: Vec<DemoNodeProcess>,
}

impl<'a> Fleet<'a> {
    async fn start(cluster: &'a Cluster, specs: Vec<NodeSpec>, time_scale: u32) -> Fleet<'a> {
        let mut processes = Vec::new();
        for spec in &specs {
            let latency = (spec.latency_ms * time_scale).to_string();
            let workers = spec.workers.to_string();
            let mut args = vec!["--latency-ms", &latency];
            if spec.workers > 0 {
                args.extend(["--workers", &workers, "--capacity", &workers]);
            }
            processes.push(
                cluster
                    .node(spec.id, "eu-west", "eu-west-a", 1, &args)
                    .await,
            );
        }
        let names = specs.iter().map(|s| s.id.to_owned()).collect();
        Fleet {
            cluster,
            time_scale,
            specs,
            names,
            processes,
        }
    }

    /// Registers every node again with weight 1, or its oracle weight.
    async fn weigh(&self, oracle: bool) {
        for (spec, process) in self.specs.iter().zip(&self.processes) {
            self.cluster
                .register(pb::Node {
                    id: spec.id.into(),
                    address: process.addr.to_string(),
                    federation: "prod".into(),
                    region: "eu-west".into(),
                    zone: "eu-west-a".into(),
                    services: vec![ECHO.into()],
                    weight: if oracle { spec.oracle_weight } else { 1 },
                    ..Default::default()
                })
                .await;
        }
    }

    /// Deregisters every node and stops it, so the next scenario's proxies see only
    /// their own nodes.
    async fn retire(self) {
        for id in &self.names {
            self.cluster.deregister(id).await;
        }
    }

    async fn set_latency(&self, node: usize, latency_ms: u32) {
        let mut control = DemoControlClient::new(self.processes[node].channel().await);
        let latency_ms = latency_ms * self.time_scale;
        let _ = control
            .set_latency(demo::SetLatencyRequest { latency_ms })
            .await;
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

/// Runs the selected scenarios and returns the report (markdown).
pub async fn run(args: &RoutingBenchArgs) -> Result<String, BenchError> {
    let cluster = Cluster::start().await;
    let wanted = |s: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|w| w == s);
    let mut out = String::new();
    if wanted("slow") {
        out.push_str(&slow_replica(&cluster, args).await?);
    }
    if wanted("degrading") {
        out.push_str(&degrading_replica(&cluster, args).await?);
    }
    if wanted("capacity") {
        out.push_str(&capacity(&cluster, args).await?);
    }
    if wanted("hash") {
        out.push_str(&hash_movement(&cluster, args).await?);
    }
    if wanted("geo") {
        out.push_str(&geographic::scenario(args).await?);
    }
    if wanted("shared") {
        out.push_str(&shared_nodes::shared_nodes(&cluster, args).await?);
    }
    Ok(out)
}

fn algorithms(args: &RoutingBenchArgs) -> Vec<(&'static str, pb::Algorithm)> {
    ALGORITHMS
        .into_iter()
        .filter(|(name, _)| args.algorithms.is_empty() || args.algorithms.iter().any(|a| a == name))
        .collect()
}

/// Runs one cell: a fresh proxy with `algorithm`, `clients` callers for warm-up plus
/// `seconds`; `during` runs alongside the load (e.g. degrading a node at some time).
async fn cell(
    fleet: &Fleet<'_>,
    proxy_id: &str,
    algorithm: pb::Algorithm,
    clients: usize,
    total: Duration,
    during: impl std::future::Future<Output = ()>,
) -> Result<Vec<Sample>, BenchError> {
    fleet
        .cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: algorithm.into(),
            hash: Some(pb::HashPolicy {
                header: KEY_HEADER.into(),
            }),
            ..Default::default()
        })
        .await;
    let proxy = fleet.cluster.proxy(proxy_id, "eu-west", "eu-west-a").await;
    wait_steady(&proxy, fleet.names.len()).await;
    let load = ClosedLoop {
        target: proxy.url(),
        clients,
        connections: 4.min(clients),
        duration: total,
        nodes: &fleet.names,
    };
    let (samples, ()) = tokio::join!(load.run(), during);
    let samples =
        samples.map_err(|e| BenchError(format!("{proxy_id}: cannot load the proxy: {e}")))?;
    eprintln!(
        "routing-bench: {proxy_id}: {} calls; per node p50/p99 ms: {}",
        samples.len(),
        report::per_node_latency(&samples, &fleet.names)
    );
    Ok(samples)
}

async fn slow_replica(cluster: &Cluster, args: &RoutingBenchArgs) -> Result<String, BenchError> {
    let specs = vec![
        NodeSpec {
            id: "fast-1",
            latency_ms: 2,
            workers: 4,
            oracle_weight: 5,
        },
        NodeSpec {
            id: "fast-2",
            latency_ms: 2,
            workers: 4,
            oracle_weight: 5,
        },
        NodeSpec {
            id: "slow",
            latency_ms: 10,
            workers: 4,
            oracle_weight: 1,
        },
    ];
    let mut fleet = Fleet::start(cluster, specs, args.time_scale).await;
    let warmup = Duration::from_secs_f64(args.warmup);
    let total = warmup + Duration::from_secs_f64(args.seconds);
    let mut cells = Vec::new();
    for (name, algorithm) in algorithms(args) {
        let samples = cell(
            &fleet,
            &format!("slow-{name}"),
            algorithm,
            args.clients,
            total,
            async {},
        )
        .await?;
        cells.push(CellFigures::over(name, &samples, 3, warmup, total));
    }
    fleet.weigh(true).await;
    let samples = cell(
        &fleet,
        "slow-oracle",
        pb::Algorithm::Weighted,
        args.clients,
        total,
        async {},
    )
    .await?;
    cells.push(CellFigures::over(
        "oracle: weighted 5:5:1 (true capacities)",
        &samples,
        3,
        warmup,
        total,
    ));
    fleet.weigh(false).await;
    // Best possible: the slow node out of the table.
    cluster.deregister("slow").await;
    fleet.names.truncate(2);
    let samples = cell(
        &fleet,
        "slow-best",
        pb::Algorithm::LeastConnections,
        args.clients,
        total,
        async {},
    )
    .await?;
    let mut best = CellFigures::over(
        "best possible: the fast nodes alone",
        &samples,
        2,
        warmup,
        total,
    );
    best.shares.push(0.0);
    cells.push(best);
    fleet.names.push("slow".into());
    fleet.weigh(false).await;

    let mut out = format!(
        "### One slow replica\n\nThree replicas, 2 ms / 2 ms / 10 ms of work (× {}), 4 workers each; {} closed-loop clients; {:.0} s per algorithm after {:.0} s of warm-up.\n\n",
        args.time_scale, args.clients, args.seconds, args.warmup
    );
    out.push_str(&table(&cells, &fleet.names, &[2]));
    out.push('\n');
    let find = |label: &str| cells.iter().find(|c| c.label == label);
    if let (Some(a), Some(rr), Some(lc)) = (
        find("adaptive"),
        find("round_robin"),
        find("least_connections"),
    ) {
        let oracle = cells
            .iter()
            .filter(|c| c.label.starts_with("oracle") || c.label.starts_with("best"))
            .map(|c| c.p99_ms)
            .fold(f64::INFINITY, f64::min);
        out.push_str(&goal(
            "adaptive p99 ≤ 0.5 × round robin's",
            a.p99_ms <= 0.5 * rr.p99_ms,
            format!("{:.2} ms vs 0.5 × {:.2} ms", a.p99_ms, rr.p99_ms),
        ));
        out.push_str(&goal(
            "adaptive p99 ≤ least_connections'",
            a.p99_ms <= lc.p99_ms,
            format!("{:.2} ms vs {:.2} ms", a.p99_ms, lc.p99_ms),
        ));
        out.push_str(&goal(
            "adaptive p99 within 1.25 × the better oracle's",
            a.p99_ms <= 1.25 * oracle,
            format!("{:.2} ms vs 1.25 × {:.2} ms", a.p99_ms, oracle),
        ));
        out.push_str(&goal(
            "adaptive throughput ≥ least_connections'",
            a.throughput >= lc.throughput,
            format!("{:.0}/s vs {:.0}/s", a.throughput, lc.throughput),
        ));
    }
    out.push('\n');
    fleet.retire().await;
    Ok(out)
}

async fn degrading_replica(
    cluster: &Cluster,
    args: &RoutingBenchArgs,
) -> Result<String, BenchError> {
    let specs = vec![
        NodeSpec {
            id: "steady-1",
            latency_ms: 2,
            workers: 4,
            oracle_weight: 1,
        },
        NodeSpec {
            id: "steady-2",
            latency_ms: 2,
            workers: 4,
            oracle_weight: 1,
        },
        NodeSpec {
            id: "degrading",
            latency_ms: 2,
            workers: 4,
            oracle_weight: 1,
        },
    ];
    let fleet = Fleet::start(cluster, specs, args.time_scale).await;
    let at = Duration::from_secs(10);
    let after = Duration::from_secs(5);
    let mut out = format!(
        "### One replica degrading\n\nThree replicas of 2 ms (× {}), 4 workers each; {} closed-loop clients; at t = 10 s one becomes 5× slower (10 ms). Time until its share stays below 5 % (250 ms windows), and the figures of the 5 s after.\n\n| algorithm | share before | time to < 5 % | share after | p99 after ms | p99.9 after ms | calls/s after |\n|---|---:|---:|---:|---:|---:|---:|\n",
        args.time_scale, args.clients
    );
    let mut adaptive_time = None;
    for (name, algorithm) in algorithms(args) {
        let degrade = async {
            tokio::time::sleep(at).await;
            fleet.set_latency(2, 10).await;
        };
        let samples = cell(
            &fleet,
            &format!("degrading-{name}"),
            algorithm,
            args.clients,
            at + after,
            degrade,
        )
        .await?;
        fleet.set_latency(2, 2).await;
        let before = CellFigures::over(name, &samples, 3, Duration::from_secs(2), at);
        let late = CellFigures::over(name, &samples, 3, at, at + after);
        let time = time_to_share_below(
            &samples,
            2,
            0.05,
            at,
            at + after,
            Duration::from_millis(250),
        );
        if name == "adaptive" {
            adaptive_time = Some(time);
        }
        let _ = writeln!(
            out,
            "| {name} | {:.1} % | {} | {:.1} % | {:.2} | {:.2} | {:.0} |",
            100.0 * before.shares[2],
            time.map_or("never".to_owned(), |t| format!("{:.2} s", t.as_secs_f64())),
            100.0 * late.shares[2],
            late.p99_ms,
            late.p999_ms,
            late.throughput
        );
    }
    out.push('\n');
    if let Some(time) = adaptive_time {
        out.push_str(&goal(
            "adaptive: the degraded replica's share below 5 % within 2 s",
            time.is_some_and(|t| t <= Duration::from_secs(2)),
            time.map_or("never within 5 s".to_owned(), |t| {
                format!("{:.2} s", t.as_secs_f64())
            }),
        ));
    }
    out.push('\n');
    fleet.retire().await;
    Ok(out)
}

async fn capacity(cluster: &Cluster, args: &RoutingBenchArgs) -> Result<String, BenchError> {
    let specs = vec![
        NodeSpec {
            id: "small",
            latency_ms: 5,
            workers: 2,
            oracle_weight: 1,
        },
        NodeSpec {
            id: "medium",
            latency_ms: 5,
            workers: 4,
            oracle_weight: 2,
        },
        NodeSpec {
            id: "large",
            latency_ms: 5,
            workers: 8,
            oracle_weight: 4,
        },
    ];
    let fleet = Fleet::start(cluster, specs, args.time_scale).await;
    let clients = 14;
    let warmup = Duration::from_secs_f64(args.warmup);
    let total = warmup + Duration::from_secs_f64(args.seconds);
    let mut cells = Vec::new();
    for (name, algorithm) in algorithms(args) {
        let samples = cell(
            &fleet,
            &format!("capacity-{name}"),
            algorithm,
            clients,
            total,
            async {},
        )
        .await?;
        cells.push(CellFigures::over(name, &samples, 3, warmup, total));
    }
    fleet.weigh(true).await;
    let samples = cell(
        &fleet,
        "capacity-oracle",
        pb::Algorithm::Weighted,
        clients,
        total,
        async {},
    )
    .await?;
    cells.push(CellFigures::over(
        "oracle: weighted 1:2:4 (true capacities)",
        &samples,
        3,
        warmup,
        total,
    ));
    fleet.weigh(false).await;
    let mut out = format!(
        "### Heterogeneous capacity 1:2:4\n\nThree replicas of 5 ms (× {}) with 2, 4 and 8 workers; {clients} closed-loop clients (as many as workers: the ideal shares are 1/7, 2/7, 4/7 = 14 %, 29 %, 57 %).\n\n",
        args.time_scale
    );
    out.push_str(&table(&cells, &fleet.names, &[0, 1, 2]));
    out.push('\n');
    fleet.retire().await;
    Ok(out)
}

async fn hash_movement(cluster: &Cluster, args: &RoutingBenchArgs) -> Result<String, BenchError> {
    let specs = (0..10)
        .map(|i| NodeSpec {
            id: ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9"][i],
            latency_ms: 0,
            workers: 0,
            oracle_weight: 1,
        })
        .collect();
    let fleet = Fleet::start(cluster, specs, args.time_scale).await;
    cluster
        .echo_policy(pb::Algorithm::ConsistentHash, KEY_HEADER)
        .await;
    let proxy = cluster.proxy("hash", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 10).await;
    let keys: Vec<String> = (0..2_000).map(|k| format!("user-{k}")).collect();
    let place = |what: &'static str| {
        let (target, keys) = (proxy.url(), &keys);
        async move {
            let placed = key_placement(&target, keys, 32)
                .await
                .map_err(|e| BenchError(format!("hash: {what}: {e}")))?;
            let failed = placed.iter().filter(|n| n.is_empty()).count();
            if failed > 0 {
                return Err(BenchError(format!("hash: {what}: {failed} calls failed")));
            }
            Ok(placed)
        }
    };
    let ten = place("10 nodes").await?;
    cluster.deregister("h9").await;
    wait_usable(&proxy, 9).await;
    let nine = place("after h9 left").await?;
    fleet.weigh(false).await;
    wait_steady(&proxy, 10).await;
    let back = place("after h9 joined").await?;
    let moved = |a: &[String], b: &[String]| {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    };
    let (left, joined) = (moved(&ten, &nine), moved(&nine, &back));
    let mut out = String::from(
        "### Consistent hash, 10 nodes\n\n2,000 keys placed through the proxy; the share that moves when one node leaves, and when it joins again (ideal: the node's own tenth).\n\n| change | keys moved | ideal |\n|---|---:|---:|\n",
    );
    let _ = writeln!(out, "| h9 leaves | {:.1} % | 10 % |", 100.0 * left);
    let _ = writeln!(out, "| h9 joins | {:.1} % | 10 % |", 100.0 * joined);
    let _ = writeln!(
        out,
        "| back to the first placement | {:.1} % differ | 0 % |\n",
        100.0 * moved(&ten, &back)
    );
    out.push_str(&goal(
        "keys moved when one of 10 leaves ≤ 1/10 + 5 %",
        left <= 0.15,
        format!("{:.1} %", 100.0 * left),
    ));
    out.push_str(&goal(
        "keys moved when one joins ≤ 1/10 + 5 %",
        joined <= 0.15,
        format!("{:.1} %", 100.0 * joined),
    ));
    out.push('\n');
    fleet.retire().await;
    Ok(out)
}
