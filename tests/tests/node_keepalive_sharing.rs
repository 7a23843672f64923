//! Keep-alives of self-registered nodes, on real control planes on real etcd: the nodes a
//! replica holds share its store lease, so their keep-alives cost etcd nothing each; a
//! node whose keep-alives move to another replica survives the death of the first one;
//! and an operator's drain outlives the node's lease and its registering again.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::node_registry_client::NodeRegistryClient;
use meridian_shared::credentials::BearerAuth;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, NODE_TOKEN, OPERATOR_TOKEN, authorized, bearer,
    channel,
};
use meridian_tests::etcd::EtcdCluster;
use meridian_tests::http;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const PREFIX: &str = "/keepalive-test/";
const TTL_SECONDS: u32 = 5;

type Registry = NodeRegistryClient<InterceptedService<Channel, BearerAuth>>;

async fn registry(cp: &ControlPlaneProcess) -> Registry {
    NodeRegistryClient::with_interceptor(channel(&cp.url()).await, bearer(NODE_TOKEN))
}

fn node(id: &str) -> pb::Node {
    pb::Node {
        id: id.into(),
        address: "127.0.0.1:9401".into(),
        federation: "prod".into(),
        region: "eu-west".into(),
        zone: "eu-west-a".into(),
        services: vec!["demo.v1.Echo".into()],
        ..Default::default()
    }
}

async fn start_control_plane(
    etcd: &EtcdCluster,
    dir: &std::path::Path,
    replica: &str,
) -> ControlPlaneProcess {
    ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix: PREFIX,
        replica,
        election_ttl_seconds: 5,
        dir,
    })
    .await
}

async fn register(registry: &mut Registry, id: &str) -> i64 {
    registry
        .register(pb::RegisterRequest {
            node: Some(node(id)),
            ttl_seconds: TTL_SECONDS,
        })
        .await
        .unwrap_or_else(|e| panic!("registering {id}: {e:?}"))
        .into_inner()
        .lease_id
}

/// An open keep-alive stream of one node.
struct KeepAlive {
    id: String,
    lease: i64,
    requests: mpsc::Sender<pb::KeepAliveRequest>,
    answers: Streaming<pb::KeepAliveResponse>,
}

impl KeepAlive {
    async fn open(registry: &mut Registry, id: &str, lease: i64) -> Self {
        let (requests, outbound) = mpsc::channel(1);
        let answers = registry
            .keep_alive(ReceiverStream::new(outbound))
            .await
            .expect("opening a keep-alive stream")
            .into_inner();
        KeepAlive {
            id: id.into(),
            lease,
            requests,
            answers,
        }
    }

    /// One keep-alive; panics unless the control plane renewed it.
    async fn send(&mut self) {
        let request = pb::KeepAliveRequest {
            node_id: self.id.clone(),
            lease_id: self.lease,
        };
        self.requests.send(request).await.expect("stream open");
        let answer = self.answers.message().await;
        match answer {
            Ok(Some(answer)) => assert_eq!(answer.ttl_seconds, TTL_SECONDS, "{}", self.id),
            other => panic!("keep-alive of {} refused: {other:?}", self.id),
        }
    }
}

/// Keep-alive messages etcd has received (its own gRPC server metrics).
async fn etcd_lease_keep_alives(etcd: &EtcdCluster) -> f64 {
    let url = etcd.endpoint(0);
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("an http://host:port etcd URL");
    let (status, body) = http::get(addr, "/metrics").await.expect("etcd /metrics");
    assert_eq!(status, 200, "{body}");
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("grpc_server_msg_received_total{")
                && l.contains("grpc_method=\"LeaseKeepAlive\"")
        })
        .unwrap_or_else(|| panic!("etcd reports no LeaseKeepAlive message count:\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn status_of(cp: &ControlPlaneProcess, id: &str) -> Option<pb::NodeStatus> {
    listed(cp, id).await.map(|n| n.status())
}

async fn listed(cp: &ControlPlaneProcess, id: &str) -> Option<pb::Node> {
    cp.admin()
        .await
        .list_nodes(authorized(pb::ListNodesRequest::default(), OPERATOR_TOKEN))
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.id == id)
}

