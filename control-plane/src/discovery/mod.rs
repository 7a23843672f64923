//! `meridian.v1.RoutingDiscovery`: proxies subscribe to their federation's routing table
//! ([`session`]) and send load reports, whose answers carry each proxy's share of the
//! federation's rate limits ([`crate::rate_shares`]). Every replica serves it, leader or
//! not.

pub mod proxies;
pub mod session;
pub mod wire;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use futures::Stream;
use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_server::RoutingDiscovery;
use meridian_proto::v1::stream_routes_request::Message as Inbound;
use meridian_shared::domain::ServicePolicy;
use meridian_shared::names::name_problem;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use self::proxies::ProxyRecord;
use self::session::{Outbound, Session, SessionContext};
use crate::auth::{self, Caller};
use crate::rate_shares::RateShareBook;
use crate::scaling::load::report::{self, InvalidReport};
use crate::scaling::load::{LoadAggregator, report_interval_ms};
use crate::topology::StateHandle;

/// How long a Hello naming an unknown federation waits for it to appear.
const FEDERATION_GRACE: Duration = Duration::from_secs(2);

/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

static STREAMS: AtomicU64 = AtomicU64::new(1);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct DiscoveryService {
    ctx: Arc<SessionContext>,
    state: StateHandle,
    load: LoadAggregator,
    rate_shares: Arc<RateShareBook>,
}

impl DiscoveryService {
    pub fn new(ctx: SessionContext, state: StateHandle, load: LoadAggregator) -> Self {
        let rate_shares = Arc::new(RateShareBook::new(Arc::clone(&ctx.proxies)));
        DiscoveryService {
            ctx: Arc::new(ctx),
            state,
            load,
            rate_shares,
        }
    }

    /// Refuses a Hello with a bad proxy id, for a federation outside the caller's scope
    /// (before anything says whether it exists), or for an unknown federation.
    async fn check_hello(&self, hello: &pb::Hello, caller: &Caller) -> Result<(), Status> {
        if let Some(problem) = name_problem(&hello.proxy_id) {
            return Err(Status::invalid_argument(format!(
                "hello.proxy_id: {:?} {problem}",
                hello.proxy_id
            )));
        }
        caller.check_federation(&hello.federation)?;
        // A federation created a moment ago may not have reached this replica's view of
        // the store yet: give it a moment before refusing.
        let mut state = self.state.subscribe();
        let known = tokio::time::timeout(
            FEDERATION_GRACE,
            state.wait_for(|s| s.federations.contains_key(&hello.federation)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        if !known {
            return Err(Status::invalid_argument(format!(
                "hello.federation: unknown federation {:?}; create it (meridianctl federations set) or fix the proxy's --federation",
                hello.federation
            )));
        }
        Ok(())
    }

    /// Opens a proxy's routing stream: reads its Hello, checks it, and starts the session
    /// whose updates the returned receiver yields (framed by [`wire`]).
    pub async fn open_stream(
        &self,
        request: Request<Streaming<pb::StreamRoutesRequest>>,
    ) -> Result<mpsc::Receiver<Outbound>, Status> {
        let caller = auth::caller(&request)?.clone();
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no Hello within 10 s of opening the stream")
            })??;
        let Some(pb::StreamRoutesRequest {
            message: Some(Inbound::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a routing stream must be a Hello",
            ));
        };
        self.check_hello(&hello, &caller).await?;

        let stream = STREAMS.fetch_add(1, Ordering::Relaxed);
        let record = ProxyRecord {
            proxy_id: hello.proxy_id.clone(),
            federation: hello.federation.clone(),
            region: hello.region.clone(),
            zone: hello.zone.clone(),
            acked_version: hello.held_version,
            sent_version: 0,
            last_nack: None,
            connected_since: SystemTime::now(),
            peer_address: peer,
            replica: self.ctx.proxies.replica().to_owned(),
            build_version: hello.build_version.clone(),
        };
        self.ctx.proxies.connected(stream, record);
        tracing::info!(proxy = %hello.proxy_id, federation = %hello.federation, held = hello.held_version, "proxy subscribed");

        let (tx, rx) = mpsc::channel(2);
        let ctx = Arc::clone(&self.ctx);
        tokio::spawn(async move {
            let proxy_id = hello.proxy_id.clone();
            Session::new(stream, &hello)
                .run(hello.held_version, Arc::clone(&ctx), inbound, tx)
                .await;
            ctx.proxies.disconnected(stream, &proxy_id);
            tracing::info!(proxy = %proxy_id, "proxy unsubscribed");
        });
        Ok(rx)
    }
}

