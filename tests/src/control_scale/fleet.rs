//! A fleet of scripted proxies: P `RoutingDiscovery/StreamRoutes` streams spread over C
//! HTTP/2 connections, each with its own proxy id, ACKing every update (nonce echo) as a
//! proxy does, and holding the minimum a proxy's table needs for the benchmark to check
//! it: the version and one status byte per node.
//!
//! Measuring: the benchmark sets a [`Condition`] *before* the write it wants to see
//! propagate; every subscriber evaluates it after each update it applies and records the
//! instant it first holds a table satisfying it. The benchmark then waits (bounded) until
//! all have, and reads the instants.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use meridian_proto::v1 as pb;
use meridian_proto::v1::stream_routes_request::Message as Outbound;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::ScaleError;
use super::layout;
use super::thin_routes::{Received, ThinNode, ThinResponse, ThinRoutesCodec};
use crate::control::PROXY_TOKEN;

const STREAM_ROUTES: &str = "/meridian.v1.RoutingDiscovery/StreamRoutes";
/// A node the subscriber's table does not hold.
const ABSENT: u8 = u8::MAX;
const DRAINING: u8 = pb::NodeStatus::Draining as u8;

/// What the benchmark waits for every subscriber to hold.
#[derive(Debug, Clone)]
pub enum Condition {
    /// A table with (at least) this many benchmark nodes.
    NodesKnown(usize),
    /// Node `index` has `status`.
    NodeStatus {
        index: usize,
        status: pb::NodeStatus,
    },
    /// Every node in the range is draining.
    AllDraining(Range<usize>),
}

#[derive(Debug, Clone, Default)]
struct Goal {
    seq: u64,
    condition: Option<Condition>,
}

/// Counters of one subscriber, shared with the benchmark.
#[derive(Debug, Default)]
pub struct SubscriberStats {
    /// The version of the table held.
    pub version: AtomicU64,
    /// Updates (snapshots and deltas) received.
    pub updates: AtomicU64,
    /// Encoded size of the last update received, bytes.
    pub last_update_bytes: AtomicU64,
    /// The goal seq this subscriber last reached, and when (µs since the fleet's epoch).
    reached_seq: AtomicU64,
    reached_at_us: AtomicU64,
}

struct FleetShared {
    epoch: Instant,
    stats: Vec<SubscriberStats>,
    /// Subscribers that reached the current goal.
    reached: AtomicUsize,
    /// Woken when the last subscriber reaches the goal, or one fails.
    progress: Notify,
    failures: Mutex<Vec<String>>,
}

impl FleetShared {
    fn fail(&self, why: String) {
        self.failures.lock().expect("not poisoned").push(why);
        self.progress.notify_one();
    }
}

pub struct Fleet {
    shared: Arc<FleetShared>,
    goals: watch::Sender<Goal>,
    tasks: Vec<JoinHandle<()>>,
}

