//! A federation at its limits loads in a restarted control plane and reaches a proxy.
//!
//! The federation holds `max_nodes_per_federation` (10,000) nodes, each as large as
//! validation lets a node be under the default `TopologyLimits`: a 63-byte id, region
//! and zone; a 253-byte host name with a 5-digit port (a federation without
//! `allowed_networks` takes host names, and a name is the longest address); 16 services of
//! 255 bytes; 16 labels with 63-byte keys and 255-byte values; the highest weight and
//! capacity; and a 1,024-byte status reason, written by draining the node. Draining also
//! keeps the leader's health checker off the nodes, so nothing rewrites them mid-test.
//!
//! How the federation is filled: the first [`ADMIN_NODES`] nodes are registered and
//! drained through the Admin API, as an operator would, 64 calls in flight. All 10,000
//! that way took far too long for a test (about 20 minutes on a 2-core machine with debug
//! builds, measured while every event still went through one counter key; not measured
//! since events are appended without it). So the control plane is then stopped (SIGTERM)
//! and the rest are written straight into etcd, in batched transactions, exactly as the
//! control plane stores them:
//! the domain `Node` at `keys::Keys::key(Kind::Node, id)`, encoded with `keys::encode`,
//! each first passed through `validate::node` against the stored federation and region.
//! The test checks that encoding against a node the control plane wrote itself.
//!
//! Then a new control plane starts on the same etcd and prefix (the restart): it must load
//! the topology (through paged reads, as the store is far over a gRPC response's default
//! size) and become ready, and a proxy must then receive a snapshot holding every node,
//! intact, all within [`LOAD_DEADLINE`] of the start.
//!
//! Timings are printed (`-- --nocapture`).

use std::collections::HashMap;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use etcd_client::{Txn, TxnOp};
use futures::{StreamExt, TryStreamExt};
use meridian_control_plane::keys::{self, Keys, Kind};
use meridian_control_plane::topology::validate::{self, MAX_CAPACITY, MAX_WEIGHT};
use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_shared::domain::limits::{ADDRESS_BYTES, NAME_BYTES, SERVICE_NAME_BYTES};
use meridian_shared::domain::{Federation, Node, Region, TopologyLimits};
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized,
};
use meridian_tests::http;
use meridian_tests::subscriber::{Subscriber, SubscriberView};
use prost::Message;
use tokio::time::Instant;
use tonic::transport::Channel;

const LIMITS: TopologyLimits = TopologyLimits::DEFAULT;
const PREFIX: &str = "/at-limits/";
const REPLICA: &str = "cp-a";
const FEDERATION: &str = "prod";
const ZONES: usize = 4;
/// Nodes registered and drained through the Admin API; the rest are written to etcd.
const ADMIN_NODES: usize = 256;
/// Admin calls in flight while registering.
const IN_FLIGHT: usize = 64;
/// Nodes per etcd transaction (about 1 MB: etcd takes at most 128 operations and
/// 1.5 MiB per request).
const NODES_PER_TXN: usize = 100;
/// From the restart until the proxy holds the whole table.
const LOAD_DEADLINE: Duration = Duration::from_secs(180);

