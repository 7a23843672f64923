//! The **shared** scenario: two proxies share three equal nodes, and the load one proxy
//! cannot see is what decides where its calls should go. A busy proxy carries most of the
//! traffic, all of it to one node (`demo.v1.EchoHot`, a second service only that node
//! serves, so its calls queue there: more callers than the node has workers). A measured
//! proxy sends a lighter `demo.v1.Echo` load over all three; the best it can do is to
//! leave the busy node alone. Each cell runs the measured proxy with one policy: round
//! robin and least connections (blind to the other proxy), adaptive with what comes back
//! in ORCA trailers, adaptive with the out-of-band ORCA stream, and adaptive with Prequal
//! probes; "best possible" is the two idle nodes alone.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::v1 as pb;
use tokio::time::Instant;

use super::closed_loop::ClosedLoop;
use super::report::{CellFigures, table};
use super::{BenchError, RoutingBenchArgs};
use crate::cluster::{Cluster, ECHO, wait_steady};
use crate::demo_node::process::DemoNodeProcess;

/// The service only the busy node serves, answered by its Echo.
const HOT: &str = "demo.v1.EchoHot";
/// The nodes: the one the busy proxy loads, then the two it leaves alone.
const NODES: [&str; 3] = ["shared-busy", "shared-1", "shared-2"];
/// Each node's workers, and the busy proxy's closed-loop callers (more than the busy
/// node's workers, so its calls queue).
const WORKERS: u32 = 4;
const BUSY_CALLERS: usize = 6;
/// The measured proxy's callers (the two idle nodes' workers take them all).
const MEASURED_CALLERS: usize = 4;

/// The measured proxy's policies, one cell each.
fn policies() -> Vec<(&'static str, pb::Algorithm, pb::AdaptivePolicy)> {
    let adaptive = pb::AdaptivePolicy::default();
    vec![
        ("round_robin", pb::Algorithm::RoundRobin, adaptive),
        (
            "least_connections",
            pb::Algorithm::LeastConnections,
            adaptive,
        ),
        (
            "adaptive (ORCA trailers)",
            pb::Algorithm::Adaptive,
            adaptive,
        ),
        (
            "adaptive + ORCA stream 200 ms",
            pb::Algorithm::Adaptive,
            pb::AdaptivePolicy {
                oob_report_interval_ms: 200,
                ..adaptive
            },
        ),
        (
            "adaptive + probes 0.25/call",
            pb::Algorithm::Adaptive,
            pb::AdaptivePolicy {
                probes_per_call: 0.25,
                probe_idle_interval_ms: 200,
                ..adaptive
            },
        ),
    ]
}

