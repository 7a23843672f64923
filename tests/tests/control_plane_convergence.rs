//! Every change reaches every proxy: against a real `meridian-control` on real etcd, with
//! subscribers that ACK at different speeds, a burst of writes longer than the debounce's
//! maximum delay, and random write timings (a seeded property test), always end with
//! every subscriber holding exactly the store's table, versions only going forward.
//!
//! The property test prints its seed; rerun one case with `MERIDIAN_PROPERTY_SEED=<seed>`.

use std::time::{Duration, Instant};

use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, OPERATOR_TOKEN, authorized,
};
use meridian_tests::subscriber::{Subscriber, SubscriberView};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

/// How long subscribers get to converge after the last write.
const CONVERGE: Duration = Duration::from_secs(15);

struct Setup {
    _etcd: EtcdCluster,
    cp: ControlPlaneProcess,
    _dir: tempfile::TempDir,
}

async fn setup(prefix: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let cp = ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &etcd.endpoints(),
        prefix,
        replica: "cp-a",
        election_ttl_seconds: 5,
        dir: dir.path(),
    })
    .await;
    cp.slow_health_checks().await;
    Setup {
        _etcd: etcd,
        cp,
        _dir: dir,
    }
}

fn node(federation: &str, region: &str, id: &str, port: u16) -> pb::Node {
    pb::Node {
        id: id.into(),
        address: format!("127.0.0.1:{port}"),
        federation: federation.into(),
        region: region.into(),
        zone: format!("{region}-a"),
        services: vec!["demo.v1.Echo".into()],
        ..Default::default()
    }
}

