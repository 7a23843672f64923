//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`: ORCA reports out of band. A
//! client (a proxy keeping its estimate of the node fresh, or probing it) opens a stream
//! with the interval it wants; the node sends its report ([`super::orca::report`]) at
//! once, then every interval, until the client goes away. The interval is clamped to
//! [`MIN_INTERVAL`]..[`MAX_INTERVAL`] (none asked: [`DEFAULT_INTERVAL`]), and at most
//! [`MAX_STREAMS`] streams are open at once (more: RESOURCE_EXHAUSTED), so no client can
//! make the node report in a busy loop or hold unbounded tasks. Streams end when the node
//! shuts down, so a graceful stop does not wait on them.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::xds::orca::OrcaLoadReport;
use meridian_proto::xds::orca_service::OrcaLoadReportRequest;
use meridian_proto::xds::orca_service::open_rca_service_server::OpenRcaService;
use meridian_shared::Shutdown;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::NodeBehaviour;

/// The shortest interval the node reports at.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// The longest interval the node reports at.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The interval when the request names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Most streams open at once.
pub const MAX_STREAMS: u32 = 1_024;

/// The OpenRcaService of one node.
pub struct OrcaStreamService {
    behaviour: Arc<NodeBehaviour>,
    shutdown: Shutdown,
}

impl OrcaStreamService {
    /// Streams end at `shutdown`.
    pub fn new(behaviour: Arc<NodeBehaviour>, shutdown: Shutdown) -> Self {
        OrcaStreamService {
            behaviour,
            shutdown,
        }
    }
}

/// The interval to report at for a request's `report_interval`.
pub fn interval_of(request: &OrcaLoadReportRequest) -> Duration {
    let asked = request
        .report_interval
        .and_then(|d| Duration::try_from(d).ok())
        .filter(|d| !d.is_zero());
    asked
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
}

#[tonic::async_trait]
impl OpenRcaService for OrcaStreamService {
    type StreamCoreMetricsStream =
        Pin<Box<dyn Stream<Item = Result<OrcaLoadReport, Status>> + Send + 'static>>;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<Self::StreamCoreMetricsStream>, Status> {
        if self.behaviour.orca_streams() >= MAX_STREAMS {
            return Err(Status::resource_exhausted(format!(
                "this node serves at most {MAX_STREAMS} ORCA streams at once; close one first"
            )));
        }
        let interval = interval_of(request.get_ref());
        let guard = self.behaviour.open_orca_stream();
        let behaviour = Arc::clone(&self.behaviour);
        let shutdown = self.shutdown.clone();
        let (reports, received) = mpsc::channel(1);
        tokio::spawn(async move {
            let _open = guard;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // The first tick is at once; the stream ends when the client goes away.
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = reports.closed() => return,
                    () = shutdown.wait() => return,
                }
                let report = super::orca::report(&behaviour);
                if reports.send(Ok(report)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(received))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_is_clamped_and_defaults_to_a_second() {
        let asking = |ms: i64| OrcaLoadReportRequest {
            report_interval: Some(prost_types::Duration {
                seconds: ms / 1_000,
                nanos: (ms % 1_000) as i32 * 1_000_000,
            }),
            ..Default::default()
        };
        assert_eq!(interval_of(&Default::default()), DEFAULT_INTERVAL);
        assert_eq!(interval_of(&asking(0)), DEFAULT_INTERVAL);
        assert_eq!(interval_of(&asking(1)), MIN_INTERVAL);
        assert_eq!(interval_of(&asking(250)), Duration::from_millis(250));
        assert_eq!(interval_of(&asking(3_600_000)), MAX_INTERVAL);
        assert_eq!(interval_of(&asking(-5_000)), DEFAULT_INTERVAL, "negative");
    }
}
