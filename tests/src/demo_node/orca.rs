//! ORCA backend metrics on every response: the `endpoint-load-metrics-bin` trailer, an
//! `xds.data.orca.v3.OrcaLoadReport` whose cpu and application utilisation are the
//! node's reported utilisation ([`NodeBehaviour::utilization`](super::NodeBehaviour)).
//! Proxies pass it on in their load reports. Memory utilisation and rps are not
//! reported (0).
//!
//! Like [`super::served_by`], a layer around the whole server: tonic sets trailers only
//! on errors, so the report goes into the body's trailers frame, or into the headers of
//! a trailers-only response.

use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use meridian_proto::xds::orca::OrcaLoadReport;
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};

const ORCA_HEADER: HeaderName = HeaderName::from_static(meridian_proto::ORCA_TRAILER);

/// `response` with an ORCA report of `utilization` in its trailers.
pub fn add_load_report(
    response: http::Response<tonic::body::Body>,
    utilization: f64,
) -> http::Response<tonic::body::Body> {
    let Some(report) = encoded(utilization) else {
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
pub fn encoded(utilization: f64) -> Option<HeaderValue> {
    let report = OrcaLoadReport {
        cpu_utilization: utilization,
        application_utilization: utilization,
        ..Default::default()
    };
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
        let value = encoded(0.75).unwrap();
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
    }
}
