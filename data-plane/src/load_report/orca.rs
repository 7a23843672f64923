//! ORCA backend metrics: a node may attach an `xds.data.orca.v3.OrcaLoadReport` to its
//! responses in the `endpoint-load-metrics-bin` trailer (binary metadata, so base64 on
//! the wire). The proxy keeps the latest utilisation and rps each node reported, and how
//! many responses carried a report, for the load report's `OrcaSummary`.
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
    /// response) if there is one. `node` names the node in the log of a malformed one.
    pub fn observe_headers(&self, headers: &HeaderMap, node: &str) {
        if let Some(value) = headers.get(&ORCA_HEADER) {
            self.keep(decode_header(value), node);
        }
    }

    /// Keeps the report in tonic `metadata` (a unary response's headers and trailers) if
    /// there is one.
    pub fn observe_metadata(&self, metadata: &MetadataMap, node: &str) {
        if let Some(value) = metadata.get_bin(meridian_proto::ORCA_TRAILER) {
            let decoded = value
                .to_bytes()
                .map_err(|_| MalformedOrca::Base64)
                .and_then(|bytes| decode(&bytes));
            self.keep(decoded, node);
        }
    }

    fn keep(&self, report: Result<OrcaLoadReport, MalformedOrca>, node: &str) {
        match report {
            Ok(report) => self.store(&report),
            Err(e) => {
                metrics::counter!("meridian_proxy_orca_reports_malformed_total", "node" => node.to_owned())
                    .increment(1);
                tracing::debug!(%node, error = %e, "ignoring a malformed ORCA trailer (endpoint-load-metrics-bin); the node's load report goes without it");
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

fn decode(bytes: &[u8]) -> Result<OrcaLoadReport, MalformedOrca> {
    OrcaLoadReport::decode(bytes).map_err(|e| MalformedOrca::Protobuf(e.to_string()))
}