#[tokio::test]
async fn keep_alives_of_many_nodes_cost_etcd_no_call_each() {
    const NODES: usize = 40;
    const ROUNDS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = start_control_plane(&etcd, dir.path(), "cp-a").await;
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    let mut registry = registry(&cp).await;
    let mut streams = Vec::new();
    let mut leases = Vec::new();
    let mut last_round = tokio::time::Instant::now();
    for i in 0..NODES {
        let id = format!("self-{i}");
        let lease = register(&mut registry, &id).await;
        leases.push(lease);
        // Kept alive from the start: registering 40 nodes can take longer than the TTL
        // on a busy machine.
        let mut stream = KeepAlive::open(&mut registry, &id, lease).await;
        stream.send().await;
        streams.push(stream);
        if last_round.elapsed() > Duration::from_secs(1) {
            for stream in &mut streams {
                stream.send().await;
            }
            last_round = tokio::time::Instant::now();
        }
    }
    leases.dedup();
    assert_eq!(
        leases.len(),
        1,
        "nodes of one TTL share the replica's lease"
    );

    let before = etcd_lease_keep_alives(&etcd).await;
    // Every node keeps alive once a second (more often than it needs to) for 6 s: with a
    // lease per node, etcd would receive NODES × ROUNDS = 240 keep-alives.
    for _ in 0..ROUNDS {
        let round = tokio::time::Instant::now();
        for stream in &mut streams {
            stream.send().await;
        }
        tokio::time::sleep_until(round + Duration::from_secs(1)).await;
    }
    let sent = etcd_lease_keep_alives(&etcd).await - before;
    // What remains is the control plane's own leases: the shared one (every 5/3 s), the
    // replica's and the election's.
    assert!(
        sent < NODES as f64,
        "{sent} keep-alives reached etcd for {} node keep-alives",
        NODES * ROUNDS
    );
    for i in 0..NODES {
        let id = format!("self-{i}");
        let status = status_of(&cp, &id).await;
        assert!(
            status.is_some_and(|s| s != pb::NodeStatus::Lost),
            "{id} is kept alive: {status:?}"
        );
    }
}

#[tokio::test]
async fn a_node_whose_keep_alives_move_survives_the_death_of_the_replica_it_registered_with() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let mut first = start_control_plane(&etcd, dir.path(), "cp-a").await;
    let second = start_control_plane(&etcd, dir.path(), "cp-b").await;
    first.slow_health_checks().await;
    first
        .create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    let lease = register(&mut registry(&first).await, "self-1").await;

    // The node's keep-alives now reach cp-b (say, a load balancer moved its connection),
    // then cp-a dies: its lease, which the node's key was on, runs out within the TTL.
    let mut keep_alive = KeepAlive::open(&mut registry(&second).await, "self-1", lease).await;
    keep_alive.send().await;
    first.process.kill();
    let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(TTL_SECONDS) * 3);
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        keep_alive.send().await;
    }
    let status = status_of(&second, "self-1").await;
    assert!(
        status.is_some_and(|s| s != pb::NodeStatus::Lost),
        "self-1 kept alive through cp-b outlives cp-a's lease: {status:?}"
    );
    let mut client = etcd.client().await;
    let key = client
        .get(format!("{PREFIX}v1/liveness/self-1"), None)
        .await
        .expect("reading the liveness key");
    let kv = key.kvs().first().expect("self-1 is live");
    assert!(
        kv.value_str().unwrap().contains("\"held_by\":\"cp-b\""),
        "cp-b holds self-1: {:?}",
        kv.value_str()
    );
}

#[tokio::test]
async fn a_drained_node_stays_drained_when_its_lease_lapses_and_it_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = start_control_plane(&etcd, dir.path(), "cp-a").await;
    cp.slow_health_checks().await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    let mut registry = registry(&cp).await;
    register(&mut registry, "drained-1").await;
    register(&mut registry, "plain-1").await;
    cp.admin()
        .await
        .drain_node(authorized(
            pb::DrainNodeRequest {
                id: "drained-1".into(),
                reason: "replacing its disk".into(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("draining drained-1");

    // No keep-alives: both leases lapse. plain-1 turning lost shows the expiry pass ran
    // over both (the store drops both liveness keys with the shared lease).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut liveness = etcd.client().await;
    loop {
        let drained_live = liveness
            .get(format!("{PREFIX}v1/liveness/drained-1"), None)
            .await
            .expect("reading drained-1's liveness key")
            .count();
        if drained_live == 0 && status_of(&cp, "plain-1").await == Some(pb::NodeStatus::Lost) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "leases did not lapse within 60 s: drained-1 liveness keys {drained_live}, plain-1 {:?}",
            status_of(&cp, "plain-1").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = listed(&cp, "drained-1").await.expect("drained-1 listed");
    assert_eq!(
        drained.status(),
        pb::NodeStatus::Draining,
        "a lapsed lease does not undo a drain: {drained:?}"
    );

    // Registering again (a restarted process) keeps the drain and its reason; a node
    // that was not held comes back routable.
    register(&mut registry, "drained-1").await;
    register(&mut registry, "plain-1").await;
    let drained = listed(&cp, "drained-1").await.expect("drained-1 listed");
    assert_eq!(
        (drained.status(), drained.status_reason.as_str()),
        (pb::NodeStatus::Draining, "replacing its disk"),
        "registering again keeps the operator's drain: {drained:?}"
    );
    assert_eq!(
        status_of(&cp, "plain-1").await,
        Some(pb::NodeStatus::Unspecified),
        "a lost node that registers again is routable"
    );
}
