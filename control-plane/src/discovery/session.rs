//! One proxy's routing-table stream after its Hello: send it what brings it up to date,
//! at most one update in flight, then wait for its ACK or NACK before sending the next.
//! Changes published meanwhile are not queued: the next update is computed from the
//! latest table when the proxy answers, as a delta from what it acknowledged (or a
//! snapshot when the delta would not be smaller). A NACKed version is never re-sent: only
//! a newer version goes out after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use meridian_proto::v1 as pb;
use meridian_proto::v1::stream_routes_request::Message as Inbound;
use meridian_shared::Shutdown;
use meridian_shared::domain::EventKind;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::Streaming;

use super::proxies::{NackRecord, ProxyRegistry};
use crate::events::EventLog;
use crate::routing::{EncodedUpdate, FederationTable, Published};

/// How long a reconnecting proxy may wait for this replica to catch up with the version
/// it holds before it is sent a snapshot.
const CATCH_UP: Duration = Duration::from_secs(5);

/// Longest NACK reason kept in the proxy record and the event history, bytes.
const MAX_NACK_TEXT: usize = 512;

static NONCES: AtomicU64 = AtomicU64::new(1);

/// What a session needs from the control plane.
pub struct SessionContext {
    pub tables: watch::Receiver<Arc<Published>>,
    pub proxies: Arc<ProxyRegistry>,
    pub events: EventLog,
    pub shutdown: Shutdown,
}

/// One message for the proxy: a `StreamRoutesResponse` whose update is already encoded.
pub struct Outbound {
    pub nonce: String,
    pub update: EncodedUpdate,
}

struct InFlight {
    nonce: String,
    table: FederationTable,
    changed_at: Option<Instant>,
}

pub struct Session {
    stream: u64,
    proxy_id: String,
    federation: String,
    /// The table the proxy holds, as far as this session knows.
    acked: Option<FederationTable>,
    in_flight: Option<InFlight>,
    /// Highest version the proxy refused; only newer versions are sent after it.
    nacked: u64,
}

impl Session {
    pub fn new(stream: u64, hello: &pb::Hello) -> Self {
        Session {
            stream,
            proxy_id: hello.proxy_id.clone(),
            federation: hello.federation.clone(),
            acked: None,
            in_flight: None,
            nacked: 0,
        }
    }

    /// Runs until the proxy hangs up, the stream breaks or the process stops.
    pub async fn run(
        mut self,
        held_version: u64,
        ctx: Arc<SessionContext>,
        mut inbound: Streaming<pb::StreamRoutesRequest>,
        outbound: mpsc::Sender<Outbound>,
    ) {
        let mut tables = ctx.tables.clone();
        self.acked = resume_point(&mut tables, &self.federation, held_version).await;
        loop {
            if self.in_flight.is_none() {
                let published = tables.borrow_and_update().clone();
                if let Some(response) = self.next_update(&published) {
                    let sent = self.in_flight.as_ref().map_or(0, |f| f.table.version);
                    if outbound.send(response).await.is_err() {
                        break;
                    }
                    ctx.proxies
                        .update(self.stream, &self.proxy_id, |r| r.sent_version = sent);
                }
            }
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle(request, &ctx).await,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(proxy = %self.proxy_id, %status, "routing stream broke");
                        break;
                    }
                },
                changed = tables.changed(), if self.in_flight.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = ctx.shutdown.wait() => break,
            }
        }
    }

    /// The update that brings the proxy to the current table, if it needs one; marks it
    /// in flight.
    fn next_update(&mut self, published: &Published) -> Option<Outbound> {
        let current = published.tables.get(&self.federation)?;
        let known = self
            .acked
            .as_ref()
            .map_or(0, |a| a.version)
            .max(self.nacked);
        if current.version <= known {
            return None;
        }
        let update = current.update_from(&self.federation, self.acked.as_ref());
        metrics::counter!("meridian_control_pushes_total", "kind" => update.kind.as_str())
            .increment(1);
        let nonce = NONCES.fetch_add(1, Ordering::Relaxed).to_string();
        self.in_flight = Some(InFlight {
            nonce: nonce.clone(),
            table: current.clone(),
            changed_at: published.changed_at,
        });
        Some(Outbound { nonce, update })
    }

    async fn handle(&mut self, request: pb::StreamRoutesRequest, ctx: &SessionContext) {
        match request.message {
            Some(Inbound::Ack(ack)) => {
                let Some(in_flight) = self.in_flight.take_if(|f| f.nonce == ack.nonce) else {
                    tracing::debug!(proxy = %self.proxy_id, nonce = %ack.nonce, "ignoring an ACK for an update not in flight");
                    return;
                };
                metrics::counter!("meridian_control_acks_total").increment(1);
                if let Some(changed_at) = in_flight.changed_at {
                    metrics::histogram!("meridian_control_push_latency_seconds")
                        .record(changed_at.elapsed().as_secs_f64());
                }
                let version = in_flight.table.version;
                self.acked = Some(in_flight.table);
                ctx.proxies
                    .update(self.stream, &self.proxy_id, |r| r.acked_version = version);
            }
            Some(Inbound::Nack(nack)) => {
                let Some(in_flight) = self.in_flight.take_if(|f| f.nonce == nack.nonce) else {
                    return;
                };
                metrics::counter!("meridian_control_nacks_total").increment(1);
                let version = in_flight.table.version;
                self.nacked = self.nacked.max(version);
                let error = truncated(&nack.error, MAX_NACK_TEXT);
                let record = NackRecord {
                    version,
                    error: error.to_owned(),
                    at: SystemTime::now(),
                };
                ctx.proxies
                    .update(self.stream, &self.proxy_id, |r| r.last_nack = Some(record));
                ctx.events
                    .record(
                        EventKind::ProxyNack,
                        format!("proxy/{}", self.proxy_id),
                        format!("refused table version {version}: {error}"),
                        "proxy".into(),
                    )
                    .await;
            }
            Some(Inbound::Hello(_)) | None => {
                tracing::debug!(proxy = %self.proxy_id, "ignoring a repeated Hello or empty message");
            }
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What the proxy can be taken to hold, given the version it says it holds.
///
/// Versions are store revisions, so a version at or below the revision this replica has
/// checked, and not older than its current table, names the current content (nothing
/// routable changed in between). A version from this replica's recent history gets a
/// delta. Anything else gets a snapshot. A version newer than this replica has seen waits
/// (briefly) for it to catch up, so a proxy moving between replicas never goes back.
async fn resume_point(
    tables: &mut watch::Receiver<Arc<Published>>,
    federation: &str,
    held: u64,
) -> Option<FederationTable> {
    if held == 0 {
        return None;
    }
    let caught_up = tokio::time::timeout(CATCH_UP, tables.wait_for(|p| p.revision as u64 >= held))
        .await
        .is_ok_and(|r| r.is_ok());
    if !caught_up {
        return None;
    }
    let published = tables.borrow().clone();
    if let Some(table) = published.at_version(federation, held) {
        return Some(table.clone());
    }
    let current = published.tables.get(federation)?;
    (current.version < held && held <= published.revision as u64)
        .then(|| FederationTable::new(held, Arc::clone(&current.content)))
}