impl Fleet {
    /// Connects `connections` channels to `url` and opens `proxies` streams over them,
    /// round-robin; their first snapshots arrive in the background.
    pub async fn start(
        url: &str,
        proxies: usize,
        connections: usize,
        first: Condition,
    ) -> Result<Self, ScaleError> {
        let mut channels = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            channels.push(crate::control::channel(url).await);
        }
        let shared = Arc::new(FleetShared {
            epoch: Instant::now(),
            stats: (0..proxies).map(|_| SubscriberStats::default()).collect(),
            reached: AtomicUsize::new(0),
            progress: Notify::new(),
            failures: Mutex::new(Vec::new()),
        });
        let (goals, _) = watch::channel(Goal {
            seq: 1,
            condition: Some(first),
        });
        let tasks = (0..proxies)
            .map(|i| {
                let subscriber = Subscriber {
                    index: i,
                    shared: Arc::clone(&shared),
                    goals: goals.subscribe(),
                    table: HeldTable::default(),
                };
                tokio::spawn(subscriber.run(channels[i % channels.len()].clone()))
            })
            .collect();
        Ok(Fleet {
            shared,
            goals,
            tasks,
        })
    }

    pub fn len(&self) -> usize {
        self.shared.stats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shared.stats.is_empty()
    }

    pub fn stats(&self, index: usize) -> &SubscriberStats {
        &self.shared.stats[index]
    }

    /// Now, in the fleet's clock (µs since it started).
    pub fn now_us(&self) -> u64 {
        self.at_us(Instant::now())
    }

    /// `instant` in the fleet's clock.
    pub fn at_us(&self, instant: Instant) -> u64 {
        instant
            .saturating_duration_since(self.shared.epoch)
            .as_micros() as u64
    }

    /// Makes `condition` the goal. Call it only once every subscriber reached the previous
    /// one (each counts itself once per goal), and before the write that should satisfy it.
    pub fn set_goal(&self, condition: Condition) {
        self.shared.reached.store(0, Ordering::SeqCst);
        self.goals.send_modify(|g| {
            g.seq += 1;
            g.condition = Some(condition);
        });
    }

    /// Waits until every subscriber holds a table satisfying the goal; fails after
    /// `timeout` or when a subscriber's stream failed.
    pub async fn wait_all(&self, timeout: Duration, what: &str) -> Result<(), ScaleError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(why) = self.shared.failures.lock().expect("not poisoned").first() {
                return Err(ScaleError(format!("{what}: {why}")));
            }
            let reached = self.shared.reached.load(Ordering::SeqCst);
            if reached >= self.len() {
                return Ok(());
            }
            let progress = tokio::time::timeout_at(deadline, self.shared.progress.notified());
            if progress.await.is_err() {
                return Err(ScaleError(format!(
                    "{what}: only {reached} of {} subscribers got there within {timeout:?}",
                    self.len()
                )));
            }
        }
    }

    /// When each subscriber reached the current goal, µs in the fleet's clock.
    pub fn reached_at_us(&self) -> Vec<u64> {
        self.shared
            .stats
            .iter()
            .map(|s| s.reached_at_us.load(Ordering::SeqCst))
            .collect()
    }

    /// The version each subscriber holds.
    pub fn versions(&self) -> Vec<u64> {
        self.shared
            .stats
            .iter()
            .map(|s| s.version.load(Ordering::SeqCst))
            .collect()
    }

    /// Updates received so far, per subscriber.
    pub fn updates(&self) -> Vec<u64> {
        self.shared
            .stats
            .iter()
            .map(|s| s.updates.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What one subscriber holds: its table's version and one status byte per node index.
#[derive(Debug, Default)]
struct HeldTable {
    version: u64,
    statuses: Vec<u8>,
    /// Benchmark nodes held.
    known: usize,
}

impl HeldTable {
    /// Applies an update as a proxy must; returns its version, or why it is refused.
    fn apply(&mut self, response: ThinResponse) -> Result<u64, String> {
        if let Some(table) = response.snapshot {
            self.statuses.clear();
            self.known = 0;
            for node in &table.nodes {
                self.upsert(node);
            }
            self.version = table.version;
        } else if let Some(delta) = response.delta {
            if delta.base_version != self.version {
                return Err(format!(
                    "a delta from version {} while holding {}",
                    delta.base_version, self.version
                ));
            }
            for id in &delta.removed_nodes {
                self.remove(id);
            }
            for node in &delta.upserted_nodes {
                self.upsert(node);
            }
            self.version = delta.version;
        }
        Ok(self.version)
    }

    fn upsert(&mut self, node: &ThinNode) {
        let Some(index) = layout::node_index(&node.id) else {
            return;
        };
        if index >= self.statuses.len() {
            self.statuses.resize(index + 1, ABSENT);
        }
        if self.statuses[index] == ABSENT {
            self.known += 1;
        }
        self.statuses[index] = u8::try_from(node.status).unwrap_or(ABSENT - 1);
    }

    fn remove(&mut self, id: &str) {
        if let Some(slot) = layout::node_index(id).and_then(|i| self.statuses.get_mut(i))
            && *slot != ABSENT
        {
            *slot = ABSENT;
            self.known -= 1;
        }
    }

    fn satisfies(&self, condition: &Condition) -> bool {
        match condition {
            Condition::NodesKnown(n) => self.known >= *n,
            Condition::NodeStatus { index, status } => {
                self.statuses.get(*index) == Some(&(*status as u8))
            }
            Condition::AllDraining(range) => self
                .statuses
                .get(range.clone())
                .is_some_and(|s| s.iter().all(|&status| status == DRAINING)),
        }
    }
}

struct Subscriber {
    index: usize,
    shared: Arc<FleetShared>,
    goals: watch::Receiver<Goal>,
    table: HeldTable,
}

impl Subscriber {
    async fn run(mut self, channel: Channel) {
        if let Err(why) = self.stream(channel).await {
            self.shared
                .fail(format!("subscriber bench-proxy-{}: {why}", self.index));
        }
    }

    async fn stream(&mut self, channel: Channel) -> Result<(), String> {
        let (tx, rx) = mpsc::channel(4);
        let (region, _) = layout::REGIONS[self.index % layout::REGIONS.len()];
        let hello = pb::Hello {
            proxy_id: format!("bench-proxy-{:05}", self.index),
            federation: layout::FEDERATION.into(),
            region: region.into(),
            zone: layout::zones(region).swap_remove(0),
            held_version: 0,
            build_version: "control-plane-scale-bench".into(),
        };
        tx.send(message(Outbound::Hello(hello)))
            .await
            .map_err(|_| "the request stream closed")?;
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(meridian_shared::domain::limits::routing_message_limit());
        grpc.ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {PROXY_TOKEN}")
                .parse()
                .expect("ascii token"),
        );
        let mut inbound = grpc
            .streaming(
                request,
                PathAndQuery::from_static(STREAM_ROUTES),
                ThinRoutesCodec,
            )
            .await
            .map_err(|status| format!("opening the stream: {status}"))?
            .into_inner();
        loop {
            let Received {
                bytes,
                message: response,
            } = inbound
                .message()
                .await
                .map_err(|status| format!("stream broke: {status}"))?
                .ok_or("the control plane closed the stream")?;
            let nonce = response.nonce.clone();
            let applied = self.table.apply(response);
            let stats = &self.shared.stats[self.index];
            stats.updates.fetch_add(1, Ordering::SeqCst);
            stats.version.store(self.table.version, Ordering::SeqCst);
            stats
                .last_update_bytes
                .store(bytes as u64, Ordering::SeqCst);
            let answer = match applied {
                Ok(version) => {
                    self.note_goal();
                    Outbound::Ack(pb::Ack { version, nonce })
                }
                Err(error) => {
                    self.shared.fail(format!(
                        "bench-proxy-{} refused an update: {error}",
                        self.index
                    ));
                    Outbound::Nack(pb::Nack {
                        version: self.table.version,
                        nonce,
                        error,
                    })
                }
            };
            tx.send(message(answer))
                .await
                .map_err(|_| "the request stream closed")?;
        }
    }

    /// Records the first instant the table satisfies the current goal.
    fn note_goal(&self) {
        let goal = self.goals.borrow();
        let stats = &self.shared.stats[self.index];
        let Some(condition) = &goal.condition else {
            return;
        };
        if stats.reached_seq.load(Ordering::SeqCst) == goal.seq || !self.table.satisfies(condition)
        {
            return;
        }
        let at = self.shared.epoch.elapsed().as_micros() as u64;
        stats.reached_at_us.store(at, Ordering::SeqCst);
        stats.reached_seq.store(goal.seq, Ordering::SeqCst);
        let reached = self.shared.reached.fetch_add(1, Ordering::SeqCst) + 1;
        if reached == self.shared.stats.len() {
            self.shared.progress.notify_one();
        }
    }
}

fn message(message: Outbound) -> pb::StreamRoutesRequest {
    pb::StreamRoutesRequest {
        message: Some(message),
    }
}
