//! A whole federation on loopback for end-to-end tests: real etcd, a real control plane,
//! real demo nodes and real proxies, all processes. Federation `prod` has three regions at
//! real coordinates: `eu-west` (Dublin; zones eu-west-a, eu-west-b), `us-east`
//! (Washington; us-east-a) and `ap-south` (Mumbai; ap-south-a).

use std::time::Duration;

use meridian_proto::v1 as pb;
use tempfile::TempDir;

use crate::EtcdCluster;
use crate::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized,
};
use crate::demo_node::process::DemoNodeProcess;
use crate::proxy::{ProxyOptions, ProxyProcess};

/// The sample service every demo node serves.
pub const ECHO: &str = "demo.v1.Echo";

pub struct Cluster {
    pub etcd: EtcdCluster,
    pub cp: ControlPlaneProcess,
    pub dir: TempDir,
}

impl Cluster {
    pub async fn start() -> Self {
        Self::start_with(&ExtraSettings::default()).await
    }

    /// Like [`Cluster::start`], the control plane started with `extra` settings.
    pub async fn start_with(extra: &ExtraSettings) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let etcd = EtcdCluster::single().await.expect("starting etcd");
        let options = ControlPlaneOptions {
            etcd_endpoints: &etcd.endpoints(),
            prefix: "/meridian/",
            replica: "cp-a",
            election_ttl_seconds: 5,
            dir: dir.path(),
        };
        let cp = ControlPlaneProcess::start_with(options, extra).await;
        let cluster = Cluster { etcd, cp, dir };
        cluster.seed().await;
        cluster
    }

    async fn seed(&self) {
        for (name, location, zones) in [
            ("eu-west", (53.35, -6.26), &["eu-west-a", "eu-west-b"][..]),
            ("us-east", (38.9, -77.04), &["us-east-a"][..]),
            ("ap-south", (19.08, 72.88), &["ap-south-a"][..]),
        ] {
            self.cp.create_region("prod", name, location, zones).await;
        }
    }

    /// Starts a demo node and registers it (operator registration) in `region`/`zone`.
    pub async fn node(
        &self,
        id: &str,
        region: &str,
        zone: &str,
        weight: u32,
        args: &[&str],
    ) -> DemoNodeProcess {
        let node =
            DemoNodeProcess::start(id, args, &self.dir.path().join(format!("{id}.log"))).await;
        self.register(pb::Node {
            id: id.into(),
            address: node.addr.to_string(),
            federation: "prod".into(),
            region: region.into(),
            zone: zone.into(),
            services: vec![ECHO.into()],
            weight,
            ..Default::default()
        })
        .await;
        node
    }

    pub async fn register(&self, node: pb::Node) {
        let request = pb::RegisterNodeRequest {
            node: Some(node),
            replace: true,
        };
        self.cp
            .admin()
            .await
            .register_node(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("registering a node");
    }

    pub async fn drain(&self, id: &str) {
        let request = pb::DrainNodeRequest {
            id: id.into(),
            reason: "test".into(),
        };
        self.cp
            .admin()
            .await
            .drain_node(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("draining a node");
    }

    pub async fn deregister(&self, id: &str) {
        let request = pb::DeregisterNodeRequest { id: id.into() };
        self.cp
            .admin()
            .await
            .deregister_node(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("deregistering a node");
    }

    /// Creates or replaces a service policy.
    pub async fn set_policy(&self, policy: pb::ServicePolicy) {
        let request = pb::UpsertServicePolicyRequest {
            policy: Some(policy),
        };
        self.cp
            .admin()
            .await
            .upsert_service_policy(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("setting a service policy");
    }

    /// Sets `demo.v1.Echo`'s algorithm (and consistent-hash header), all else default.
    pub async fn echo_policy(&self, algorithm: pb::Algorithm, hash_header: &str) {
        self.set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            algorithm: algorithm.into(),
            hash: Some(pb::HashPolicy {
                header: hash_header.into(),
            }),
            ..Default::default()
        })
        .await;
    }

    /// Starts a proxy in `region`/`zone` and waits until it has a table.
    pub async fn proxy(&self, id: &str, region: &str, zone: &str) -> ProxyProcess {
        self.proxy_with_args(id, region, zone, &[]).await
    }

    /// Like [`Cluster::proxy`], with more command-line arguments.
    pub async fn proxy_with_args(
        &self,
        id: &str,
        region: &str,
        zone: &str,
        extra_args: &[&str],
    ) -> ProxyProcess {
        let options = ProxyOptions {
            id,
            federation: "prod",
            region,
            zone,
            control_planes: &[self.cp.url()],
            dir: self.dir.path(),
            ports: None,
        };
        let proxy = ProxyProcess::start_with_args(options, extra_args).await;
        proxy.wait_ready(Duration::from_secs(20)).await;
        proxy
    }
}

/// Waits until the proxy's table lists `count` usable endpoints for demo.v1.Echo.
pub async fn wait_usable(proxy: &ProxyProcess, count: usize) {
    proxy
        .wait_table(Duration::from_secs(20), "usable Echo endpoints", |t| {
            t["services"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"] == ECHO)
                .is_some_and(|s| s["usable_endpoints"] == count)
        })
        .await;
}

/// Waits until the proxy's table lists `count` Echo endpoints, all healthy and warm: the
/// state a measurement of balancing or failure handling must start from. A node starts
/// with status unknown, and the control plane's first health verdict (seconds after it
/// registers) changes the node in the table (its endpoint's connection, breaker and
/// latency estimate carry on, but the service gets a fresh retry budget). And a node that
/// reached the proxy after its first table ramps up over the slow-start window (10 s).
pub async fn wait_steady(proxy: &ProxyProcess, count: usize) {
    proxy
        .wait_table(
            Duration::from_secs(40),
            "healthy, warm Echo endpoints",
            |t| {
                t["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|s| s["name"] == ECHO)
                    .and_then(|s| s["endpoints"].as_array())
                    .is_some_and(|e| {
                        e.len() == count
                            && e.iter().all(|e| {
                                e["status"] == "healthy" && e["warmth"].as_f64() == Some(1.0)
                            })
                    })
            },
        )
        .await;
}

/// The node named by a response's `x-meridian-node` header.
pub fn served_by<T>(response: &tonic::Response<T>) -> String {
    response
        .metadata()
        .get("x-meridian-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<none>")
        .to_owned()
}

/// `calls` Echo calls through `proxy` from `workers` concurrent clients; how many each
/// node served. Counted, not timed, so a loaded machine only makes it slower.
pub async fn echo_calls_per_node(
    proxy: &tonic::transport::Channel,
    workers: usize,
    calls: usize,
) -> std::collections::BTreeMap<String, usize> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use meridian_proto::demo::v1 as demo;
    use meridian_proto::demo::v1::echo_client::EchoClient;

    let left = Arc::new(AtomicUsize::new(calls));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let mut client = EchoClient::new(proxy.clone());
            let left = Arc::clone(&left);
            tokio::spawn(async move {
                let mut served = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let request = demo::SayRequest {
                        text: "hi".into(),
                        ..Default::default()
                    };
                    let reply = client.say(request).await.expect("call through the proxy");
                    served.push(served_by(&reply));
                }
                served
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for task in tasks {
        for node in task.await.expect("a load task") {
            *counts.entry(node).or_insert(0) += 1;
        }
    }
    counts
}

/// The share of `counts` (calls per node) that `node` served, 0 to 1.
pub fn share(counts: &std::collections::BTreeMap<String, usize>, node: &str) -> f64 {
    let total: usize = counts.values().sum();
    counts.get(node).copied().unwrap_or(0) as f64 / total.max(1) as f64
}

/// One RouteMessage call (message id `m`) to Echo; the reply, or the status.
pub async fn route_to_echo(
    router: &mut meridian_proto::v1::message_router_client::MessageRouterClient<
        tonic::transport::Channel,
    >,
) -> Result<pb::RouteMessageResponse, tonic::Status> {
    let message = pb::FederationMessage {
        id: "m".into(),
        target_service: ECHO.into(),
        ..Default::default()
    };
    router
        .route_message(pb::RouteMessageRequest {
            message: Some(message),
        })
        .await
        .map(tonic::Response::into_inner)
}
