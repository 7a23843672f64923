//! Following the control plane: open `RoutingDiscovery/StreamRoutes` on one of the
//! configured replicas, say who this proxy is and which version it holds, apply each
//! snapshot or delta (ACK) or refuse it and keep the last good table (NACK), and persist
//! every applied table to the cache file (off the async runtime). Besides what cannot be
//! decoded, the proxy refuses what it must never serve: a table for another federation
//! than its own, or a version older than the one it holds (see [`TableData`] for why the
//! version held itself is accepted). When the stream breaks, reconnect with jittered
//! exponential backoff to the next replica and resume from the version held (logged once,
//! then summarised: [`OutageLog`]). The table is never evicted for being old: without a
//! control plane, the proxy routes with what it has.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_proto::v1::stream_routes_request::Message as Outbound;
use meridian_shared::admin_http::Readiness;
use meridian_shared::credentials::BearerAuth;
use meridian_shared::domain::limits::routing_message_limit;
use meridian_shared::tls::ClientTls;
use meridian_shared::{Backoff, Shutdown};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::cache_file::{self, CacheWriter};
use super::data::TableData;
use super::{ProxyIdentity, ProxyTable, TableHandle, TableSource};
use crate::endpoint::UpstreamSettings;
use crate::outage_log::OutageLog;

pub struct Subscription {
    pub identity: ProxyIdentity,
    /// The proxy-role credential presented to the control plane.
    pub auth: BearerAuth,
    pub control_planes: Vec<String>,
    /// TLS for `https://` control planes (`http://` ones are dialled in plaintext).
    pub control_plane_tls: Option<ClientTls>,
    /// Which nodes the tables' endpoints reach over TLS, and the limits towards them.
    pub upstream: UpstreamSettings,
    pub cache: Option<PathBuf>,
    pub table: TableHandle,
    pub readiness: Readiness,
}

