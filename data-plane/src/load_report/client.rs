//! The `RoutingDiscovery/ReportLoad` client: one task per proxy that streams a
//! `LoadReport` to a control plane every `report_interval_ms` the control plane asks for
//! ([`DEFAULT_INTERVAL`] until its first answer), with the same credential and TLS as the
//! routing subscription. Each stream opens with a report at once (the figures since the
//! last delivered report), so the control plane's answer sets the interval and figures
//! kept during an outage go out without waiting. The control plane answers every report;
//! the answer is what marks the report delivered (see [`super::report`]): a report left
//! unanswered when the stream breaks is merged into the next one. The answer also carries
//! this proxy's share of each rate-limited (service, tier), which goes to the table's
//! limiters ([`crate::admission::rate`]). A broken stream is reopened with jittered
//! exponential backoff on the next configured replica. The task ends on shutdown.

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_shared::credentials::BearerAuth;
use meridian_shared::tls::ClientTls;
use meridian_shared::{Backoff, Shutdown};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::report::Undelivered;
use crate::outage_log::OutageLog;
use crate::table::subscription::error_chain;
use crate::table::{ProxyIdentity, TableHandle};

/// The interval before the control plane has said which it wants.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(5_000);
/// Bounds on the interval a control plane may ask for: faster would flood it, slower
/// would leave scaling blind.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// How long a report may wait for its answer before the stream is given up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct LoadReporter {
    pub identity: ProxyIdentity,
    /// The proxy-role credential presented to the control plane.
    pub auth: BearerAuth,
    pub control_planes: Vec<String>,
    /// TLS for `https://` control planes (`http://` ones are dialled in plaintext).
    pub control_plane_tls: Option<ClientTls>,
    /// The table whose endpoints' load is reported.
    pub table: TableHandle,
}

/// What the reporter carries from one stream to the next.
struct ReportState {
    undelivered: Undelivered,
    interval: Duration,
}

impl LoadReporter {
    /// Reports until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) {
        if self.control_planes.is_empty() {
            return;
        }
        let mut state = ReportState {
            undelivered: Undelivered::new(Instant::now()),
            interval: DEFAULT_INTERVAL,
        };
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut replica = 0usize;
        let mut outage = OutageLog::new(
            "load report stream",
            "the figures are kept for the next report",
        );
        loop {
            let url = &self.control_planes[replica % self.control_planes.len()];
            let ended = tokio::select! {
                _ = shutdown.wait() => return,
                ended = self.stream(url, &mut state, &mut backoff, &mut outage) => ended,
            };
            let delay = backoff.next_delay();
            outage.failed(url, &ended, delay);
            replica += 1;
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One stream: reports until it breaks, and returns why.
    async fn stream(
        &self,
        url: &str,
        state: &mut ReportState,
        backoff: &mut Backoff,
        outage: &mut OutageLog,
    ) -> String {
        let channel = meridian_shared::tls::connect(url, self.control_plane_tls.as_ref(), |e| {
            e.connect_timeout(Duration::from_secs(2))
        })
        .await;
        let channel = match channel {
            Ok(channel) => channel,
            Err(e) => return error_chain(&e),
        };
        let (tx, rx) = mpsc::channel(1);
        let mut answers = match RoutingDiscoveryClient::with_interceptor(channel, self.auth.clone())
            .report_load(ReceiverStream::new(rx))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => {
                return format!("the control plane refused the load report stream: {status}");
            }
        };
        tracing::info!(control_plane = %url, interval = ?state.interval, "reporting load");
        outage.recovered(url);
        let mut next = state.undelivered.ready_at();
        loop {
            tokio::time::sleep_until(next).await;
            let table = self.table.current();
            state.undelivered.gather(table.as_deref());
            let report = state
                .undelivered
                .report(&self.identity, table.as_deref(), Instant::now());
            drop(table);
            let endpoints = report.endpoints.len();
            if tx.send(report).await.is_err() {
                return "the load report stream closed".into();
            }
            let answer = match tokio::time::timeout(ANSWER_TIMEOUT, answers.message()).await {
                Ok(Ok(Some(answer))) => answer,
                Ok(Ok(None)) => return "the control plane closed the load report stream".into(),
                Ok(Err(status)) => return status.to_string(),
                Err(_) => {
                    return format!(
                        "the control plane did not answer a load report within {ANSWER_TIMEOUT:?}"
                    );
                }
            };
            let now = Instant::now();
            state.undelivered.delivered(now);
            if let Some(table) = self.table.current() {
                table.apply_rate_shares(&answer);
            }
            metrics::counter!("meridian_proxy_load_reports_total").increment(1);
            backoff.reset();
            let wanted = interval_of(&answer);
            if wanted != state.interval {
                tracing::info!(interval = ?wanted, "the control plane changed the load report interval");
                state.interval = wanted;
            }
            tracing::trace!(endpoints, "load report delivered");
            next = now + state.interval;
        }
    }
}

