//! The control plane at scale, as an operator sees it (issue #10, item 5): a real etcd and
//! a real `meridian-control`, N nodes registered through the Admin API, P proxies
//! subscribed over C HTTP/2 connections, then how fast one change and a burst of changes
//! reach every proxy, and what that costs the control plane in CPU and memory.
//!
//! The phases, each bounded by `--phase-timeout`:
//! 1. registration: `RegisterNode` for every node, `--register-concurrency` calls in flight;
//! 2. subscription: P `StreamRoutes` streams ([`fleet`]) until every one holds a table
//!    with all N nodes;
//! 3. single changes: K times, drain or recover one node and time, per proxy, from the
//!    Admin call's start until the proxy holds the change; control-plane CPU per change;
//! 4. burst: drain `--burst` distinct nodes with the calls spread over `--burst-spread-ms`,
//!    and time from the last call's return until every proxy holds all of them draining.
//!
//! Health checks are slowed so they change no status during a run ([`operator::configure`]);
//! debouncing keeps its defaults. The control plane logs at `warn` so logging does not
//! weigh on the figures. Every process started is stopped when the run ends, whether it
//! succeeded, failed or was interrupted.

pub mod fleet;
pub mod layout;
pub mod operator;
pub mod process_usage;
pub mod report;
pub mod thin_routes;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_proto::v1 as pb;

use self::fleet::{Condition, Fleet};
use self::process_usage::ProcessUsage;
use self::report::{MeanMax, ScaleReport, Spread};
use crate::EtcdCluster;
use crate::control::{ControlPlaneOptions, ControlPlaneProcess, ExtraSettings};

/// Sizes and bounds of a run.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "meridian-control-scale",
    about = "Benchmark meridian-control at scale: registration, snapshot fan-out, one-change \
             propagation, a burst of changes, CPU and RSS. Starts its own etcd and control \
             plane (the binaries built next to this one)."
)]
pub struct ScaleArgs {
    /// Nodes registered.
    #[arg(long, env = "MERIDIAN_SCALE_NODES", default_value_t = 10_000)]
    pub nodes: usize,
    /// Subscribed proxies (StreamRoutes streams).
    #[arg(long, env = "MERIDIAN_SCALE_PROXIES", default_value_t = 1_000)]
    pub proxies: usize,
    /// HTTP/2 connections the streams are spread over.
    #[arg(long, env = "MERIDIAN_SCALE_CONNECTIONS", default_value_t = 20)]
    pub connections: usize,
    /// Single changes (alternately drain and recover) timed one at a time.
    #[arg(long, env = "MERIDIAN_SCALE_CHANGES", default_value_t = 20)]
    pub changes: usize,
    /// Drains in the burst (at most the number of nodes).
    #[arg(long, env = "MERIDIAN_SCALE_BURST", default_value_t = 1_000)]
    pub burst: usize,
    /// How long the burst's calls are spread over, milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub burst_spread_ms: u64,
    /// RegisterNode calls in flight.
    #[arg(long, default_value_t = 64)]
    pub register_concurrency: usize,
    /// Longest any phase may take to converge, seconds.
    #[arg(long, default_value_t = 60)]
    pub phase_timeout: u64,
    /// Longest the whole run may take, seconds.
    #[arg(long, default_value_t = 900)]
    pub deadline: u64,
}

/// Why a run failed, in words that say which phase and what was seen.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScaleError(pub String);

/// Time for the control plane to finish work set off by the step before (the last acks,
/// the health checker's first probes) before the next measure starts.
const SETTLE: Duration = Duration::from_millis(300);

/// A run's figures, complete or up to the phase that failed.
#[derive(Debug)]
pub struct ScaleOutcome {
    pub report: ScaleReport,
    pub error: Option<ScaleError>,
}

/// Runs the benchmark; every process it started is stopped when this returns.
pub async fn run(args: &ScaleArgs) -> ScaleOutcome {
    let mut report = ScaleReport::default();
    let error = start_and_measure(args, &mut report).await.err();
    ScaleOutcome { report, error }
}

