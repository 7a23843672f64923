//! `demo.v1.DemoControl`: lets tests change a running node's health, latency, error rate,
//! keep-alives and the utilisation it reports in ORCA trailers. Its calls skip the knobs they set, so a node made to fail every call
//! can still be repaired.

use std::sync::Arc;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_server::DemoControl;
use tonic::{Request, Response, Status};

use super::behaviour::NodeBehaviour;

/// The DemoControl service of one node.
pub struct ControlService {
    behaviour: Arc<NodeBehaviour>,
}

impl ControlService {
    pub fn new(behaviour: Arc<NodeBehaviour>) -> Self {
        ControlService { behaviour }
    }
}

#[tonic::async_trait]
impl DemoControl for ControlService {
    async fn set_health(
        &self,
        request: Request<demo::SetHealthRequest>,
    ) -> Result<Response<demo::ControlReply>, Status> {
        let serving = request.into_inner().serving;
        self.behaviour.set_serving(serving).await;
        tracing::info!(serving, "health set");
        Ok(Response::new(demo::ControlReply {}))
    }

    async fn set_latency(
        &self,
        request: Request<demo::SetLatencyRequest>,
    ) -> Result<Response<demo::ControlReply>, Status> {
        let latency_ms = request.into_inner().latency_ms;
        self.behaviour.set_latency_ms(latency_ms);
        tracing::info!(latency_ms, "latency set");
        Ok(Response::new(demo::ControlReply {}))
    }

    async fn set_error_rate(
        &self,
        request: Request<demo::SetErrorRateRequest>,
    ) -> Result<Response<demo::ControlReply>, Status> {
        let rate = request.into_inner().rate;
        if !(0.0..=1.0).contains(&rate) {
            return Err(Status::invalid_argument(format!(
                "rate: {rate} is outside 0 to 1"
            )));
        }
        self.behaviour.set_error_rate(rate);
        tracing::info!(rate, "error rate set");
        Ok(Response::new(demo::ControlReply {}))
    }

    async fn set_keep_alive(
        &self,
        request: Request<demo::SetKeepAliveRequest>,
    ) -> Result<Response<demo::ControlReply>, Status> {
        if !self.behaviour.registers() {
            return Err(Status::failed_precondition(
                "this node does not register itself (it was started without --register-with)",
            ));
        }
        let enabled = request.into_inner().enabled;
        self.behaviour.set_keep_alive(enabled);
        tracing::info!(enabled, "keep-alives set");
        Ok(Response::new(demo::ControlReply {}))
    }

    async fn set_utilization(
        &self,
        request: Request<demo::SetUtilizationRequest>,
    ) -> Result<Response<demo::ControlReply>, Status> {
        let utilization = request.into_inner().utilization;
        if let Some(value) = utilization
            && !(value >= 0.0 && value.is_finite())
        {
            return Err(Status::invalid_argument(format!(
                "utilization: {value} is not a non-negative number"
            )));
        }
        self.behaviour.set_utilization(utilization);
        tracing::info!(?utilization, "reported utilisation set");
        Ok(Response::new(demo::ControlReply {}))
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::server::HealthReporter;

    use super::*;

    #[tokio::test]
    async fn a_utilisation_that_is_no_fraction_is_refused_and_changes_nothing() {
        let behaviour = Arc::new(NodeBehaviour::new(
            "eu-1".into(),
            0,
            0.0,
            HealthReporter::new(),
            false,
        ));
        let control = ControlService::new(Arc::clone(&behaviour));
        let set = |utilization| {
            control.set_utilization(Request::new(demo::SetUtilizationRequest { utilization }))
        };
        set(Some(0.6)).await.expect("0.6 is a utilisation");
        for bad in [-0.1, f64::NAN, f64::INFINITY] {
            let status = set(Some(bad)).await.expect_err("refused");
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert_eq!(behaviour.utilization(), 0.6);
        set(None).await.expect("back to derived");
        assert_eq!(behaviour.utilization(), 0.0, "no calls in flight");
    }
}
