//! ORCA backend metrics: a node may attach an `xds.data.orca.v3.OrcaLoadReport` to its
//! responses in the `endpoint-load-metrics-bin` trailer (binary metadata, so base64 on
//! the wire), or the same report in Envoy's text form, an `endpoint-load-metrics` trailer
//! `TEXT cpu_utilization=0.3, application_utilization=0.4, rps_fractional=120`. The proxy
//! keeps the latest utilisation and rps each node reported, and how many responses carried
//! a report, for the load report's `OrcaSummary`; the callers also hand the utilisation
//! ([`utilization_of`]) to the endpoint for the adaptive balancer.
//!
//! Only responses that carry the trailer are parsed. A report that cannot be decoded is
//! counted (`meridian_proxy_orca_reports_malformed_total`) and otherwise ignored: it never
//! fails the call, and the trailer still reaches the client untouched.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use meridian_proto::xds::orca::OrcaLoadReport;
use prost::Message;
use tonic::metadata::MetadataMap;

/// The ORCA trailer's name, made once.
pub const ORCA_HEADER: HeaderName = HeaderName::from_static(meridian_proto::ORCA_TRAILER);
/// The text form's trailer (Envoy's `endpoint-load-metrics`, `TEXT k=v, ...`).
pub const ORCA_TEXT_HEADER: HeaderName = HeaderName::from_static("endpoint-load-metrics");

/// What the load report carries of a node's ORCA reports over an interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OrcaFigures {
    pub cpu_utilization: f64,
    pub application_utilization: f64,
    pub mem_utilization: f64,
    pub rps: f64,
    /// Responses that carried a report.
    pub reports: u64,
}

/// Why an ORCA trailer was ignored.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MalformedOrca {
    #[error("the trailer is not valid base64")]
    Base64,
    #[error("the trailer is not an xds.data.orca.v3.OrcaLoadReport: {0}")]
    Protobuf(String),
    #[error("the text trailer is not `TEXT name=number, ...`: {0}")]
    Text(String),
    #[error("{field} = {value} is outside 0 to {max}", max = meridian_proto::MAX_ORCA_UTILIZATION)]
    OutOfRange { field: &'static str, value: f64 },
}

/// The latest report of one node for one service, written by the request path with
/// atomic stores (values as `f64` bits).
#[derive(Debug, Default)]
pub struct OrcaCell {
    cpu: AtomicU64,
    application: AtomicU64,
    mem: AtomicU64,
    rps: AtomicU64,
    reports: AtomicU64,
}

// === impl OrcaCell ===

impl OrcaCell {
    /// Keeps the report in `headers` (trailers, or the headers of a trailers-only
    /// response) if there is one, and returns its utilisation. `node` names the node in
    /// the log of a malformed one.
    pub fn observe_headers(&self, headers: &HeaderMap, node: &str) -> Option<f64> {
        if let Some(value) = headers.get(&ORCA_HEADER) {
            return self.keep(decode_header(value), node);
        }
        let text = headers.get(&ORCA_TEXT_HEADER)?;
        self.keep(decode_text(text.as_bytes()), node)
    }

    /// Keeps the report in tonic `metadata` (a unary response's headers and trailers) if
    /// there is one, and returns its utilisation.
    pub fn observe_metadata(&self, metadata: &MetadataMap, node: &str) -> Option<f64> {
        if let Some(value) = metadata.get_bin(meridian_proto::ORCA_TRAILER) {
            let decoded = value
                .to_bytes()
                .map_err(|_| MalformedOrca::Base64)
                .and_then(|bytes| decode(&bytes));
            return self.keep(decoded, node);
        }
        let text = metadata.get(ORCA_TEXT_HEADER.as_str())?;
        self.keep(decode_text(text.as_bytes()), node)
    }

    fn keep(&self, report: Result<OrcaLoadReport, MalformedOrca>, node: &str) -> Option<f64> {
        match report.and_then(in_range) {
            Ok(report) => {
                self.store(&report);
                Some(utilization_of(&report))
            }
            Err(e) => {
                metrics::counter!("meridian_proxy_orca_reports_malformed_total", "node" => node.to_owned())
                    .increment(1);
                tracing::debug!(%node, error = %e, "ignoring a malformed ORCA trailer (endpoint-load-metrics[-bin]); the node's load report and the adaptive balancer go without it");
                None
            }
        }
    }

