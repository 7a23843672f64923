//! The geographic scenario of the routing benchmark (issue #14, item 3): three regions
//! (eu-west, us-east, ap-south at their real coordinates), each in its own network
//! namespace ([`netns`](super::netns)) with `tc netem` delaying what crosses regions; three
//! demo nodes per region started inside their region's namespace and registering
//! themselves in it; one proxy in eu-west's namespace (`--region eu-west`); the
//! benchmark's clients call it over the bridge (no delay on that hop). The policy keeps
//! its defaults apart from the algorithm: locality by default, `global_routing` off.
//!
//! Per algorithm (least_connections, the default; round_robin; geographic; adaptive):
//! the in-region share while healthy, then eu-west loses 1, 2 and 3 of its nodes (killed)
//! and each loss is measured twice: while only the proxy knows (its breakers have opened;
//! the control plane's health checks need `unhealthy_threshold` failures, set high here so
//! this window lasts the measurement) and after the control plane's verdict reached the
//! proxy's table. Each row gives the share spilled to other regions against the share
//! the overprovisioning rule predicts, the p50/p99 (what crossing regions adds), and the
//! in-region share of RouteMessage (`global_routing` set on the message, so it may fail
//! over like a forwarded call).
//!
//! The rule (Envoy's priority load, Meridian's `balance::regional` and
//! `balance::geographic`): a region keeps min(100 %, 1.4 × ready / total) of the traffic
//! and the rest spills to the nearest other region (us-east, then ap-south). Counted over
//! the region's three nodes, losing 1, 2, 3 spills 6.7 %, 53.3 %, 100 %. The proxy counts
//! a region's members in its table: the nodes up and those the control plane marked down
//! (unhealthy here); a node whose lease lapsed leaves the table and the count, so the
//! killed nodes' leases are made to outlast a round (the health checker's verdict is what
//! is measured, not the lease's).

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_shared::domain::FailoverPolicy;
use tokio::time::Instant;

use super::closed_loop::{ClosedLoop, Sample};
use super::netns::{NetworkError, RegionNetworks};
use super::report::{CellFigures, goal};
use super::{BenchError, RoutingBenchArgs};
use crate::EtcdCluster;
use crate::cluster::{Cluster, ECHO, wait_steady};
use crate::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized,
};
use crate::demo_node::process::DemoNodeProcess;
use crate::ports::free_port;
use crate::proxy::{ProxyOptions, ProxyProcess};

/// A region of the scenario.
struct RegionSpec {
    name: &'static str,
    zone: &'static str,
    location: (f64, f64),
}

/// The proxy's region first; the others nearest first (from Dublin: Washington, Mumbai).
const REGIONS: [RegionSpec; 3] = [
    RegionSpec {
        name: "eu-west",
        zone: "eu-west-a",
        location: (53.35, -6.26),
    },
    RegionSpec {
        name: "us-east",
        zone: "us-east-a",
        location: (38.9, -77.04),
    },
    RegionSpec {
        name: "ap-south",
        zone: "ap-south-a",
        location: (19.08, 72.88),
    },
];
const NODES_PER_REGION: usize = 3;
/// One-way delay between regions, and its jitter.
const DELAY: Duration = Duration::from_millis(25);
const JITTER: Duration = Duration::from_millis(2);
/// Every node's service time, ms (× `--time-scale`).
const SERVICE_MS: u32 = 2;
/// The control plane's health-check interval (its default).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// RouteMessage calls per row, and how many at once.
const ROUTE_MESSAGE_CALLS: usize = 1_000;
const ROUTE_MESSAGE_CONCURRENCY: usize = 8;
/// How far a measured spill may be from the rule's and still count as following it
/// (percentage points): sampling noise over thousands of calls is well under one.
const SPILL_MARGIN: f64 = 3.0;

/// The algorithms that matter here: the default and the ones with their own locality.
const GEO_ALGORITHMS: [(&str, pb::Algorithm); 4] = [
    ("least_connections", pb::Algorithm::LeastConnections),
    ("round_robin", pb::Algorithm::RoundRobin),
    ("geographic", pb::Algorithm::Geographic),
    ("adaptive", pb::Algorithm::Adaptive),
];