async fn register(admin: &mut AdminClient<Channel>, node: pb::Node) {
    let request = pb::RegisterNodeRequest {
        node: Some(node),
        replace: false,
    };
    admin
        .register_node(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("register");
}

async fn drain(admin: &mut AdminClient<Channel>, id: &str) {
    let request = pb::DrainNodeRequest {
        id: id.into(),
        reason: "convergence test".into(),
    };
    admin
        .drain_node(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("drain");
}

async fn recover(admin: &mut AdminClient<Channel>, id: &str) {
    let request = pb::RecoverNodeRequest {
        id: id.into(),
        reason: "convergence test".into(),
    };
    admin
        .recover_node(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("recover");
}

async fn deregister(admin: &mut AdminClient<Channel>, id: &str) {
    let request = pb::DeregisterNodeRequest { id: id.into() };
    admin
        .deregister_node(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("deregister");
}

async fn stored_nodes(admin: &mut AdminClient<Channel>, federation: &str) -> Vec<pb::Node> {
    let request = pb::ListNodesRequest {
        federation: federation.into(),
        ..Default::default()
    };
    let mut nodes = admin
        .list_nodes(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    nodes
}

/// Waits until every subscriber holds exactly `stored`; panics naming the ones that do
/// not, with `context` (e.g. the seed).
async fn assert_all_converge(
    subscribers: &[(Subscriber, Duration)],
    stored: &[pb::Node],
    context: &str,
) {
    for (i, (subscriber, ack_delay)) in subscribers.iter().enumerate() {
        let holds_the_store = |v: &SubscriberView| {
            v.nodes.len() == stored.len() && v.nodes.values().zip(stored).all(|(a, b)| a == b)
        };
        let view = subscriber
            .wait_until(
                CONVERGE,
                &format!(
                    "{context}: subscriber {i} (ACKs after {ack_delay:?}) holds the store's table"
                ),
                holds_the_store,
            )
            .await;
        let versions: Vec<u64> = view.received.iter().map(|(v, _)| *v).collect();
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "{context}: subscriber {i}'s versions went backwards: {versions:?}"
        );
        assert!(
            view.ended.is_none(),
            "{context}: stream ended: {:?}",
            view.ended
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_longer_than_the_max_delay_leaves_every_subscriber_on_the_last_write() {
    let s = setup("/converge-burst/").await;
    s.cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-a"])
        .await;
    let mut admin = s.cp.admin().await;
    let ack_delays = [0, 0, 50, 100, 200, 400, 700, 1_000].map(Duration::from_millis);
    let mut subscribers = Vec::new();
    for (i, delay) in ack_delays.into_iter().enumerate() {
        let subscriber = Subscriber::start_acking_after(
            &s.cp.url(),
            &format!("proxy-{i}"),
            "prod",
            0,
            None,
            delay,
        )
        .await;
        subscribers.push((subscriber, delay));
    }

    // 3 s of writes 50 ms apart: never quiet for the debounce's 100 ms, so publications
    // happen only at its 1 s maximum delay, mid-burst; the last write is a drain.
    const WRITES: u16 = 60;
    let started = Instant::now();
    for i in 0..WRITES {
        register(
            &mut admin,
            node("prod", "eu-west", &format!("b{i:03}"), 20_000 + i),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain(&mut admin, "b000").await;
    eprintln!(
        "burst of {} writes took {:?}",
        WRITES + 1,
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "the burst must outlast the debounce's maximum delay"
    );

    let stored = stored_nodes(&mut admin, "prod").await;
    assert_eq!(stored.len(), usize::from(WRITES));
    assert_eq!(
        stored[0].status(),
        pb::NodeStatus::Draining,
        "the last write"
    );
    assert_all_converge(&subscribers, &stored, "burst").await;
}

/// One random case: a federation of its own, subscribers with random ACK delays, and
/// random writes (register, drain, recover, deregister) at random gaps, bursts included.
async fn random_case(cp: &ControlPlaneProcess, case: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let federation = format!("case{case}");
    let region = format!("r{case}");
    cp.create_region(&federation, &region, (50.0, 8.0), &[&format!("{region}-a")])
        .await;
    let mut admin = cp.admin().await;
    let mut subscribers = Vec::new();
    for i in 0..4 {
        let delay = Duration::from_millis(rng.random_range(0..300));
        let subscriber = Subscriber::start_acking_after(
            &cp.url(),
            &format!("proxy-{case}-{i}"),
            &federation,
            0,
            None,
            delay,
        )
        .await;
        subscribers.push((subscriber, delay));
    }
    let mut registered: Vec<String> = Vec::new();
    let mut next_id = 0u16;
    for _ in 0..40 {
        match rng.random_range(0..10) {
            0..=3 => {
                let id = format!("c{case}-{next_id:03}");
                register(
                    &mut admin,
                    node(&federation, &region, &id, 30_000 + next_id),
                )
                .await;
                registered.push(id);
                next_id += 1;
            }
            4..=5 if !registered.is_empty() => {
                let id = &registered[rng.random_range(0..registered.len())];
                drain(&mut admin, id).await;
            }
            6..=7 if !registered.is_empty() => {
                let id = &registered[rng.random_range(0..registered.len())];
                recover(&mut admin, id).await;
            }
            8 if !registered.is_empty() => {
                let id = registered.swap_remove(rng.random_range(0..registered.len()));
                deregister(&mut admin, &id).await;
            }
            _ => {}
        }
        // Bursts (no gap), gaps shorter than the quiet period, and longer pauses.
        let gap = match rng.random_range(0..3) {
            0 => 0,
            1 => rng.random_range(0..100),
            _ => rng.random_range(100..400),
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    let stored = stored_nodes(&mut admin, &federation).await;
    assert_all_converge(&subscribers, &stored, &format!("case {case}, seed {seed}")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_write_timings_and_ack_delays_always_end_on_the_store() {
    let s = setup("/converge-random/").await;
    let seeds: Vec<u64> = match std::env::var("MERIDIAN_PROPERTY_SEED") {
        Ok(seed) => vec![seed.parse().expect("MERIDIAN_PROPERTY_SEED is a number")],
        Err(_) => {
            let base = rand::random::<u64>();
            (0..3).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for (case, seed) in seeds.into_iter().enumerate() {
        eprintln!("case {case}: MERIDIAN_PROPERTY_SEED={seed}");
        random_case(&s.cp, case, seed).await;
    }
}
