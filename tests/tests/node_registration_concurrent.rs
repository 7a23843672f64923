//! Many `register_node` calls at once, as the Admin API sees them under load, on both store
//! backends (`embedded_<check>` and `etcd_<check>`, the etcd one against a real etcd).
//! Registrations waiting for the store at the same moment share a transaction (group
//! commit); each caller must still get its own answer:
//! - distinct nodes are all stored, each with exactly one `nodeRegistered` event, and
//!   every event has its own sequence number;
//! - of two registrations of one id with different specs, one wins and the other is told
//!   the id is taken; two with the same spec both succeed and record one event;
//! - registrations did share transactions (fewer store revisions than nodes).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_control_plane::events::EventLog;
use meridian_control_plane::keys::{Keys, Kind};
use meridian_control_plane::store::Store;
use meridian_control_plane::store::embedded::EmbeddedStore;
use meridian_control_plane::store::etcd::EtcdStore;
use meridian_control_plane::topology::{StateFollower, TopologyWriter, WriteError};
use meridian_shared::Shutdown;
use meridian_shared::domain::{EventKind, Federation, GeoPoint, Node, Region};
use meridian_tests::EtcdCluster;

/// Distinct nodes registered at once.
const NODES: usize = 100;
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
const STATE_DEADLINE: Duration = Duration::from_secs(10);

struct Harness {
    writer: TopologyWriter,
    log: EventLog,
    store: Arc<dyn Store>,
    keys: Keys,
    shutdown: Shutdown,
    _etcd: Option<EtcdCluster>,
}

impl Harness {
    /// A writer as the control plane builds it, over federation `prod` with region `eu`
    /// (zone `eu-a`), once its followed state has them: registration validates against
    /// the followed state first.
    async fn on(store: Arc<dyn Store>, etcd: Option<EtcdCluster>) -> Self {
        let keys = Keys::new("/meridian/");
        let shutdown = Shutdown::new();
        let (follower, state) = StateFollower::new(Arc::clone(&store), keys.clone());
        tokio::spawn(follower.run(shutdown.clone()));
        let log = EventLog::new(Arc::clone(&store), keys.clone(), state.clone());
        let writer = TopologyWriter::new(Arc::clone(&store), keys.clone(), log.clone());
        writer
            .upsert_federation(Federation {
                name: "prod".into(),
                allowed_networks: vec!["127.0.0.0/8".into()],
                ..Default::default()
            })
            .await
            .expect("creating the federation");
        let region = Region {
            name: "eu".into(),
            federation: "prod".into(),
            location: GeoPoint {
                latitude: 53.3,
                longitude: -6.2,
            },
            zones: vec!["eu-a".into()],
            ..Default::default()
        };
        writer
            .upsert_region(region, "test")
            .await
            .expect("creating the region");
        let mut changes = state.subscribe();
        let seen = tokio::time::timeout(
            STATE_DEADLINE,
            changes.wait_for(|s| s.regions.contains_key("eu")),
        )
        .await;
        assert!(
            seen.is_ok_and(|r| r.is_ok()),
            "the followed state never saw the region"
        );
        Harness {
            writer,
            log,
            store,
            keys,
            shutdown,
            _etcd: etcd,
        }
    }

    async fn embedded() -> Self {
        Self::on(Arc::new(EmbeddedStore::in_memory()), None).await
    }

    async fn etcd() -> Self {
        let etcd = EtcdCluster::single().await.expect("starting etcd");
        let store = EtcdStore::connect(&etcd.endpoints(), DIAL_TIMEOUT)
            .await
            .expect("connecting to etcd");
        Self::on(Arc::new(store), Some(etcd)).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn node(id: &str, port: u16) -> Node {
    Node {
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        federation: "prod".into(),
        region: "eu".into(),
        zone: "eu-a".into(),
        services: vec!["demo.v1.Echo".into()],
        weight: 100,
        ..Default::default()
    }
}

async fn concurrent_registrations_each_get_their_own_answer(h: Harness) {
    let mut calls: Vec<(Node, _)> = Vec::new();
    let mut register = |node: Node| {
        let writer = h.writer.clone();
        let call = tokio::spawn({
            let node = node.clone();
            async move { writer.register_node(node, false, "operator:test").await }
        });
        calls.push((node, call));
    };
    for i in 0..NODES {
        register(node(&format!("n{i:03}"), 10_000 + i as u16));
        if i == NODES / 3 {
            // One id, two specs.
            register(node("dup", 9_001));
            register(node("dup", 9_002));
        }
        if i == NODES / 2 {
            // One id, one spec, twice.
            register(node("same", 9_100));
            register(node("same", 9_100));
        }
    }
    let mut answers: HashMap<String, Vec<Result<Node, WriteError>>> = HashMap::new();
    for (node, call) in calls {
        let answer = call.await.expect("the registration ran");
        answers.entry(node.id).or_default().push(answer);
    }

    for i in 0..NODES {
        let id = format!("n{i:03}");
        let answer = &answers[&id][0];
        assert!(answer.is_ok(), "{id}: {answer:?}");
    }
    let dup = &answers["dup"];
    let won = dup.iter().filter(|a| a.is_ok()).count();
    let taken = dup
        .iter()
        .filter(|a| matches!(a, Err(WriteError::Invalid(i)) if i.field == "node.id"))
        .count();
    assert_eq!((won, taken), (1, 1), "one id, two specs: {dup:?}");
    assert!(
        answers["same"].iter().all(Result::is_ok),
        "one id, one spec: {:?}",
        answers["same"]
    );

    let stored = h.store.list(&h.keys.dir(Kind::Node)).await.unwrap().kvs;
    assert_eq!(stored.len(), NODES + 2, "nodes stored");
    let revisions: HashSet<i64> = stored.iter().map(|kv| kv.create_revision).collect();
    assert!(
        revisions.len() < stored.len(),
        "no two registrations shared a transaction ({} revisions for {} nodes)",
        revisions.len(),
        stored.len()
    );

    let (events, _) = h.log.since(0).await.expect("reading the events");
    let registered: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::NodeRegistered)
        .collect();
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for event in &registered {
        *per_node.entry(event.subject.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_node.len(),
        NODES + 2,
        "nodes with an event: {per_node:?}"
    );
    assert!(
        per_node.values().all(|&n| n == 1),
        "a node with more than one event: {per_node:?}"
    );
    let seqs: HashSet<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs.len(), events.len(), "events sharing a sequence number");
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "events out of order"
    );
}

#[tokio::test]
async fn embedded_concurrent_registrations_each_get_their_own_answer() {
    concurrent_registrations_each_get_their_own_answer(Harness::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_concurrent_registrations_each_get_their_own_answer() {
    concurrent_registrations_each_get_their_own_answer(Harness::etcd().await).await;
}