fn nodes() -> usize {
    LIMITS.max_nodes_per_federation as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federation_of_maximal_nodes_loads_after_a_restart_and_reaches_a_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let endpoints = etcd.endpoints();
    let options = |dir| ControlPlaneOptions {
        etcd_endpoints: &endpoints,
        prefix: PREFIX,
        replica: REPLICA,
        election_ttl_seconds: 5,
        dir,
    };
    let first_dir = dir.path().join("first");
    std::fs::create_dir(&first_dir).unwrap();
    let mut first = ControlPlaneProcess::start(options(&first_dir)).await;
    first.slow_health_checks().await;
    let mut admin = first.admin().await;
    create_federation(&mut admin).await;

    let started = Instant::now();
    register_through_the_api(&admin, 0..ADMIN_NODES).await;
    let registration = started.elapsed();
    println!(
        "registered and drained {ADMIN_NODES} nodes through the Admin API in {registration:.1?} \
         ({:.1} nodes/s)",
        ADMIN_NODES as f64 / registration.as_secs_f64()
    );
    let status = first.process.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first control plane did not stop cleanly on SIGTERM ({status:?}); its output:\n{}",
        first.process.output()
    );

    let started = Instant::now();
    write_to_etcd(&etcd, ADMIN_NODES..nodes()).await;
    println!(
        "wrote {} more nodes straight into etcd in {:.1?}",
        nodes() - ADMIN_NODES,
        started.elapsed()
    );

    let restarted_at = Instant::now();
    let second_dir = dir.path().join("restarted");
    std::fs::create_dir(&second_dir).unwrap();
    let second = ControlPlaneProcess::launch(options(&second_dir), &ExtraSettings::default());
    let ready = http::wait_for_ok(second.http, "/ready", LOAD_DEADLINE).await;
    assert!(
        ready,
        "the restarted control plane was not ready within {LOAD_DEADLINE:?}; its output:\n{}",
        second.process.output()
    );
    println!("restart to ready: {:.1?}", restarted_at.elapsed());

    let subscribed_at = Instant::now();
    let proxy = Subscriber::start(&second.url(), "proxy-at-limits", FEDERATION, 0).await;
    let remaining = LOAD_DEADLINE.saturating_sub(restarted_at.elapsed());
    // Waits for the first update only: a view of 10,000 nodes is too large for a panic
    // message, so its content is checked below with short messages.
    let view = proxy
        .wait_until(remaining, "the proxy's first routing update", |v| {
            !v.received.is_empty() || v.ended.is_some()
        })
        .await;
    let to_snapshot = subscribed_at.elapsed();
    assert_eq!(view.ended, None, "the routing stream ended");
    assert_eq!(
        view.received[0].1, "snapshot",
        "a proxy holding nothing gets a snapshot first"
    );
    assert_eq!(
        view.nodes.len(),
        nodes(),
        "the snapshot must hold every node"
    );
    println!(
        "subscribe to snapshot: {to_snapshot:.1?}; restart to snapshot: {:.1?}",
        restarted_at.elapsed()
    );
    println!(
        "snapshot: {} bytes re-encoded (the bound for the default limits is {} bytes)",
        encoded_table_bytes(&view),
        LIMITS.max_routing_message_bytes()
    );
    if let Some(peak) = peak_memory(second.process.pid()) {
        println!("restarted control plane peak memory: {peak}");
    }

    // Nodes the API wrote and nodes written to etcd.
    for i in [
        0,
        ADMIN_NODES - 1,
        ADMIN_NODES,
        nodes() / 2 + 7,
        nodes() - 1,
    ] {
        let mut got = view.nodes[&node_id(i)].clone();
        assert!(got.status_since.is_some(), "node {i} has no status_since");
        got.status_since = None;
        assert!(
            got == stored(i),
            "node {i} did not come through intact: {got:?}"
        );
    }
}

// === Filling the federation ===

