//! Self-registration with a control plane (`meridian.v1.NodeRegistry`), as a real backend
//! would do it: register the node's spec, keep the lease alive at the interval the
//! control plane asks for, register again when the lease lapsed (NOT_FOUND), reconnect
//! with jittered backoff when the control plane is away, and deregister on shutdown so
//! proxies stop routing to the node before it goes. A refused registration (say, the
//! region does not exist yet) is logged and retried the same way, so nodes can start
//! before their topology.
//!
//! Keep-alives can be paused at run time (DemoControl/SetKeepAlive): the process keeps
//! serving while its lease lapses, which is how tests make a node "lost".

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::node_registry_client::NodeRegistryClient;
use meridian_shared::credentials::BearerAuth;
use meridian_shared::tls::{self, ClientTls, ConnectError};
use meridian_shared::{Backoff, Shutdown};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long Register and Deregister may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A control-plane URL that cannot be used (malformed, or https:// without a CA).
#[derive(Debug, thiserror::Error)]
#[error("--register-with: {0}")]
pub struct InvalidUrl(#[from] ConnectError);

/// The lease the node holds.
#[derive(Debug, Clone, Copy)]
struct Lease {
    id: i64,
    keepalive_interval: Duration,
}

/// Why a keep-alive stream ended.
enum StreamEnd {
    Shutdown,
    /// NOT_FOUND: the lease expired or the node was deregistered.
    LeaseLost(Status),
    /// Anything else (control plane gone, stream closed): reopen with the same lease.
    Broken(String),
}

/// Registers one node and keeps it registered until shutdown.
pub struct SelfRegistration {
    client: NodeRegistryClient<InterceptedService<Channel, BearerAuth>>,
    node: pb::Node,
    ttl_seconds: u32,
    keep_alive_enabled: watch::Receiver<bool>,
    backoff: Backoff,
}

impl SelfRegistration {
    /// Connects lazily: a control plane that is not up yet is retried, not an error.
    /// `keep_alive` says whether keep-alives are currently sent; `auth` is the node-role
    /// credential; `tls` is needed for an `https://` URL.
    pub fn new(
        url: &str,
        tls: Option<&ClientTls>,
        auth: BearerAuth,
        node: pb::Node,
        ttl_seconds: u32,
        keep_alive: watch::Receiver<bool>,
    ) -> Result<Self, InvalidUrl> {
        let channel = tls::connect_lazy(url, tls, |e| e.connect_timeout(CONNECT_TIMEOUT))?;
        Ok(SelfRegistration {
            client: NodeRegistryClient::with_interceptor(channel, auth),
            node,
            ttl_seconds,
            keep_alive_enabled: keep_alive,
            backoff: Backoff::default(),
        })
    }

    /// Registers and keeps the lease alive until `shutdown`, then deregisters.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut lease: Option<Lease> = None;
        let mut registered = false;
        while !shutdown.is_triggered() {
            let current = match lease {
                Some(current) => current,
                None => {
                    let result = tokio::select! {
                        _ = shutdown.wait() => break,
                        result = self.register() => result,
                    };
                    match result {
                        Ok(new) => {
                            registered = true;
                            lease = Some(new);
                            new
                        }
                        Err(status) => {
                            tracing::warn!(
                                code = ?status.code(),
                                "registering with the control plane failed: {}",
                                status.message()
                            );
                            self.pause(&shutdown).await;
                            continue;
                        }
                    }
                }
            };
            match self.keep_alive(current, &shutdown).await {
                StreamEnd::Shutdown => break,
                StreamEnd::LeaseLost(status) => {
                    tracing::warn!(
                        lease = current.id,
                        "lease lost ({}); registering again",
                        status.message()
                    );
                    lease = None;
                }
                StreamEnd::Broken(why) => {
                    tracing::warn!(lease = current.id, "keep-alive stream broken: {why}");
                    self.pause(&shutdown).await;
                }
            }
        }
        if registered {
            self.deregister(lease.map_or(0, |l| l.id)).await;
        }
    }

    async fn register(&mut self) -> Result<Lease, Status> {
        let mut request = tonic::Request::new(pb::RegisterRequest {
            node: Some(self.node.clone()),
            ttl_seconds: self.ttl_seconds,
        });
        request.set_timeout(CALL_TIMEOUT);
        let response = self.client.register(request).await?.into_inner();
        self.backoff.reset();
        // A control plane that asks for no interval gets a third of the TTL, as it would.
        let interval_ms = match response.keepalive_interval_ms {
            0 => response.ttl_seconds.max(1) * 1000 / 3,
            ms => ms,
        };
        tracing::info!(
            node = %self.node.id,
            lease = response.lease_id,
            ttl_seconds = response.ttl_seconds,
            keepalive_interval_ms = interval_ms,
            "registered with the control plane"
        );
        Ok(Lease {
            id: response.lease_id,
            keepalive_interval: Duration::from_millis(u64::from(interval_ms)),
        })
    }

    /// Sends a keep-alive every interval (unless paused) and reads its answer, until the
    /// stream ends.
    async fn keep_alive(&mut self, lease: Lease, shutdown: &Shutdown) -> StreamEnd {
        let (requests, outbound) = mpsc::channel(1);
        let opened = tokio::select! {
            _ = shutdown.wait() => return StreamEnd::Shutdown,
            opened = self.client.keep_alive(ReceiverStream::new(outbound)) => opened,
        };
        let mut answers = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return stream_end(status),
        };
        let mut ticker = tokio::time::interval(lease.keepalive_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return StreamEnd::Shutdown,
                _ = ticker.tick() => {}
            }
            if !*self.keep_alive_enabled.borrow() {
                continue;
            }
            let request = pb::KeepAliveRequest {
                node_id: self.node.id.clone(),
                lease_id: lease.id,
            };
            if requests.send(request).await.is_err() {
                return StreamEnd::Broken("the request stream closed".into());
            }
            let answer = tokio::select! {
                _ = shutdown.wait() => return StreamEnd::Shutdown,
                answer = tokio::time::timeout(lease.keepalive_interval, answers.message()) => answer,
            };
            match answer {
                Ok(Ok(Some(answer))) => {
                    self.backoff.reset();
                    tracing::debug!(
                        lease = lease.id,
                        ttl_seconds = answer.ttl_seconds,
                        "lease refreshed"
                    );
                }
                Ok(Ok(None)) => {
                    return StreamEnd::Broken("the control plane ended the stream".into());
                }
                Ok(Err(status)) => return stream_end(status),
                Err(_) => {
                    return StreamEnd::Broken("no answer within the keep-alive interval".into());
                }
            }
        }
    }

    async fn deregister(&mut self, lease_id: i64) {
        let mut request = tonic::Request::new(pb::DeregisterRequest {
            node_id: self.node.id.clone(),
            lease_id,
        });
        request.set_timeout(CALL_TIMEOUT);
        match self.client.deregister(request).await {
            Ok(_) => tracing::info!(node = %self.node.id, "deregistered from the control plane"),
            Err(status) => tracing::warn!(
                node = %self.node.id,
                code = ?status.code(),
                "deregistering failed; the lease will lapse instead: {}",
                status.message()
            ),
        }
    }

    /// Waits the next backoff delay, or until shutdown.
    async fn pause(&mut self, shutdown: &Shutdown) {
        let delay = self.backoff.next_delay();
        tokio::select! {
            _ = shutdown.wait() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn stream_end(status: Status) -> StreamEnd {
    if status.code() == Code::NotFound {
        StreamEnd::LeaseLost(status)
    } else {
        StreamEnd::Broken(format!("{:?}: {}", status.code(), status.message()))
    }
}