#[tonic::async_trait]
impl RoutingDiscovery for DiscoveryService {
    type StreamRoutesStream = ResponseStream<pb::StreamRoutesResponse>;

    /// Never called: [`wire::DiscoveryRoutes`] serves this method with shared encodings.
    async fn stream_routes(
        &self,
        _request: Request<Streaming<pb::StreamRoutesRequest>>,
    ) -> Result<Response<Self::StreamRoutesStream>, Status> {
        Err(Status::internal(
            "StreamRoutes reached the generated server; it is served by discovery::wire",
        ))
    }

    type ReportLoadStream = ResponseStream<pb::LoadReportResponse>;

    /// Accepts load reports, checks each and feeds it to this replica's load aggregator
    /// and rate-share book, and answers with the wanted interval and the proxy's rate
    /// shares. A report out of the caller's scope or
    /// malformed ends the stream (PERMISSION_DENIED / INVALID_ARGUMENT naming the field)
    /// and nothing of it is kept.
    async fn report_load(
        &self,
        request: Request<Streaming<pb::LoadReport>>,
    ) -> Result<Response<Self::ReportLoadStream>, Status> {
        let caller = auth::caller(&request)?.clone();
        let mut inbound = request.into_inner();
        let state = self.state.clone();
        let load = self.load.clone();
        let rate_shares = Arc::clone(&self.rate_shares);
        let shutdown = self.ctx.shutdown.clone();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.wait() => break,
                    message = inbound.message() => message,
                };
                let Ok(Some(report)) = message else { break };
                if let Err(refused) = take_report(&caller, &report, &load) {
                    let _ = tx.send(Err(refused)).await;
                    break;
                }
                metrics::counter!("meridian_control_load_reports_total").increment(1);
                let response = answer(&report, &state, &rate_shares).await;
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Checks one load report against the caller's scope and its limits, then aggregates it.
fn take_report(
    caller: &Caller,
    report: &pb::LoadReport,
    load: &LoadAggregator,
) -> Result<(), Status> {
    caller.check_federation(&report.federation)?;
    let checked = report::check(report).map_err(invalid_report)?;
    load.record(checked);
    Ok(())
}

/// The answer to a taken report: the interval wanted and the proxy's rate shares, after
/// its demand is recorded.
async fn answer(
    report: &pb::LoadReport,
    state: &StateHandle,
    rate_shares: &RateShareBook,
) -> pb::LoadReportResponse {
    let (interval_ms, policies) = {
        let state = state.borrow();
        let policies: Vec<ServicePolicy> = state
            .services
            .values()
            .map(|s| &s.value)
            .filter(|p| p.federation == report.federation && p.rate_limit.is_enabled())
            .cloned()
            .collect();
        (report_interval_ms(&state.config.value), policies)
    };
    if policies.is_empty() {
        return pb::LoadReportResponse {
            report_interval_ms: interval_ms,
            ..Default::default()
        };
    }
    let policies: Vec<&ServicePolicy> = policies.iter().collect();
    let now = tokio::time::Instant::now();
    rate_shares.record(
        &report.federation,
        &report.proxy_id,
        Duration::from_millis(u64::from(report.interval_ms)),
        &report.tier_demand,
        &policies,
        now,
    );
    let stale_after = Duration::from_millis(u64::from(interval_ms))
        * crate::rate_shares::demand::STALE_AFTER_INTERVALS;
    let (rate_shares, federation_proxies) = rate_shares
        .shares(
            &report.federation,
            &report.proxy_id,
            &policies,
            stale_after,
            now,
        )
        .await;
    pb::LoadReportResponse {
        report_interval_ms: interval_ms,
        rate_shares,
        federation_proxies,
    }
}

fn invalid_report(invalid: InvalidReport) -> Status {
    Status::invalid_argument(format!(
        "load report refused, nothing of it was kept: {invalid}"
    ))
}