impl Subscription {
    /// Loads the cached table, if any, so the proxy can serve before it reaches a
    /// control plane.
    pub fn load_cache(&self) {
        let Some(path) = &self.cache else { return };
        match cache_file::load(path) {
            Ok(Some(snapshot)) => match TableData::from_snapshot(snapshot) {
                Ok(data)
                    if data.federation == self.identity.federation
                        || data.federation.is_empty() =>
                {
                    tracing::info!(version = data.version, path = %path.display(), "serving the cached routing table until the control plane answers");
                    self.install(data, TableSource::File);
                }
                Ok(data) => tracing::warn!(
                    cached = %data.federation,
                    wanted = %self.identity.federation,
                    "ignoring the cached table: it belongs to another federation"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "ignoring an unreadable cached table")
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring the table cache"),
        }
    }

    /// Follows the control planes until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut replica = 0usize;
        let cache = self.cache.clone().map(CacheWriter::new);
        let mut outage = OutageLog::new("routing stream", "keeping the current table");
        metrics::gauge!("meridian_proxy_control_plane_connected").set(0.0);
        loop {
            let url = &self.control_planes[replica % self.control_planes.len()];
            let result = tokio::select! {
                _ = shutdown.wait() => return,
                result = self.follow(url, &mut backoff, &mut outage, cache.as_ref()) => result,
            };
            metrics::gauge!("meridian_proxy_control_plane_connected").set(0.0);
            let delay = backoff.next_delay();
            outage.failed(url, &result, delay);
            replica += 1;
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream: returns why it ended.
    async fn follow(
        &self,
        url: &str,
        backoff: &mut Backoff,
        outage: &mut OutageLog,
        cache: Option<&CacheWriter>,
    ) -> String {
        let channel = meridian_shared::tls::connect(url, self.control_plane_tls.as_ref(), |e| {
            e.connect_timeout(Duration::from_secs(2))
        })
        .await;
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => return error_chain(&e),
        };
        let (tx, rx) = mpsc::channel(4);
        let held_version = self
            .table
            .current()
            .map(|t| t.version())
            .unwrap_or_default();
        let hello = pb::Hello {
            proxy_id: self.identity.id.clone(),
            federation: self.identity.federation.clone(),
            region: self.identity.region.clone(),
            zone: self.identity.zone.clone(),
            held_version,
            build_version: env!("CARGO_PKG_VERSION").into(),
        };
        let _ = tx.send(message(Outbound::Hello(hello))).await;
        let mut inbound = match RoutingDiscoveryClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(routing_message_limit())
            .stream_routes(ReceiverStream::new(rx))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return format!("the control plane refused the stream: {status}"),
        };
        metrics::gauge!("meridian_proxy_control_plane_connected").set(1.0);
        tracing::info!(control_plane = %url, held_version, "subscribed to routing tables");
        outage.recovered(url);
        backoff.reset();
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return "the control plane closed the stream".into(),
                Err(status) => return status.to_string(),
            };
            let answer = self.apply(response, cache);
            if tx.send(message(answer)).await.is_err() {
                return "the stream closed".into();
            }
        }
    }

    /// Applies one update, queueing the result for the cache file; the ACK or NACK to send.
    fn apply(&self, response: pb::StreamRoutesResponse, cache: Option<&CacheWriter>) -> Outbound {
        let current = self.table.current();
        let base = current.as_ref().map(|t| t.data.clone()).unwrap_or_default();
        let Some(update) = response.update else {
            return nack(base.version, response.nonce, "the update was empty".into());
        };
        match base.apply(update, &self.identity.federation) {
            Ok(data) => {
                let version = data.version;
                if let Some(cache) = cache {
                    cache.persist(data.to_snapshot());
                }
                self.install(data, TableSource::Stream);
                metrics::counter!("meridian_proxy_table_updates_total", "result" => "applied")
                    .increment(1);
                Outbound::Ack(pb::Ack {
                    version,
                    nonce: response.nonce,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, held_version = base.version, "refusing a routing-table update; keeping the current table");
                metrics::counter!("meridian_proxy_table_updates_total", "result" => "refused")
                    .increment(1);
                nack(base.version, response.nonce, e.to_string())
            }
        }
    }

    fn install(&self, data: TableData, source: TableSource) {
        let previous = self.table.current();
        let table = ProxyTable::build(
            data,
            &self.identity,
            previous.as_deref(),
            source,
            &self.upstream,
        );
        tracing::debug!(
            version = table.version(),
            ?source,
            "routing table installed"
        );
        self.table.store(table);
        self.readiness.set(true);
    }
}

/// `error` and its causes, so a failed TLS handshake says why ("invalid peer
/// certificate: UnknownIssuer") rather than only "transport error".
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn message(message: Outbound) -> pb::StreamRoutesRequest {
    pb::StreamRoutesRequest {
        message: Some(message),
    }
}

fn nack(version: u64, nonce: String, error: String) -> Outbound {
    Outbound::Nack(pb::Nack {
        version,
        nonce,
        error,
    })
}

