//! A scripted proxy for control-plane tests: subscribes to a routing-table stream, applies
//! snapshots and deltas to its own copy of the table exactly as a proxy must, ACKs each
//! update (or NACKs on demand), and records every version it received, so tests can check
//! ordering, push counts and that the table equals the store.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_proto::v1::stream_routes_request::Message as Outbound;
use meridian_proto::v1::stream_routes_response::Update;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// What the subscriber holds and has seen.
#[derive(Debug, Clone, Default)]
pub struct SubscriberView {
    pub version: u64,
    pub nodes: BTreeMap<String, pb::Node>,
    pub services: BTreeMap<String, pb::ServicePolicy>,
    pub regions: BTreeMap<String, pb::Region>,
    /// Every version received, in order, with "snapshot" or "delta".
    pub received: Vec<(u64, &'static str)>,
    /// Set when the stream ended, with why.
    pub ended: Option<String>,
}

pub struct Subscriber {
    view: watch::Receiver<SubscriberView>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes as `proxy_id` to `federation` at `url`, holding `held_version`.
    pub async fn start(url: &str, proxy_id: &str, federation: &str, held_version: u64) -> Self {
        Self::start_with(url, proxy_id, federation, held_version, None).await
    }

    /// Like [`Subscriber::start`], NACKing the update whose version is `nack_version`.
    pub async fn start_with(
        url: &str,
        proxy_id: &str,
        federation: &str,
        held_version: u64,
        nack_version: Option<u64>,
    ) -> Self {
        Self::start_acking_after(
            url,
            proxy_id,
            federation,
            held_version,
            nack_version,
            Duration::ZERO,
        )
        .await
    }

    /// Like [`Subscriber::start_with`], answering each update `ack_delay` after it
    /// arrived (a slow proxy).
    pub async fn start_acking_after(
        url: &str,
        proxy_id: &str,
        federation: &str,
        held_version: u64,
        nack_version: Option<u64>,
        ack_delay: Duration,
    ) -> Self {
        // A proxy's decode limit: a federation at its limits is far over tonic's 4 MiB.
        let mut client = RoutingDiscoveryClient::with_interceptor(
            crate::control::channel(url).await,
            crate::control::bearer(crate::control::PROXY_TOKEN),
        )
        .max_decoding_message_size(meridian_shared::domain::limits::routing_message_limit());
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::Hello {
            proxy_id: proxy_id.into(),
            federation: federation.into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            held_version,
            build_version: "test".into(),
        };
        tx.send(request(Outbound::Hello(hello)))
            .await
            .expect("queue hello");
        let mut inbound = client
            .stream_routes(ReceiverStream::new(rx))
            .await
            .expect("opening the routing stream")
            .into_inner();
        let (view_tx, view) = watch::channel(SubscriberView {
            version: held_version,
            ..Default::default()
        });
        let task = tokio::spawn(async move {
            loop {
                let response = match inbound.message().await {
                    Ok(Some(response)) => response,
                    Ok(None) => {
                        view_tx.send_modify(|v| v.ended = Some("stream closed".into()));
                        return;
                    }
                    Err(status) => {
                        view_tx.send_modify(|v| v.ended = Some(status.to_string()));
                        return;
                    }
                };
                let mut version = 0;
                view_tx.send_modify(|v| version = apply(v, response.update));
                if !ack_delay.is_zero() {
                    tokio::time::sleep(ack_delay).await;
                }
                let answer = if Some(version) == nack_version {
                    Outbound::Nack(pb::Nack {
                        version,
                        nonce: response.nonce,
                        error: "refused by the test".into(),
                    })
                } else {
                    Outbound::Ack(pb::Ack {
                        version,
                        nonce: response.nonce,
                    })
                };
                if tx.send(request(answer)).await.is_err() {
                    return;
                }
            }
        });
        Subscriber { view, task }
    }

    pub fn view(&self) -> SubscriberView {
        self.view.borrow().clone()
    }

    /// Waits until `condition` holds on the view; panics with the view after `deadline`.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        condition: impl Fn(&SubscriberView) -> bool,
    ) -> SubscriberView {
        let mut view = self.view.clone();
        match tokio::time::timeout(deadline, view.wait_for(|v| condition(v))).await {
            Ok(Ok(v)) => v.clone(),
            _ => panic!(
                "{what}: not reached within {deadline:?}; view: {:?}",
                self.view.borrow()
            ),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn request(message: Outbound) -> pb::StreamRoutesRequest {
    pb::StreamRoutesRequest {
        message: Some(message),
    }
}

/// Applies an update as a proxy must; returns its version.
fn apply(view: &mut SubscriberView, update: Option<Update>) -> u64 {
    match update {
        Some(Update::Snapshot(table)) => {
            view.nodes = table.nodes.into_iter().map(|n| (n.id.clone(), n)).collect();
            view.services = table
                .services
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect();
            view.regions = table
                .regions
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect();
            view.version = table.version;
            view.received.push((table.version, "snapshot"));
            table.version
        }
        Some(Update::Delta(delta)) => {
            assert_eq!(
                delta.base_version, view.version,
                "a delta must apply on top of the version the proxy holds"
            );
            for id in delta.removed_nodes {
                view.nodes.remove(&id);
            }
            for node in delta.upserted_nodes {
                view.nodes.insert(node.id.clone(), node);
            }
            for name in delta.removed_services {
                view.services.remove(&name);
            }
            for service in delta.upserted_services {
                view.services.insert(service.name.clone(), service);
            }
            for name in delta.removed_regions {
                view.regions.remove(&name);
            }
            for region in delta.upserted_regions {
                view.regions.insert(region.name.clone(), region);
            }
            view.version = delta.version;
            view.received.push((delta.version, "delta"));
            delta.version
        }
        None => view.version,
    }
}