const TITLE: &str = "### Geographic: three regions in network namespaces\n\n";

/// Runs the scenario; a machine without root or `ip netns` gets a "not run" line.
pub async fn scenario(args: &RoutingBenchArgs) -> Result<String, BenchError> {
    let algorithms: Vec<_> = GEO_ALGORITHMS
        .into_iter()
        .filter(|(name, _)| args.algorithms.is_empty() || args.algorithms.iter().any(|a| a == name))
        .collect();
    if algorithms.is_empty() {
        return Ok(format!(
            "{TITLE}- **not run**: none of the selected algorithms is one it measures (least_connections, round_robin, geographic, adaptive)\n\n"
        ));
    }
    let names: Vec<&str> = REGIONS.iter().map(|r| r.name).collect();
    // Declared first, dropped last: every process inside has stopped by then.
    let networks = match RegionNetworks::create(&names, DELAY, JITTER) {
        Ok(networks) => networks,
        Err(e @ NetworkError::Unsupported(_)) => return Ok(format!("{TITLE}- **{e}**\n\n")),
        Err(e) => return Err(BenchError(e.to_string())),
    };
    let federation = GeoFederation::start(&networks, args).await?;
    let mut rows = Vec::new();
    for (name, algorithm) in algorithms {
        rows.extend(federation.round(name, algorithm).await?);
    }
    Ok(render(&rows, &networks, args))
}

/// One line of the table.
struct Row {
    algorithm: &'static str,
    /// eu-west's nodes still running.
    up: usize,
    when: When,
    figures: CellFigures,
    /// Share served in eu-west, us-east, ap-south.
    regions: [f64; 3],
    /// eu-west's nodes in the proxy's table when the window started (up or marked down).
    members: usize,
    /// RouteMessage: in-region share and calls answered, when measured.
    route_message: Option<(f64, usize)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    Healthy,
    /// Before the control plane's verdict: the window measured, seconds.
    ProxyOnly(f64),
    /// After it, with what the proxy's table said of the node lost last when the
    /// verdict arrived: "unhealthy" (health checks), "lost" (lease expired), or "left
    /// the table" (a self-registered node whose lease is gone).
    AfterVerdict(&'static str),
}

/// The control plane, etcd and the nodes of us-east and ap-south, for the whole run.
struct GeoFederation<'n> {
    networks: &'n RegionNetworks,
    cluster: Cluster,
    remote: Vec<DemoNodeProcess>,
    remote_ids: Vec<String>,
    /// Lease of the nodes, seconds: outlasts a round, so a killed node stays in the table
    /// (marked unhealthy) until the round ends.
    ttl_seconds: u32,
    time_scale: u32,
    seconds: f64,
    warmup: f64,
    clients: usize,
}