/// The interval an answer asks for, within bounds; the default for 0.
fn interval_of(answer: &pb::LoadReportResponse) -> Duration {
    match answer.report_interval_ms {
        0 => DEFAULT_INTERVAL,
        ms => Duration::from_millis(u64::from(ms)).clamp(MIN_INTERVAL, MAX_INTERVAL),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use meridian_proto::v1::routing_discovery_server::{RoutingDiscovery, RoutingDiscoveryServer};
    use tokio_stream::Stream;
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status, Streaming};

    use super::*;
    use crate::load_report::report::tests::{ECHO, identity, load_of, table};

    #[test]
    fn the_interval_follows_the_control_plane_within_bounds() {
        let answer = |ms| pb::LoadReportResponse {
            report_interval_ms: ms,
            ..Default::default()
        };
        assert_eq!(interval_of(&answer(0)), DEFAULT_INTERVAL);
        assert_eq!(interval_of(&answer(800)), Duration::from_millis(800));
        assert_eq!(interval_of(&answer(1)), MIN_INTERVAL);
        assert_eq!(interval_of(&answer(u32::MAX)), MAX_INTERVAL);
    }

    /// A control plane that records the reports of each stream; its first stream breaks
    /// after one report, unanswered.
    #[derive(Clone, Default)]
    struct FlakyControlPlane {
        streams: Arc<Mutex<Vec<Vec<pb::LoadReport>>>>,
    }

    type Answers = Pin<Box<dyn Stream<Item = Result<pb::LoadReportResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl RoutingDiscovery for FlakyControlPlane {
        type StreamRoutesStream =
            Pin<Box<dyn Stream<Item = Result<pb::StreamRoutesResponse, Status>> + Send>>;

        async fn stream_routes(
            &self,
            _request: Request<Streaming<pb::StreamRoutesRequest>>,
        ) -> Result<Response<Self::StreamRoutesStream>, Status> {
            Err(Status::unimplemented("load reports only"))
        }

        type ReportLoadStream = Answers;

        async fn report_load(
            &self,
            request: Request<Streaming<pb::LoadReport>>,
        ) -> Result<Response<Answers>, Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(4);
            let streams = Arc::clone(&self.streams);
            let stream = {
                let mut streams = streams.lock().unwrap();
                streams.push(Vec::new());
                streams.len() - 1
            };
            tokio::spawn(async move {
                while let Ok(Some(report)) = inbound.message().await {
                    streams.lock().unwrap()[stream].push(report);
                    let answer = if stream == 0 {
                        Err(Status::unavailable("stepping down"))
                    } else {
                        Ok(pb::LoadReportResponse {
                            report_interval_ms: 100,
                            ..Default::default()
                        })
                    };
                    if tx.send(answer).await.is_err() || stream == 0 {
                        break;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    #[tokio::test]
    async fn a_report_lost_with_its_stream_goes_out_again_on_the_next() {
        let control_plane = FlakyControlPlane::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RoutingDiscoveryServer::new(control_plane.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let handle = TableHandle::default();
        handle.store(table(1, &["eu-1"], None));
        let load = load_of(&handle.current().unwrap(), ECHO, "eu-1");
        for code in [0, 0, 14] {
            load.record(code, Duration::from_millis(2));
        }
        let shutdown = Shutdown::new();
        let reporter = tokio::spawn(
            LoadReporter {
                identity: identity(),
                auth: BearerAuth::default(),
                control_planes: vec![url],
                control_plane_tls: None,
                table: handle,
            }
            .run(shutdown.clone()),
        );

        // The first stream's report is never answered; the second stream's first report
        // carries the same calls, then nothing more is left to report.
        let deadline = Instant::now() + Duration::from_secs(10);
        let streams = loop {
            let streams = control_plane.streams.lock().unwrap().clone();
            if streams.len() >= 2 && streams[1].len() >= 2 {
                break streams;
            }
            assert!(Instant::now() < deadline, "reports so far: {streams:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let calls = |report: &pb::LoadReport| {
            let entry = report.endpoints.iter().find(|e| e.node_id == "eu-1");
            entry.map(|e| (e.requests, e.errors))
        };
        assert_eq!(calls(&streams[0][0]), Some((3, 1)));
        assert_eq!(
            calls(&streams[1][0]),
            Some((3, 1)),
            "the unanswered report is sent again"
        );
        assert_eq!(
            calls(&streams[1][1]),
            None,
            "delivered figures are not sent twice"
        );

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), reporter)
            .await
            .expect("the reporter stops on shutdown")
            .unwrap();
    }
}
