//! The benchmark's clients: `clients` callers of `demo.v1.Echo/Say` through the proxy, each
//! sending its next call as soon as the last one answered (a closed loop, so a slow choice
//! costs throughput as well as latency), spread over a few HTTP/2 connections. Every call
//! is kept as a [`Sample`] (when it started, which node served it, how long it took) so
//! one run yields shares and percentiles over any time window.
//!
//! Consistent hashing needs a key per call: each call carries a random `x-bench-key`
//! (many users), so that algorithm is measured spreading keys, not pinning one client.

use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use tokio::time::Instant;
use tonic::transport::Channel;

/// The header consistent hashing keys on in the benchmark.
pub const KEY_HEADER: &str = "x-bench-key";

/// One call.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it started, from the start of the run.
    pub at: Duration,
    /// Index of the serving node in the run's node list; `None` for a failed call or an
    /// unknown node.
    pub node: Option<usize>,
    pub latency: Duration,
}

/// What to run.
pub struct ClosedLoop<'a> {
    pub target: String,
    pub clients: usize,
    pub connections: usize,
    pub duration: Duration,
    /// The node ids, in the order samples refer to.
    pub nodes: &'a [String],
}

impl ClosedLoop<'_> {
    /// Runs the load for the duration; the samples of every client, in no order.
    pub async fn run(&self) -> Result<Vec<Sample>, tonic::transport::Error> {
        let mut channels = Vec::with_capacity(self.connections);
        for _ in 0..self.connections.max(1) {
            channels.push(
                tonic::transport::Endpoint::from_shared(self.target.clone())?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        let start = Instant::now();
        let until = start + self.duration;
        let tasks: Vec<_> = (0..self.clients)
            .map(|c| {
                let client = EchoClient::new(channels[c % channels.len()].clone());
                let nodes = self.nodes.to_vec();
                tokio::spawn(caller(client, nodes, start, until))
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            if let Ok(mine) = task.await {
                samples.extend(mine);
            }
        }
        Ok(samples)
    }
}

async fn caller(
    mut client: EchoClient<Channel>,
    nodes: Vec<String>,
    start: Instant,
    until: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(8_192);
    loop {
        let started = Instant::now();
        if started >= until {
            return samples;
        }
        let mut request = tonic::Request::new(demo::SayRequest {
            text: "bench".into(),
            payload: Vec::new(),
            delay_ms: 0,
        });
        let key = rand::random::<u64>().to_string();
        if let Ok(value) = key.parse() {
            request.metadata_mut().insert(KEY_HEADER, value);
        }
        let node = match client.say(request).await {
            Ok(reply) => reply
                .metadata()
                .get("x-meridian-node")
                .and_then(|v| v.to_str().ok())
                .and_then(|id| nodes.iter().position(|n| n == id)),
            Err(_) => None,
        };
        samples.push(Sample {
            at: started - start,
            node,
            latency: started.elapsed(),
        });
    }
}

/// Where `keys` land: one call per key through `target`, with `concurrency` in flight;
/// the serving node id per key (empty when the call failed).
pub async fn key_placement(
    target: &str,
    keys: &[String],
    concurrency: usize,
) -> Result<Vec<String>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(target.to_owned())?
        .connect()
        .await?;
    let mut placement = vec![String::new(); keys.len()];
    for (chunk_index, chunk) in keys.chunks(concurrency.max(1)).enumerate() {
        let calls = chunk.iter().map(|key| {
            let mut client = EchoClient::new(channel.clone());
            async move {
                let mut request = tonic::Request::new(demo::SayRequest {
                    text: "key".into(),
                    payload: Vec::new(),
                    delay_ms: 0,
                });
                request
                    .metadata_mut()
                    .insert(KEY_HEADER, key.parse().expect("ascii key"));
                match client.say(request).await {
                    Ok(reply) => reply
                        .metadata()
                        .get("x-meridian-node")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned(),
                    Err(_) => String::new(),
                }
            }
        });
        let served = futures::future::join_all(calls).await;
        let base = chunk_index * concurrency.max(1);
        for (k, node) in served.into_iter().enumerate() {
            placement[base + k] = node;
        }
    }
    Ok(placement)
}