/// Keeps `meridian_proxy_table_age_seconds` current: how long ago the table in force was
/// applied.
pub async fn report_table_age(table: TableHandle, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        if let Some(t) = table.current() {
            let age = SystemTime::now()
                .duration_since(t.applied_at)
                .unwrap_or_default();
            metrics::gauge!("meridian_proxy_table_age_seconds").set(age.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use meridian_proto::v1::stream_routes_response::Update;

    use super::*;

    fn subscription() -> Subscription {
        Subscription {
            identity: ProxyIdentity {
                id: "proxy-1".into(),
                federation: "prod".into(),
                region: "eu".into(),
                zone: "eu-a".into(),
            },
            auth: BearerAuth::default(),
            control_planes: vec![],
            control_plane_tls: None,
            upstream: UpstreamSettings::default(),
            cache: None,
            table: TableHandle::default(),
            readiness: Readiness::default(),
        }
    }

    fn snapshot(version: u64, federation: &str) -> pb::StreamRoutesResponse {
        pb::StreamRoutesResponse {
            nonce: format!("n{version}"),
            update: Some(Update::Snapshot(pb::RoutingTable {
                version,
                federation: federation.into(),
                nodes: vec![pb::Node {
                    id: format!("node-{version}"),
                    address: "127.0.0.1:9".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        }
    }

    fn delta(base_version: u64, version: u64) -> pb::StreamRoutesResponse {
        pb::StreamRoutesResponse {
            nonce: format!("d{version}"),
            update: Some(Update::Delta(pb::RoutingDelta {
                base_version,
                version,
                removed_nodes: vec![format!("node-{base_version}")],
                ..Default::default()
            })),
        }
    }

    /// The table in force: its version, federation and nodes.
    fn held(sub: &Subscription) -> (u64, String, Vec<String>) {
        let table = sub.table.current().expect("a table is installed");
        let nodes = table.data.nodes.keys().cloned().collect();
        (table.version(), table.data.federation.clone(), nodes)
    }

    fn expect_ack(answer: Outbound, version: u64) {
        match answer {
            Outbound::Ack(ack) => assert_eq!(ack.version, version),
            other => panic!("expected an ACK of version {version}, got {other:?}"),
        }
    }

    fn expect_nack(answer: Outbound) -> pb::Nack {
        match answer {
            Outbound::Nack(nack) => nack,
            other => panic!("expected a NACK, got {other:?}"),
        }
    }

    fn at_version_5() -> Subscription {
        let sub = subscription();
        expect_ack(sub.apply(snapshot(5, "prod"), None), 5);
        sub
    }

    #[tokio::test]
    async fn a_table_for_another_federation_is_nacked_and_not_applied() {
        let sub = at_version_5();
        let nack = expect_nack(sub.apply(snapshot(6, "staging"), None));
        assert_eq!(
            nack.error,
            "the control plane sent a table for federation \"staging\"; this proxy serves \"prod\" (--federation)"
        );
        assert_eq!((nack.version, nack.nonce.as_str()), (5, "n6"));
        assert_eq!(held(&sub), (5, "prod".into(), vec!["node-5".into()]));
    }

    #[tokio::test]
    async fn a_first_table_for_another_federation_leaves_the_proxy_without_one() {
        let sub = subscription();
        expect_nack(sub.apply(snapshot(6, "staging"), None));
        assert!(sub.table.current().is_none());
        assert!(!sub.readiness.is_ready());
    }

    #[tokio::test]
    async fn an_older_version_is_nacked_and_not_applied() {
        let sub = at_version_5();
        let nack = expect_nack(sub.apply(snapshot(4, "prod"), None));
        assert!(nack.error.contains("version 4"), "{}", nack.error);
        assert!(nack.error.contains("newer version 5"), "{}", nack.error);
        expect_nack(sub.apply(delta(5, 3), None));
        assert_eq!(held(&sub), (5, "prod".into(), vec!["node-5".into()]));
    }

    #[tokio::test]
    async fn a_reconnect_resending_the_held_version_is_acked() {
        let sub = at_version_5();
        expect_ack(sub.apply(snapshot(5, "prod"), None), 5);
        expect_ack(sub.apply(snapshot(7, "prod"), None), 7);
        assert_eq!(held(&sub), (7, "prod".into(), vec!["node-7".into()]));
    }

    #[tokio::test]
    async fn only_applied_tables_reach_the_cache_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.bin");
        let sub = subscription();
        let cache = CacheWriter::new(path.clone());
        expect_ack(sub.apply(snapshot(5, "prod"), Some(&cache)), 5);
        expect_nack(sub.apply(snapshot(9, "staging"), Some(&cache)));
        expect_nack(sub.apply(snapshot(4, "prod"), Some(&cache)));
        cache.flushed().await;
        let on_disk = cache_file::load(&path)
            .unwrap()
            .expect("the cache was written");
        assert_eq!((on_disk.version, on_disk.federation.as_str()), (5, "prod"));
    }
}