async fn start_and_measure(args: &ScaleArgs, report: &mut ScaleReport) -> Result<(), ScaleError> {
    let etcd = EtcdCluster::single()
        .await
        .map_err(|e| ScaleError(format!("starting etcd: {e}")))?;
    let dir = tempfile::Builder::new()
        .prefix("meridian-control-scale-")
        .tempdir()
        .map_err(|e| ScaleError(format!("temp dir: {e}")))?;
    let endpoints = etcd.endpoints();
    let extra = ExtraSettings {
        env: vec![("RUST_LOG".into(), "warn".into())],
        ..Default::default()
    };
    let mut cp = ControlPlaneProcess::start_with(
        ControlPlaneOptions {
            etcd_endpoints: &endpoints,
            prefix: "/meridian-scale/",
            replica: "cp-scale",
            election_ttl_seconds: 5,
            dir: dir.path(),
        },
        &extra,
    )
    .await;
    let usage = Usage {
        control: ProcessUsage::new(cp.process.pid()),
        etcd: etcd.pid(0).map(ProcessUsage::new),
    };
    let result = measure(args, &cp, &usage, report).await;
    cp.process.terminate(Duration::from_secs(10));
    result.map_err(|e| {
        report.failed_phase = Some(e.0.lines().next().unwrap_or_default().to_owned());
        let log = cp.process.output();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        ScaleError(format!(
            "{e}\ncontrol plane log, last lines:\n{}",
            tail.join("\n")
        ))
    })
}

struct Usage {
    control: ProcessUsage,
    etcd: Option<ProcessUsage>,
}

impl Usage {
    fn etcd_cpu(&self) -> Duration {
        self.etcd.map_or(Duration::ZERO, |e| e.cpu())
    }
}

async fn measure(
    args: &ScaleArgs,
    cp: &ControlPlaneProcess,
    usage: &Usage,
    report: &mut ScaleReport,
) -> Result<(), ScaleError> {
    let phase_timeout = Duration::from_secs(args.phase_timeout);
    let bench = ProcessUsage::current();
    let bench_cpu = bench.cpu();
    *report = ScaleReport {
        nodes: args.nodes,
        proxies: args.proxies,
        connections: args.connections,
        changes: args.changes,
        burst: args.burst.min(args.nodes),
        register_concurrency: args.register_concurrency,
        binaries: crate::process::binary("meridian-control")
            .display()
            .to_string(),
        ..Default::default()
    };
    operator::configure(cp, args.nodes).await?;
    let admin = cp.admin().await;

    // 1. Registration.
    let (cpu, etcd_cpu) = (usage.control.cpu(), usage.etcd_cpu());
    report.registration =
        operator::register_nodes(&admin, args.nodes, args.register_concurrency).await?;
    report.registration_cpu = usage.control.cpu() - cpu;
    report.registration_etcd_cpu = usage.etcd_cpu() - etcd_cpu;
    tokio::time::sleep(SETTLE * 3).await;
    report.rss_before_proxies = usage.control.rss_mib();
    progress(&format!(
        "registered {} nodes in {:.1} s",
        args.nodes,
        report.registration.as_secs_f64()
    ));

    // 2. Every proxy subscribes and gets the full snapshot.
    let cpu = usage.control.cpu();
    let started = Instant::now();
    let fleet = Fleet::start(
        &cp.url(),
        args.proxies,
        args.connections,
        Condition::NodesKnown(args.nodes),
    )
    .await?;
    fleet
        .wait_all(phase_timeout, "every proxy holding the full snapshot")
        .await?;
    report.snapshot_all = started.elapsed();
    report.snapshot_cpu = usage.control.cpu() - cpu;
    report.snapshot_bytes = fleet.stats(0).last_update_bytes.load(Relaxed);
    tokio::time::sleep(SETTLE).await;
    report.rss_with_proxies = usage.control.rss_mib();
    progress(&format!(
        "{} proxies hold the full snapshot after {:.1} s",
        args.proxies,
        report.snapshot_all.as_secs_f64()
    ));

    // 3. One change at a time.
    single_changes(args, &admin, &fleet, usage, report).await?;
    progress(&format!("{} single changes timed", args.changes));

    // 4. A burst of drains.
    let burst_result = burst(args, &admin, &fleet, usage, report).await;

    let versions = fleet.versions();
    report.same_final_version = versions.windows(2).all(|w| w[0] == w[1]);
    report.rss_end = usage.control.rss_mib();
    report.bench_cpu = bench.cpu() - bench_cpu;
    report.metrics = control_metrics(cp).await;
    burst_result
}

fn progress(what: &str) {
    eprintln!("meridian-control-scale: {what}");
}