/// Runs the scenario; its report (markdown).
pub async fn shared_nodes(
    cluster: &Cluster,
    args: &RoutingBenchArgs,
) -> Result<String, BenchError> {
    let latency = (5 * args.time_scale).to_string();
    let workers = WORKERS.to_string();
    let mut nodes = Vec::new();
    for (i, id) in NODES.iter().enumerate() {
        let mut flags = vec![
            "--latency-ms",
            &latency,
            "--workers",
            &workers,
            "--capacity",
            &workers,
        ];
        if i == 0 {
            flags.extend(["--echo-alias", HOT]);
        }
        let log = cluster.dir.path().join(format!("{id}.log"));
        let node = DemoNodeProcess::start(id, &flags, &log).await;
        register(cluster, id, &node, i == 0).await;
        nodes.push(node);
    }
    let busy = cluster
        .proxy("shared-busy-proxy", "eu-west", "eu-west-a")
        .await;
    let busy_url = busy.url();
    let names: Vec<String> = NODES.iter().map(|n| (*n).to_owned()).collect();
    let warmup = Duration::from_secs_f64(args.warmup);
    let total = warmup + Duration::from_secs_f64(args.seconds);
    let mut cells = Vec::new();
    for (label, algorithm, adaptive) in policies() {
        cluster
            .set_policy(pb::ServicePolicy {
                name: ECHO.into(),
                federation: "prod".into(),
                algorithm: algorithm.into(),
                adaptive: Some(adaptive),
                ..Default::default()
            })
            .await;
        let id = format!("shared-{}", cells.len());
        let measured = cluster.proxy(&id, "eu-west", "eu-west-a").await;
        wait_steady(&measured, NODES.len()).await;
        let load = ClosedLoop {
            target: measured.url(),
            clients: MEASURED_CALLERS,
            connections: 2,
            duration: total,
            nodes: &names,
        };
        let (samples, busy_calls) =
            tokio::join!(load.run(), busy_load(&busy_url, BUSY_CALLERS, total));
        let samples =
            samples.map_err(|e| BenchError(format!("{id}: cannot load the proxy: {e}")))?;
        eprintln!(
            "routing-bench: {id} ({label}): {} calls, the busy proxy {busy_calls}",
            samples.len()
        );
        cells.push(CellFigures::over(label, &samples, 3, warmup, total));
    }
    // Best possible: the busy node out of the measured proxy's way.
    cluster.deregister(NODES[0]).await;
    cluster
        .echo_policy(pb::Algorithm::LeastConnections, "")
        .await;
    let measured = cluster.proxy("shared-best", "eu-west", "eu-west-a").await;
    wait_steady(&measured, 2).await;
    let load = ClosedLoop {
        target: measured.url(),
        clients: MEASURED_CALLERS,
        connections: 2,
        duration: total,
        nodes: &names[1..],
    };
    let samples = load
        .run()
        .await
        .map_err(|e| BenchError(format!("shared-best: cannot load the proxy: {e}")))?;
    let mut best = CellFigures::over(
        "best possible: the idle nodes alone",
        &samples,
        2,
        warmup,
        total,
    );
    best.shares.insert(0, 0.0);
    cells.push(best);
    for id in &NODES[1..] {
        cluster.deregister(id).await;
    }

    let mut out = format!(
        "### Two proxies sharing the nodes\n\nThree nodes of 5 ms (× {}), {WORKERS} workers each. A busy proxy carries {BUSY_CALLERS} closed-loop callers, all to `shared-busy` (a service only it serves), so calls queue there; the measured proxy carries {MEASURED_CALLERS} callers of `demo.v1.Echo` over all three. {:.0} s per policy after {:.0} s of warm-up; figures are the measured proxy's.\n\n",
        args.time_scale, args.seconds, args.warmup
    );
    out.push_str(&table(&cells, &names, &[0]));
    out.push('\n');
    Ok(out)
}

/// Registers a node of the scenario: `demo.v1.Echo`, and [`HOT`] for the busy one.
async fn register(cluster: &Cluster, id: &str, node: &DemoNodeProcess, hot: bool) {
    let mut services = vec![ECHO.to_owned()];
    if hot {
        services.push(HOT.to_owned());
    }
    cluster
        .register(pb::Node {
            id: id.into(),
            address: node.addr.to_string(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            services,
            weight: 1,
            ..Default::default()
        })
        .await;
}

/// `callers` closed-loop callers of `HOT/Say` through `target` for `duration`; the calls
/// answered.
async fn busy_load(target: &str, callers: usize, duration: Duration) -> usize {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(target.to_owned()) else {
        return 0;
    };
    let Ok(channel) = channel.connect().await else {
        return 0;
    };
    let until = Instant::now() + duration;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            tokio::spawn(async move {
                let mut answered = 0;
                let path = http::uri::PathAndQuery::from_static("/demo.v1.EchoHot/Say");
                while Instant::now() < until {
                    if grpc.ready().await.is_err() {
                        break;
                    }
                    let request = tonic::Request::new(demo::SayRequest {
                        text: "busy".into(),
                        ..Default::default()
                    });
                    let codec =
                        tonic_prost::ProstCodec::<demo::SayRequest, demo::SayReply>::default();
                    if grpc.unary(request, path.clone(), codec).await.is_ok() {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap_or(0);
    }
    answered
}