    fn store(&self, report: &OrcaLoadReport) {
        let store = |cell: &AtomicU64, value: f64| cell.store(value.to_bits(), Ordering::Relaxed);
        store(&self.cpu, report.cpu_utilization);
        store(&self.application, report.application_utilization);
        store(&self.mem, report.mem_utilization);
        // `rps` is the deprecated integer form; nodes that only send it still count.
        let rps = if report.rps_fractional > 0.0 {
            report.rps_fractional
        } else {
            report.rps as f64
        };
        store(&self.rps, rps);
        self.reports.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest values and the reports since the last take; `None` when there were none.
    pub fn take(&self) -> Option<OrcaFigures> {
        let reports = self.reports.swap(0, Ordering::Relaxed);
        let load = |cell: &AtomicU64| f64::from_bits(cell.load(Ordering::Relaxed));
        (reports > 0).then(|| OrcaFigures {
            cpu_utilization: load(&self.cpu),
            application_utilization: load(&self.application),
            mem_utilization: load(&self.mem),
            rps: load(&self.rps),
            reports,
        })
    }
}

// === impl OrcaFigures ===

impl OrcaFigures {
    /// These figures followed by a later interval's: its values, both counts.
    pub fn followed_by(self, later: OrcaFigures) -> OrcaFigures {
        OrcaFigures {
            reports: self.reports + later.reports,
            ..later
        }
    }
}

/// Decodes a raw `endpoint-load-metrics-bin` header value (base64, padded or not).
pub fn decode_header(value: &http::HeaderValue) -> Result<OrcaLoadReport, MalformedOrca> {
    // tonic's binary metadata does the base64 the gRPC way; this allocation happens
    // only for responses that carry the trailer.
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(ORCA_HEADER, value.clone());
    let metadata = MetadataMap::from_headers(headers);
    let bytes: Bytes = metadata
        .get_bin(meridian_proto::ORCA_TRAILER)
        .ok_or(MalformedOrca::Base64)?
        .to_bytes()
        .map_err(|_| MalformedOrca::Base64)?;
    decode(&bytes)
}

/// `report` if its figures can be kept: utilisations from 0 to
/// [`meridian_proto::MAX_ORCA_UTILIZATION`], a finite non-negative rate. One node's bad
/// figure must not reach the load reports (the control plane would refuse every report of
/// this proxy) or the balancer.
fn in_range(report: OrcaLoadReport) -> Result<OrcaLoadReport, MalformedOrca> {
    let utilization = 0.0..=meridian_proto::MAX_ORCA_UTILIZATION;
    for (field, value) in [
        ("cpu_utilization", report.cpu_utilization),
        ("application_utilization", report.application_utilization),
        ("mem_utilization", report.mem_utilization),
    ] {
        if !utilization.contains(&value) {
            return Err(MalformedOrca::OutOfRange { field, value });
        }
    }
    if !(report.rps_fractional.is_finite() && report.rps_fractional >= 0.0) {
        return Err(MalformedOrca::OutOfRange {
            field: "rps_fractional",
            value: report.rps_fractional,
        });
    }
    Ok(report)
}

fn decode(bytes: &[u8]) -> Result<OrcaLoadReport, MalformedOrca> {
    OrcaLoadReport::decode(bytes).map_err(|e| MalformedOrca::Protobuf(e.to_string()))
}

/// The utilisation a balancer should weigh, as gRPC's weighted round robin does: the
/// application's own figure when it sends one, else the CPU's.
pub fn utilization_of(report: &OrcaLoadReport) -> f64 {
    if report.application_utilization > 0.0 {
        report.application_utilization
    } else {
        report.cpu_utilization
    }
}

/// Decodes the text form, `TEXT name=number, name=number`: the scalar fields by name
/// (`cpu_utilization`, `application_utilization`, `mem_utilization`, `rps_fractional`,
/// `eps`); `named_metrics.*`, `utilization.*` and `request_cost.*` entries are accepted and
/// not kept (nothing here reads them).
pub fn decode_text(value: &[u8]) -> Result<OrcaLoadReport, MalformedOrca> {
    let text = std::str::from_utf8(value).map_err(|_| MalformedOrca::Text("not UTF-8".into()))?;
    let body = text
        .trim()
        .strip_prefix("TEXT ")
        .ok_or_else(|| MalformedOrca::Text("no TEXT prefix".into()))?;
    let mut report = OrcaLoadReport::default();
    for entry in body.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, number) = entry
            .split_once('=')
            .ok_or_else(|| MalformedOrca::Text(format!("{entry:?} has no `=`")))?;
        let number: f64 = number
            .trim()
            .parse()
            .map_err(|_| MalformedOrca::Text(format!("{entry:?} is no number")))?;
        match name.trim() {
            "cpu_utilization" => report.cpu_utilization = number,
            "application_utilization" => report.application_utilization = number,
            "mem_utilization" => report.mem_utilization = number,
            "rps_fractional" => report.rps_fractional = number,
            "eps" => report.eps = number,
            other
                if other.starts_with("named_metrics.")
                    || other.starts_with("utilization.")
                    || other.starts_with("request_cost.") => {}
            other => return Err(MalformedOrca::Text(format!("unknown field {other:?}"))),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    /// The header value a node sends: the report, protobuf-encoded, as binary metadata.
    fn encoded(report: &OrcaLoadReport) -> http::HeaderValue {
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(
            meridian_proto::ORCA_TRAILER,
            MetadataValue::from_bytes(&report.encode_to_vec()),
        );
        metadata.into_headers().remove(ORCA_HEADER).unwrap()
    }

    fn report(cpu: f64) -> OrcaLoadReport {
        OrcaLoadReport {
            cpu_utilization: cpu,
            application_utilization: cpu / 2.0,
            mem_utilization: 0.25,
            rps_fractional: 120.5,
            ..Default::default()
        }
    }

    #[test]
    fn a_trailer_is_decoded_and_the_latest_report_wins() {
        let cell = OrcaCell::default();
        let mut trailers = HeaderMap::new();
        trailers.insert(ORCA_HEADER, encoded(&report(0.4)));
        cell.observe_headers(&trailers, "eu-1");
        trailers.insert(ORCA_HEADER, encoded(&report(0.8)));
        cell.observe_headers(&trailers, "eu-1");
        let figures = cell.take().expect("two reports");
        assert_eq!(
            figures,
            OrcaFigures {
                cpu_utilization: 0.8,
                application_utilization: 0.4,
                mem_utilization: 0.25,
                rps: 120.5,
                reports: 2,
            }
        );
        assert_eq!(cell.take(), None, "taking resets the count");
    }

    #[test]
    fn responses_without_the_trailer_leave_no_summary() {
        let cell = OrcaCell::default();
        cell.observe_headers(&HeaderMap::new(), "eu-1");
        cell.observe_metadata(&MetadataMap::new(), "eu-1");
        assert_eq!(cell.take(), None);
    }

    #[test]
    fn figures_out_of_range_are_not_kept() {
        let cell = OrcaCell::default();
        let mut trailers = HeaderMap::new();
        trailers.insert(
            ORCA_TEXT_HEADER,
            http::HeaderValue::from_static("TEXT cpu_utilization=0.5"),
        );
        assert_eq!(cell.observe_headers(&trailers, "eu-1"), Some(0.5));
        for bad in [
            "TEXT cpu_utilization=150",
            "TEXT cpu_utilization=-0.1",
            "TEXT application_utilization=NaN",
            "TEXT rps_fractional=inf",
        ] {
            trailers.insert(ORCA_TEXT_HEADER, http::HeaderValue::from_static(bad));
            assert_eq!(cell.observe_headers(&trailers, "eu-1"), None, "{bad}");
        }
        let figures = cell.take().expect("the good report");
        assert_eq!((figures.cpu_utilization, figures.reports), (0.5, 1));
    }

    #[test]
    fn a_malformed_trailer_is_ignored() {
        let cell = OrcaCell::default();
        let mut trailers = HeaderMap::new();
        trailers.insert(
            ORCA_HEADER,
            http::HeaderValue::from_static("%%% not base64"),
        );
        assert_eq!(
            decode_header(&trailers[&ORCA_HEADER]),
            Err(MalformedOrca::Base64)
        );
        cell.observe_headers(&trailers, "eu-1");
        // Valid base64 of bytes that are no protobuf message (a truncated varint field).
        trailers.insert(ORCA_HEADER, http::HeaderValue::from_static("CP//"));
        assert!(matches!(
            decode_header(&trailers[&ORCA_HEADER]),
            Err(MalformedOrca::Protobuf(_))
        ));
        cell.observe_headers(&trailers, "eu-1");
        assert_eq!(cell.take(), None, "nothing kept from malformed reports");
    }

    #[test]
    fn tonic_metadata_carries_the_report_too() {
        let cell = OrcaCell::default();
        let mut metadata = MetadataMap::new();
        metadata.insert_bin(
            meridian_proto::ORCA_TRAILER,
            MetadataValue::from_bytes(&report(0.6).encode_to_vec()),
        );
        cell.observe_metadata(&metadata, "eu-1");
        assert_eq!(cell.take().map(|f| f.cpu_utilization), Some(0.6));
    }

    #[test]
    fn the_text_form_is_read_and_the_application_figure_wins() {
        let cell = OrcaCell::default();
        let mut trailers = HeaderMap::new();
        trailers.insert(
            ORCA_TEXT_HEADER,
            http::HeaderValue::from_static(
                "TEXT cpu_utilization=0.3, application_utilization=0.95, named_metrics.queue=4",
            ),
        );
        assert_eq!(cell.observe_headers(&trailers, "eu-1"), Some(0.95));
        assert_eq!(cell.take().map(|f| f.cpu_utilization), Some(0.3));
        for bad in [
            "cpu_utilization=0.3",
            "TEXT cpu_utilization=high",
            "TEXT qps=3",
        ] {
            assert!(decode_text(bad.as_bytes()).is_err(), "{bad}");
        }
        let cpu_only = decode_text(b"TEXT cpu_utilization=0.4").unwrap();
        assert_eq!(utilization_of(&cpu_only), 0.4);
    }

    #[test]
    fn the_deprecated_integer_rps_is_used_when_rps_fractional_is_absent() {
        let cell = OrcaCell::default();
        cell.store(&OrcaLoadReport {
            rps: 40,
            ..Default::default()
        });
        assert_eq!(cell.take().map(|f| f.rps), Some(40.0));
    }
}