async fn create_federation(admin: &mut AdminClient<Channel>) {
    let federation = pb::Federation {
        name: FEDERATION.into(),
        ..Default::default()
    };
    let request = pb::UpsertFederationRequest {
        federation: Some(federation),
    };
    admin
        .upsert_federation(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("creating the federation");
    let region = pb::Region {
        name: region_name(),
        federation: FEDERATION.into(),
        location: Some(pb::GeoPoint {
            latitude: 52.37,
            longitude: 4.90,
        }),
        zones: (0..ZONES).map(zone_name).collect(),
        ..Default::default()
    };
    let request = pb::UpsertRegionRequest {
        region: Some(region),
    };
    admin
        .upsert_region(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("creating the region");
}

/// Registers and drains nodes `range`; the first alone, to show the API takes a node at
/// every limit and returns it unchanged.
async fn register_through_the_api(admin: &AdminClient<Channel>, range: Range<usize>) {
    let first = range.start;
    let node = node(first);
    assert_eq!(node.id.len() as u64, NAME_BYTES);
    assert_eq!(node.region.len() as u64, NAME_BYTES);
    assert_eq!(node.zone.len() as u64, NAME_BYTES);
    assert_eq!(node.address.len() as u64, ADDRESS_BYTES);
    assert_eq!(node.services.len(), LIMITS.max_services_per_node as usize);
    assert!(
        node.services
            .iter()
            .all(|s| s.len() as u64 == SERVICE_NAME_BYTES)
    );
    assert_eq!(node.labels.len(), LIMITS.max_labels as usize);
    assert!(node.labels.iter().all(|(k, v)| {
        k.len() == LIMITS.max_label_key_bytes as usize
            && v.len() == LIMITS.max_label_value_bytes as usize
    }));
    assert_eq!(reason(first).len(), LIMITS.max_text_bytes as usize);

    let mut registered = register(admin.clone(), first)
        .await
        .unwrap_or_else(|e| panic!("a node at every limit must be valid: {e}"));
    registered.status_since = None;
    registered.registration = 0;
    assert_eq!(
        registered, node,
        "the registered node differs from the request"
    );
    let mut drained = drain(admin.clone(), first)
        .await
        .unwrap_or_else(|e| panic!("a reason of max_text_bytes must be valid: {e}"));
    drained.status_since = None;
    assert_eq!(drained, stored(first));
    println!(
        "one node: {} bytes encoded (the bound for the default limits is {} bytes)",
        drained.encoded_len(),
        LIMITS.max_node_bytes()
    );

    futures::stream::iter(first + 1..range.end)
        .map(|i| {
            let admin = admin.clone();
            async move {
                register(admin.clone(), i).await?;
                drain(admin, i).await.map(drop)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await
        .unwrap_or_else(|e| panic!("registering through the Admin API: {e}"));
}

async fn register(mut admin: AdminClient<Channel>, i: usize) -> Result<pb::Node, String> {
    let request = pb::RegisterNodeRequest {
        node: Some(node(i)),
        replace: false,
    };
    admin
        .register_node(authorized(request, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("registering node {i}: {e}"))
}

async fn drain(mut admin: AdminClient<Channel>, i: usize) -> Result<pb::Node, String> {
    let request = pb::DrainNodeRequest {
        id: node_id(i),
        reason: reason(i),
    };
    admin
        .drain_node(authorized(request, OPERATOR_TOKEN))
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| format!("draining node {i}: {e}"))
}

/// Writes nodes `range` as the control plane stores them, each validated first against
/// the federation and region as stored. Node 0, which the control plane wrote, must read
/// back as this test builds it: the proof that both encode alike.
async fn write_to_etcd(etcd: &EtcdCluster, range: Range<usize>) {
    let keys = Keys::new(PREFIX);
    let mut client = etcd.client().await;
    let key = keys.key(Kind::Federation, FEDERATION);
    let federation: Federation =
        keys::decode(&key, &value_of(&mut client, &key).await).expect("the stored federation");
    let key = keys.key(Kind::Region, &region_name());
    let region: Region =
        keys::decode(&key, &value_of(&mut client, &key).await).expect("the stored region");
    let key = keys.key(Kind::Node, &node_id(0));
    let bytes = value_of(&mut client, &key).await;
    let written_by_the_api: Node = keys::decode(&key, &bytes).expect("the stored node");
    let ours = domain_node(0, written_by_the_api.status_since);
    assert_eq!(written_by_the_api, ours);
    assert_eq!(
        keys::encode(&ours),
        bytes,
        "this test encodes nodes differently"
    );

    let batches: Vec<Vec<TxnOp>> = range
        .collect::<Vec<_>>()
        .chunks(NODES_PER_TXN)
        .map(|batch| {
            batch
                .iter()
                .map(|&i| {
                    let node = domain_node(i, Some(SystemTime::now()));
                    validate::node(&node, Some(&federation), Some(&region), &LIMITS)
                        .unwrap_or_else(|e| panic!("node {i} is invalid: {e}"));
                    TxnOp::put(keys.key(Kind::Node, &node.id), keys::encode(&node), None)
                })
                .collect()
        })
        .collect();
    futures::stream::iter(batches)
        .map(|batch| {
            let mut client = client.clone();
            async move { client.txn(Txn::new().and_then(batch)).await }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<_>>()
        .await
        .expect("writing nodes to etcd");
}

async fn value_of(client: &mut etcd_client::Client, key: &str) -> Vec<u8> {
    let response = client.get(key, None).await.expect("reading etcd");
    let kv = response.kvs().first();
    kv.unwrap_or_else(|| panic!("{key} is not in etcd"))
        .value()
        .to_vec()
}

// === Nodes at every limit ===

/// `prefix` followed by `filler` up to `len` bytes.
fn fill(prefix: &str, len: usize, filler: char) -> String {
    let mut s = prefix.to_owned();
    while s.len() + filler.len_utf8() <= len {
        s.push(filler);
    }
    assert_eq!(s.len(), len, "{prefix:?} cannot be filled with {filler:?}");
    s
}

fn region_name() -> String {
    fill("region-at-limits-", NAME_BYTES as usize, 'r')
}

fn zone_name(zone: usize) -> String {
    fill(&format!("zone-{zone}-"), NAME_BYTES as usize, 'z')
}

fn node_id(i: usize) -> String {
    fill(&format!("node-{i:05}-"), NAME_BYTES as usize, 'n')
}

/// A 253-byte host name (four labels and `.invalid`, which never resolves) and the
/// widest port.
fn address(i: usize) -> String {
    let host = [
        fill(&format!("host-{i:05}-"), 63, 'a'),
        fill("b", 63, 'b'),
        fill("c", 63, 'c'),
        fill("d", 53, 'd'),
        "invalid".to_owned(),
    ]
    .join(".");
    format!("{host}:65535")
}

fn services() -> Vec<String> {
    (0..LIMITS.max_services_per_node as usize)
        .map(|s| {
            fill(
                &format!("meridian.at_limits.v1.Service{s:02}_"),
                SERVICE_NAME_BYTES as usize,
                'x',
            )
        })
        .collect()
}

/// Keys of every allowed character class; values of their own per node and label, with
/// two-byte characters so "intact" covers UTF-8.
fn labels(i: usize) -> HashMap<String, String> {
    (0..LIMITS.max_labels as usize)
        .map(|l| {
            let key = fill(
                &format!("meridian.dev/Label_{l:02}-"),
                LIMITS.max_label_key_bytes as usize,
                'k',
            );
            let value = fill(
                &format!("{i:05}/{l:02}:"),
                LIMITS.max_label_value_bytes as usize,
                'é',
            );
            (key, value)
        })
        .collect()
}

fn reason(i: usize) -> String {
    fill(
        &format!("drained at every limit, node {i:05}: "),
        LIMITS.max_text_bytes as usize,
        '.',
    )
}

/// Node `i` as registered.
fn node(i: usize) -> pb::Node {
    pb::Node {
        id: node_id(i),
        address: address(i),
        federation: FEDERATION.into(),
        region: region_name(),
        zone: zone_name(i % ZONES),
        services: services(),
        weight: MAX_WEIGHT,
        capacity: MAX_CAPACITY,
        labels: labels(i),
        ..Default::default()
    }
}

/// Node `i` as stored after draining, without its `status_since`.
fn stored(i: usize) -> pb::Node {
    pb::Node {
        status: pb::NodeStatus::Draining.into(),
        status_reason: reason(i),
        registration: pb::RegistrationKind::Operator.into(),
        ..node(i)
    }
}

/// Node `i` as the control plane keeps it after draining.
fn domain_node(i: usize, status_since: Option<SystemTime>) -> Node {
    let mut node = Node::try_from(stored(i)).expect("a domain node");
    node.status_since = status_since;
    node
}

// === Measurements ===

/// The size of the proxy's table as a snapshot (without `generated_at`, a few bytes).
fn encoded_table_bytes(view: &SubscriberView) -> usize {
    pb::RoutingTable {
        version: view.version,
        federation: FEDERATION.into(),
        regions: view.regions.values().cloned().collect(),
        services: view.services.values().cloned().collect(),
        nodes: view.nodes.values().cloned().collect(),
        ..Default::default()
    }
    .encoded_len()
}

/// The peak resident memory of process `pid` (`VmHWM`), where Linux reports it.
fn peak_memory(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .map(|v| v.trim().to_owned())
}
