//! ORCA backend metrics on every response: the `endpoint-load-metrics-bin` trailer, an
//! `xds.data.orca.v3.OrcaLoadReport` ([`report`]) whose cpu and application utilisation
//! are the node's reported utilisation ([`NodeBehaviour::utilization`]), with its rps over
//! the last second and, as named metrics, its calls in flight from every client
//! (`in_flight`) and its recent latency (`latency_ms`). Proxies pass it on in their load
//! reports. Memory utilisation is not reported (0). The out-of-band stream
//! ([`super::orca_stream`]) sends the same report.
//!
//! Like [`super::served_by`], a layer around the whole server: tonic sets trailers only
//! on errors, so the report goes into the body's trailers frame, or into the headers of
//! a trailers-only response.

use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use meridian_proto::xds::orca::OrcaLoadReport;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};

use super::NodeBehaviour;

/// The named metric holding the node's calls in flight, from every client.
pub const IN_FLIGHT_METRIC: &str = "in_flight";
/// The named metric holding the node's recent latency, ms.
pub const LATENCY_METRIC: &str = "latency_ms";

const ORCA_HEADER: HeaderName = HeaderName::from_static(meridian_proto::ORCA_TRAILER);

/// What the node says of its load now.
pub fn report(behaviour: &NodeBehaviour) -> OrcaLoadReport {
    let utilization = behaviour.utilization();
    OrcaLoadReport {
        cpu_utilization: utilization,
        application_utilization: utilization,
        rps_fractional: behaviour.rps(),
        named_metrics: [
            (
                IN_FLIGHT_METRIC.to_owned(),
                f64::from(behaviour.in_flight()),
            ),
            (LATENCY_METRIC.to_owned(), behaviour.recent_latency_ms()),
        ]
        .into(),
        ..Default::default()
    }
}

/// `response` with the node's ORCA report in its trailers.
pub fn add_load_report(
    response: http::Response<tonic::body::Body>,
    behaviour: &NodeBehaviour,
) -> http::Response<tonic::body::Body> {
    let Some(report) = encoded(&report(behaviour)) else {
        return response;
    };
    let (mut parts, body) = response.into_parts();
    if parts.headers.contains_key("grpc-status") {
        parts.headers.insert(ORCA_HEADER, report);
        return http::Response::from_parts(parts, body);
    }
    let body = body.map_frame(move |mut frame| {
        if let Some(trailers) = frame.trailers_mut() {
            trailers.insert(ORCA_HEADER, report.clone());
        }
        frame
    });
    http::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// The report as a binary metadata value (base64 of the protobuf encoding).
pub fn encoded(report: &OrcaLoadReport) -> Option<HeaderValue> {
    let mut metadata = MetadataMap::new();
    metadata.insert_bin(
        meridian_proto::ORCA_TRAILER,
        MetadataValue::from_bytes(&report.encode_to_vec()),
    );
    metadata.into_headers().remove(ORCA_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_decodes_to_the_reported_utilisation() {
        let behaviour = NodeBehaviour::new(
            "n1".into(),
            0,
            0.0,
            tonic_health::server::HealthReporter::new(),
            false,
        );
        behaviour.set_utilization(Some(0.75));
        let value = encoded(&report(&behaviour)).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(ORCA_HEADER, value);
        let metadata = MetadataMap::from_headers(headers);
        let bytes = metadata
            .get_bin(meridian_proto::ORCA_TRAILER)
            .unwrap()
            .to_bytes()
            .unwrap();
        let report = OrcaLoadReport::decode(bytes).unwrap();
        assert_eq!(report.cpu_utilization, 0.75);
        assert_eq!(report.application_utilization, 0.75);
        assert_eq!(report.named_metrics[IN_FLIGHT_METRIC], 0.0);
    }
}