impl<'n> GeoFederation<'n> {
    async fn start(
        networks: &'n RegionNetworks,
        args: &RoutingBenchArgs,
    ) -> Result<GeoFederation<'n>, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError(format!("temp dir: {e}")))?;
        let etcd = EtcdCluster::single()
            .await
            .map_err(|e| BenchError(format!("starting etcd: {e}")))?;
        let grpc = SocketAddr::new(IpAddr::V4(networks.bridge_addr), free_port());
        let options = ControlPlaneOptions {
            etcd_endpoints: &etcd.endpoints(),
            prefix: "/meridian/",
            replica: "cp-geo",
            election_ttl_seconds: 5,
            dir: dir.path(),
        };
        // Plaintext off loopback: the bridge has no port to the outside, it is this
        // machine's own wire between namespaces.
        let plaintext = ExtraSettings {
            args: vec!["--insecure".into()],
            ..Default::default()
        };
        let cp = ControlPlaneProcess::start_on(grpc, options, &plaintext).await;
        let cluster = Cluster { etcd, cp, dir };
        for region in &REGIONS {
            cluster
                .cp
                .create_region("prod", region.name, region.location, &[region.zone])
                .await;
        }
        allow_networks(&cluster, &["127.0.0.0/8", &networks.subnet]).await;
        // The proxy-only window (measurement plus a margin) must end before the health
        // checker's verdict; the leases outlast the round (per loss: the proxy-only window,
        // the verdict, warm-up and measurement), so the killed nodes stay members.
        let window = args.seconds + 10.0;
        let round = (args.warmup + args.seconds) * (1 + 2 * NODES_PER_REGION) as f64
            + window * NODES_PER_REGION as f64;
        let threshold = (window / HEALTH_INTERVAL.as_secs_f64()).ceil() as u32;
        cluster
            .cp
            .change_config(|c| {
                c.default_health_check
                    .get_or_insert_with(Default::default)
                    .unhealthy_threshold = threshold.clamp(3, 100);
            })
            .await;
        let mut federation = GeoFederation {
            networks,
            cluster,
            remote: Vec::new(),
            remote_ids: Vec::new(),
            ttl_seconds: (2.0 * round) as u32,
            time_scale: args.time_scale,
            seconds: args.seconds,
            warmup: args.warmup,
            clients: args.clients,
        };
        for region in &REGIONS[1..] {
            for i in 1..=NODES_PER_REGION {
                let id = format!("{}-{i}", region.name);
                let node = federation.start_node(region, &id).await;
                federation.remote.push(node);
                federation.remote_ids.push(id);
            }
        }
        Ok(federation)
    }

    /// Starts a demo node inside `region`'s namespace, registering itself there.
    async fn start_node(&self, region: &RegionSpec, id: &str) -> DemoNodeProcess {
        let net = self.networks.region(region.name);
        let listen = format!("{}:0", net.addr);
        let latency = (SERVICE_MS * self.time_scale).to_string();
        let ttl = self.ttl_seconds.to_string();
        let cp = self.cluster.cp.url();
        let args = [
            "--listen",
            &listen,
            "--latency-ms",
            &latency,
            "--register-with",
            &cp,
            "--federation",
            "prod",
            "--region",
            region.name,
            "--zone",
            region.zone,
            "--ttl-seconds",
            &ttl,
        ];
        let log = self.cluster.dir.path().join(format!("{id}.log"));
        DemoNodeProcess::start_in_netns(&net.netns, id, &args, &log).await
    }

    async fn start_proxy(&self, id: &str) -> ProxyProcess {
        let home = &REGIONS[0];
        let net = self.networks.region(home.name);
        let control_planes = [self.cluster.cp.url()];
        let options = ProxyOptions {
            id,
            federation: "prod",
            region: home.name,
            zone: home.zone,
            control_planes: &control_planes,
            dir: self.cluster.dir.path(),
            ports: Some((
                SocketAddr::new(IpAddr::V4(net.addr), free_port()),
                SocketAddr::new(IpAddr::V4(net.addr), free_port()),
            )),
        };
        let proxy = ProxyProcess::start_in_netns(&net.netns, options, &[]).await;
        proxy.wait_ready(Duration::from_secs(20)).await;
        proxy
    }

    /// One algorithm: fresh eu-west nodes and proxy, healthy, then losing the nodes one
    /// by one.
    async fn round(
        &self,
        name: &'static str,
        algorithm: pb::Algorithm,
    ) -> Result<Vec<Row>, BenchError> {
        self.cluster
            .set_policy(pb::ServicePolicy {
                name: ECHO.into(),
                federation: "prod".into(),
                algorithm: algorithm.into(),
                ..Default::default()
            })
            .await;
        let home_region = &REGIONS[0];
        let home_ids: Vec<String> = (1..=NODES_PER_REGION)
            .map(|i| format!("{}-{name}-{i}", home_region.name))
            .collect();
        let mut home = Vec::new();
        for id in &home_ids {
            home.push(self.start_node(home_region, id).await);
        }
        let nodes: Vec<String> = home_ids.iter().chain(&self.remote_ids).cloned().collect();
        let proxy = self.start_proxy(&format!("geo-{name}")).await;
        wait_steady(&proxy, nodes.len()).await;
        let warmup = Duration::from_secs_f64(self.warmup);
        let measured = Duration::from_secs_f64(self.seconds);
        let row = |up, when, members, samples: &[Sample], from, to, route_message| {
            let figures = CellFigures::over(name, samples, nodes.len(), from, to);
            let region = |r: usize| {
                figures.shares[r * NODES_PER_REGION..(r + 1) * NODES_PER_REGION]
                    .iter()
                    .sum()
            };
            Row {
                algorithm: name,
                up,
                when,
                regions: [region(0), region(1), region(2)],
                members,
                figures,
                route_message,
            }
        };

        let mut rows = Vec::new();
        let samples = self.load(&proxy, &nodes, warmup + measured).await?;
        let route_message = route_message_in_region(&proxy.url()).await?;
        rows.push(row(
            NODES_PER_REGION,
            When::Healthy,
            home_members(&proxy).await,
            &samples,
            warmup,
            warmup + measured,
            Some(route_message),
        ));
        for lost in 1..=NODES_PER_REGION {
            let up = NODES_PER_REGION - lost;
            drop(home.pop()); // SIGKILL: a crash, no deregistration
            // Only the proxy knows: from its first failed calls until the table changes.
            let usable_before = nodes.len() - lost + 1;
            let members = home_members(&proxy).await;
            let (samples, verdict) = tokio::join!(
                self.load(&proxy, &nodes, measured),
                verdict_within(&proxy, usable_before, measured)
            );
            let samples = samples?;
            // The first half second: the breakers are still learning.
            let from = Duration::from_millis(500);
            let to = verdict.unwrap_or(measured);
            if to > from + Duration::from_secs(1) {
                rows.push(row(
                    up,
                    When::ProxyOnly((to - from).as_secs_f64()),
                    members,
                    &samples,
                    from,
                    to,
                    None,
                ));
            } else {
                eprintln!(
                    "routing-bench: geo-{name}: the control plane's verdict came {to:?} after the loss; no proxy-only window"
                );
            }
            // After the control plane's verdict.
            wait_usable(&proxy, nodes.len() - lost).await?;
            let verdict = node_state(&proxy, &home_ids[up]).await;
            let members = home_members(&proxy).await;
            let samples = self.load(&proxy, &nodes, warmup + measured).await?;
            let route_message = route_message_in_region(&proxy.url()).await?;
            rows.push(row(
                up,
                When::AfterVerdict(verdict),
                members,
                &samples,
                warmup,
                warmup + measured,
                Some(route_message),
            ));
        }
        drop(proxy);
        for id in &home_ids {
            deregister_quietly(&self.cluster, id).await;
        }
        Ok(rows)
    }

    async fn load(
        &self,
        proxy: &ProxyProcess,
        nodes: &[String],
        duration: Duration,
    ) -> Result<Vec<Sample>, BenchError> {
        let load = ClosedLoop {
            target: proxy.url(),
            clients: self.clients,
            connections: 4.min(self.clients),
            duration,
            nodes,
        };
        let samples = load
            .run()
            .await
            .map_err(|e| BenchError(format!("{}: cannot load the proxy: {e}", proxy.id)))?;
        eprintln!("routing-bench: {}: {} calls", proxy.id, samples.len());
        Ok(samples)
    }
}