/// Drains node `i / 2` on even `i`, recovers it on odd `i`, one change at a time, each
/// timed to every proxy; ends with every node recovered.
async fn single_changes(
    args: &ScaleArgs,
    admin: &pb::admin_client::AdminClient<tonic::transport::Channel>,
    fleet: &Fleet,
    usage: &Usage,
    report: &mut ScaleReport,
) -> Result<(), ScaleError> {
    let timeout = Duration::from_secs(args.phase_timeout);
    let (mut to_proxy, mut admin_call, mut cpu_per_change) = (Vec::new(), Vec::new(), Vec::new());
    let changes = args.changes + args.changes % 2; // the last one recovers
    for i in 0..changes {
        let (index, drain) = ((i / 2) % args.nodes, i % 2 == 0);
        let status = if drain {
            pb::NodeStatus::Draining
        } else {
            pb::NodeStatus::Unspecified
        };
        fleet.set_goal(Condition::NodeStatus { index, status });
        let cpu = usage.control.cpu();
        let started = fleet.now_us();
        operator::set_draining(admin, index, drain).await?;
        let returned = fleet.now_us();
        fleet
            .wait_all(timeout, &format!("change {i} ({status:?} node {index})"))
            .await?;
        tokio::time::sleep(SETTLE).await;
        if i >= args.changes {
            continue; // the extra recovery that restores the fleet is not measured
        }
        admin_call.push(returned - started);
        to_proxy.extend(
            fleet
                .reached_at_us()
                .iter()
                .map(|at| at.saturating_sub(started)),
        );
        cpu_per_change.push((usage.control.cpu() - cpu).as_secs_f64());
        report.delta_bytes = report
            .delta_bytes
            .max(fleet.stats(0).last_update_bytes.load(Relaxed));
    }
    report.change_to_proxy = Spread::of_micros(to_proxy);
    report.change_admin_call = Spread::of_micros(admin_call);
    report.change_cpu = MeanMax::of(&cpu_per_change);
    Ok(())
}

/// Drains the last `--burst` nodes, the calls spread over `--burst-spread-ms`.
async fn burst(
    args: &ScaleArgs,
    admin: &pb::admin_client::AdminClient<tonic::transport::Channel>,
    fleet: &Fleet,
    usage: &Usage,
    report: &mut ScaleReport,
) -> Result<(), ScaleError> {
    let nodes = args.nodes - report.burst..args.nodes;
    fleet.set_goal(Condition::AllDraining(nodes.clone()));
    let updates = fleet.updates();
    let cpu = usage.control.cpu();
    let spread = Duration::from_millis(args.burst_spread_ms);
    let writes = operator::drain_burst(admin, nodes, spread).await?;
    fleet
        .wait_all(
            Duration::from_secs(args.phase_timeout),
            "every proxy holding the burst's drains",
        )
        .await?;
    let last_write = fleet.at_us(writes.last_return);
    let last_start = fleet.at_us(writes.last_start);
    report.burst_spread = spread;
    report.burst_writes = writes.duration;
    report.burst_final_from_last_start = Spread::of_micros(
        fleet
            .reached_at_us()
            .iter()
            .map(|at| at.saturating_sub(last_start))
            .collect(),
    );
    report.burst_final = Spread::of_micros(
        fleet
            .reached_at_us()
            .iter()
            .map(|at| at.saturating_sub(last_write))
            .collect(),
    );
    let pushes: Vec<f64> = fleet
        .updates()
        .iter()
        .zip(updates)
        .map(|(after, before)| (after - before) as f64)
        .collect();
    report.burst_pushes_per_proxy = MeanMax::of(&pushes);
    tokio::time::sleep(SETTLE).await;
    report.burst_cpu = usage.control.cpu() - cpu;
    Ok(())
}

/// The control plane's own account of its pushes and publications.
async fn control_metrics(cp: &ControlPlaneProcess) -> Vec<String> {
    const WANTED: [&str; 5] = [
        "meridian_control_pushes_total",
        "meridian_control_acks_total",
        "meridian_control_table_publications_total",
        "meridian_control_debounce_folded_changes",
        "meridian_control_push_latency_seconds",
    ];
    match crate::http::get(cp.http, "/metrics").await {
        Ok((200, body)) => body
            .lines()
            .filter(|l| !l.starts_with('#') && WANTED.iter().any(|w| l.starts_with(w)))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}