/// Lets node addresses of `networks` register in federation `prod`.
async fn allow_networks(cluster: &Cluster, networks: &[&str]) {
    let request = pb::UpsertFederationRequest {
        federation: Some(pb::Federation {
            name: "prod".into(),
            allowed_networks: networks.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        }),
    };
    cluster
        .cp
        .admin()
        .await
        .upsert_federation(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("allowing the namespaces' subnet in the federation");
}

/// Deregisters a node that may already be gone from the topology.
async fn deregister_quietly(cluster: &Cluster, id: &str) {
    let request = pb::DeregisterNodeRequest { id: id.into() };
    if let Err(status) = cluster
        .cp
        .admin()
        .await
        .deregister_node(authorized(request, OPERATOR_TOKEN))
        .await
        && status.code() != tonic::Code::NotFound
    {
        eprintln!("routing-bench: deregistering {id}: {status}");
    }
}

/// The proxy's count of usable Echo endpoints, if it answers.
async fn usable(proxy: &ProxyProcess) -> Option<usize> {
    let table = proxy.debug_table().await;
    table["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == ECHO)?["usable_endpoints"]
        .as_u64()
        .map(|n| n as usize)
}

/// eu-west's Echo nodes in the proxy's table, usable or marked down (a lost node has left
/// it): the region's members, which the proxy's spill rule counts.
async fn home_members(proxy: &ProxyProcess) -> usize {
    let table = proxy.debug_table().await;
    table["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == ECHO)
        .and_then(|s| s["endpoints"].as_array())
        .map_or(0, |endpoints| {
            endpoints
                .iter()
                .filter(|e| e["region"] == REGIONS[0].name && e["status"] != "lost")
                .count()
        })
}

/// What the proxy's table says of node `id`: its status, or that it left the table.
async fn node_state(proxy: &ProxyProcess, id: &str) -> &'static str {
    let table = proxy.debug_table().await;
    let status = table["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == ECHO)
        .and_then(|s| s["endpoints"].as_array())
        .and_then(|e| e.iter().find(|e| e["node"] == id))
        .map(|e| e["status"].as_str().unwrap_or_default().to_owned());
    match status.as_deref() {
        None => "left the table",
        Some("unhealthy") => "unhealthy",
        Some("lost") => "lost",
        Some("failed") => "failed",
        Some(_) => "another status",
    }
}

/// When (from now) the proxy's usable Echo endpoints fell below `before`, if within
/// `within`.
async fn verdict_within(proxy: &ProxyProcess, before: usize, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if usable(proxy).await.is_some_and(|n| n < before) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Waits (up to a minute) for the control plane's verdict: `count` usable endpoints.
async fn wait_usable(proxy: &ProxyProcess, count: usize) -> Result<(), BenchError> {
    let started = Instant::now();
    while usable(proxy).await != Some(count) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err(BenchError(format!(
                "{}: the table never showed {count} usable Echo endpoints after a node was killed",
                proxy.id
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// RouteMessage through `target` ([`ROUTE_MESSAGE_CALLS`] calls, `global_routing` set):
/// the share the routing decisions place in the proxy's region, and the calls answered.
async fn route_message_in_region(target: &str) -> Result<(f64, usize), BenchError> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_owned())
        .map(|e| e.tcp_nodelay(true))
        .map_err(|e| BenchError(format!("RouteMessage: {e}")))?
        .connect()
        .await
        .map_err(|e| BenchError(format!("RouteMessage: cannot connect to {target}: {e}")))?;
    let callers = (0..ROUTE_MESSAGE_CONCURRENCY).map(|c| {
        let mut router = MessageRouterClient::new(channel.clone());
        async move {
            let (mut home, mut answered) = (0, 0);
            for k in (c..ROUTE_MESSAGE_CALLS).step_by(ROUTE_MESSAGE_CONCURRENCY) {
                let message = pb::FederationMessage {
                    id: format!("geo-{k}"),
                    target_service: ECHO.into(),
                    global_routing: true,
                    ..Default::default()
                };
                let request = pb::RouteMessageRequest {
                    message: Some(message),
                };
                if let Ok(reply) = router.route_message(request).await {
                    answered += 1;
                    let region = reply.into_inner().decision.map(|d| d.target_region);
                    if region.as_deref() == Some(REGIONS[0].name) {
                        home += 1;
                    }
                }
            }
            (home, answered)
        }
    });
    let (home, answered) = futures::future::join_all(callers)
        .await
        .into_iter()
        .fold((0, 0), |(h, a), (home, answered)| (h + home, a + answered));
    Ok((home as f64 / answered.max(1) as f64, answered))
}

/// The share the rule spills out of the proxy's region with `up` of its
/// [`NODES_PER_REGION`] nodes ready.
fn expected_spill(up: usize) -> f64 {
    spill_over(up, NODES_PER_REGION)
}

/// The share the rule spills with `up` ready of `total` counted.
fn spill_over(up: usize, total: usize) -> f64 {
    let factor = f64::from(FailoverPolicy::default().effective_overprovisioning_percent()) / 100.0;
    1.0 - (factor * up as f64 / total.max(1) as f64).min(1.0)
}

/// The share the rule spills as the proxy applies it: over the region's `members` in its
/// table (up, or marked down by the control plane; not those that left it).
fn table_spill(up: usize, members: usize) -> f64 {
    spill_over(up, members)
}

fn render(rows: &[Row], networks: &RegionNetworks, args: &RoutingBenchArgs) -> String {
    let delay = match networks.delay() {
        Ok(d) => format!(
            "netem {} ms ± {} ms one way between regions",
            d.as_millis(),
            JITTER.as_millis()
        ),
        Err(why) => format!("**no delay between regions: {why}**"),
    };
    let mut out = format!(
        "{TITLE}Regions eu-west (the proxy's), us-east, ap-south, each a network namespace with 3 demo nodes of {} ms (self-registered in their region); {delay}; {} closed-loop clients on the bridge calling the eu-west proxy; policy defaults (locality by default, `global_routing` off) apart from the algorithm. eu-west's nodes are killed one by one; each loss is measured while only the proxy knows (its breakers), then after the control plane's health verdict reached the proxy's table ({} s windows, after {} s of warm-up where the load starts afresh). \"rule (3 nodes)\": the share the overprovisioning rule spills (factor 1.4: a region keeps min(100 %, 1.4 × ready / total) and the rest goes to the nearest other region) counting the region's 3 nodes, as Envoy counts every host of a priority, healthy or not; \"rule (table's members)\": the same over the region's nodes in the proxy's table, up or marked down by the control plane (the proxy's count; a node whose lease lapsed leaves the table, so the leases here outlast the round). RouteMessage: {ROUTE_MESSAGE_CALLS} calls with `global_routing` set on the message.\n\n",
        SERVICE_MS * args.time_scale,
        args.clients,
        args.seconds,
        args.warmup,
    );
    out.push_str("| algorithm | eu-west nodes up | measured | calls/s | errors | in-region | spilled | rule (3 nodes) | rule (table's members) | to us-east / ap-south | p50 ms | p99 ms | RouteMessage in-region |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let when = match r.when {
            When::Healthy => "healthy".to_owned(),
            When::ProxyOnly(s) => format!("proxy only ({s:.0} s)"),
            When::AfterVerdict(state) => format!("after the verdict ({state})"),
        };
        let route_message = r.route_message.map_or("–".to_owned(), |(share, answered)| {
            format!("{:.1} % of {answered}", 100.0 * share)
        });
        let _ = writeln!(
            out,
            "| {} | {} of 3 | {when} | {:.0} | {} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} % / {:.1} % | {:.2} | {:.2} | {route_message} |",
            r.algorithm,
            r.up,
            r.figures.throughput,
            r.figures.errors,
            100.0 * r.regions[0],
            100.0 * (1.0 - r.regions[0]),
            100.0 * expected_spill(r.up),
            100.0 * table_spill(r.up, r.members),
            100.0 * r.regions[1],
            100.0 * r.regions[2],
            r.figures.p50_ms,
            r.figures.p99_ms,
        );
    }
    out.push('\n');
    let mut algorithms: Vec<&str> = rows.iter().map(|r| r.algorithm).collect();
    algorithms.dedup();
    for algorithm in algorithms {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.algorithm == algorithm).collect();
        if let Some(healthy) = mine.iter().find(|r| r.when == When::Healthy) {
            let rm = healthy.route_message.map_or(1.0, |(share, _)| share);
            out.push_str(&goal(
                &format!("{algorithm}: ≥ 99 % in-region while healthy"),
                healthy.regions[0] >= 0.99 && rm >= 0.99,
                format!(
                    "forwarded {:.2} %, RouteMessage {:.2} %",
                    100.0 * healthy.regions[0],
                    100.0 * rm
                ),
            ));
        }
        let losses: Vec<&&Row> = mine.iter().filter(|r| r.when != When::Healthy).collect();
        let off: Vec<String> = losses
            .iter()
            .filter(|r| {
                (100.0 * ((1.0 - r.regions[0]) - expected_spill(r.up))).abs() > SPILL_MARGIN
            })
            .map(|r| {
                format!(
                    "{} up {}: {:.1} % vs {:.1} %",
                    r.up,
                    match r.when {
                        When::AfterVerdict(_) => "after the verdict",
                        _ => "proxy only",
                    },
                    100.0 * (1.0 - r.regions[0]),
                    100.0 * expected_spill(r.up)
                )
            })
            .collect();
        out.push_str(&goal(
            &format!(
                "{algorithm}: spill as the overprovisioning rule says (± {SPILL_MARGIN} points)"
            ),
            off.is_empty() && !losses.is_empty(),
            if off.is_empty() {
                format!("{} measurements within the margin", losses.len())
            } else {
                format!("{} of {} off: {}", off.len(), losses.len(), off.join("; "))
            },
        ));
        let all_lost = mine
            .iter()
            .find(|r| r.up == 0 && matches!(r.when, When::AfterVerdict(_)));
        if let (Some(healthy), Some(lost)) =
            (mine.iter().find(|r| r.when == When::Healthy), all_lost)
        {
            let added = lost.figures.p50_ms - healthy.figures.p50_ms;
            match networks.delay() {
                Ok(d) => out.push_str(&format!(
                    "- {algorithm}: crossing regions adds {added:.1} ms at p50 ({:.1} ms → {:.1} ms; the round trip between regions is {} ms)\n",
                    healthy.figures.p50_ms,
                    lost.figures.p50_ms,
                    2 * d.as_millis()
                )),
                // A measurement, not a goal: say it could not be taken, and why.
                Err(why) => out.push_str(&format!(
                    "- **not measured** {algorithm}: the added latency of crossing regions: {why}; without a delay the p50 goes {:.2} ms → {:.2} ms\n",
                    healthy.figures.p50_ms,
                    lost.figures.p50_ms,
                )),
            }
        }
    }
    let far: Vec<String> = rows
        .iter()
        .filter(|r| r.regions[2] > 0.01)
        .map(|r| format!("{} {} up: {:.1} %", r.algorithm, r.up, 100.0 * r.regions[2]))
        .collect();
    out.push_str(&goal(
        "the spill goes to the nearest other region (us-east), none to ap-south while us-east can take it",
        far.is_empty(),
        if far.is_empty() {
            "ap-south ≤ 1 % in every row".to_owned()
        } else {
            format!("ap-south above 1 %: {}", far.join("; "))
        },
    ));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::{expected_spill, table_spill};

    fn percent(share: f64) -> f64 {
        (1000.0 * share).round() / 10.0
    }

    #[test]
    fn the_rule_spills_nothing_healthy_and_everything_with_no_node() {
        assert_eq!(percent(expected_spill(3)), 0.0);
        assert_eq!(percent(expected_spill(2)), 6.7);
        assert_eq!(percent(expected_spill(1)), 53.3);
        assert_eq!(percent(expected_spill(0)), 100.0);
    }

    #[test]
    fn over_the_tables_members_a_node_that_left_the_table_does_not_count() {
        // Marked down, still a member: as over the region's three nodes.
        assert_eq!(percent(table_spill(1, 3)), 53.3);
        // The first loss left the table (its lease lapsed): over the two left.
        assert_eq!(percent(table_spill(1, 2)), 30.0);
        assert_eq!(percent(table_spill(1, 1)), 0.0);
        assert_eq!(percent(table_spill(0, 3)), 100.0);
    }
}
