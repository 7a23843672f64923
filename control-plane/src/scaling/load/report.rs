//! Checking one `LoadReport` before anything of it is aggregated: every string and list a
//! proxy sends is bounded, the histogram must be readable and the figures consistent. A
//! report is taken whole or not at all; the first problem found names the field.

use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_shared::latency_histogram::{BUCKETS, InvalidHistogram, LatencyHistogram};
use meridian_shared::names::{MAX_NAME_LEN, name_problem};

/// Most endpoints one report may carry (a federation's nodes times the services each
/// serves is what a proxy can know of; far more is a broken or hostile proxy).
pub const MAX_ENDPOINTS_PER_REPORT: usize = 20_000;
/// Longest service name, bytes (the topology's own limit).
pub const MAX_SERVICE_BYTES: usize = 255;
/// Most (service, tier) demand entries one report may carry (the policies' limits: 500
/// services of 16 tiers).
pub const MAX_TIER_DEMAND_PER_REPORT: usize = 8_000;
/// Shortest and longest report interval a proxy may claim, milliseconds. Rates are
/// computed over the time reports cover, so an absurd interval would distort them.
pub const MIN_INTERVAL_MS: u32 = 100;
pub const MAX_INTERVAL_MS: u32 = 600_000;

/// A report that passed [`check`], in the aggregator's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedReport {
    pub proxy_id: String,
    pub federation: String,
    pub interval: Duration,
    pub endpoints: Vec<EndpointSample>,
}

/// One endpoint of a checked report.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSample {
    pub service: String,
    pub node_id: String,
    pub calls: u64,
    pub errors: u64,
    pub latency: LatencyHistogram,
    /// Time-weighted mean in flight over the interval.
    pub in_flight_mean: f64,
    pub in_flight_max: u32,
    pub orca: Option<OrcaSample>,
}

/// What the node said about itself in ORCA trailers, fractions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrcaSample {
    pub cpu_utilization: f64,
    pub application_utilization: f64,
    pub rps: f64,
}

/// Why a report was refused; the text names the field as the proxy sent it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidReport {
    #[error("proxy_id: {id:?} {problem}")]
    ProxyId { id: String, problem: &'static str },
    #[error("{field}: {length} bytes, at most {MAX_NAME_LEN}")]
    TooLong { field: &'static str, length: usize },
    #[error("interval_ms: {0} is outside {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS}")]
    Interval(u32),
    #[error("endpoints: {0} entries, at most {MAX_ENDPOINTS_PER_REPORT} are accepted")]
    TooManyEndpoints(usize),
    #[error("tier_demand: {0} entries, at most {MAX_TIER_DEMAND_PER_REPORT} are accepted")]
    TooMuchTierDemand(usize),
    #[error("endpoints[{index}].{field}: {problem}")]
    Endpoint {
        index: usize,
        field: &'static str,
        problem: String,
    },
}

/// Checks `report` and turns it into samples; the federation scope is the caller's to
/// check.
pub fn check(report: &pb::LoadReport) -> Result<CheckedReport, InvalidReport> {
    if let Some(problem) = name_problem(&report.proxy_id) {
        return Err(InvalidReport::ProxyId {
            id: report.proxy_id.clone(),
            problem,
        });
    }
    for (field, value) in [
        ("federation", &report.federation),
        ("region", &report.region),
    ] {
        if value.len() > MAX_NAME_LEN {
            return Err(InvalidReport::TooLong {
                field,
                length: value.len(),
            });
        }
    }
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&report.interval_ms) {
        return Err(InvalidReport::Interval(report.interval_ms));
    }
    if report.endpoints.len() > MAX_ENDPOINTS_PER_REPORT {
        return Err(InvalidReport::TooManyEndpoints(report.endpoints.len()));
    }
    if report.tier_demand.len() > MAX_TIER_DEMAND_PER_REPORT {
        return Err(InvalidReport::TooMuchTierDemand(report.tier_demand.len()));
    }
    let endpoints = report
        .endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| {
            check_endpoint(endpoint).map_err(|(field, problem)| InvalidReport::Endpoint {
                index,
                field,
                problem,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CheckedReport {
        proxy_id: report.proxy_id.clone(),
        federation: report.federation.clone(),
        interval: Duration::from_millis(u64::from(report.interval_ms)),
        endpoints,
    })
}

type FieldProblem = (&'static str, String);

fn check_endpoint(endpoint: &pb::EndpointLoad) -> Result<EndpointSample, FieldProblem> {
    if endpoint.node_id.is_empty() || endpoint.node_id.len() > MAX_NAME_LEN {
        return Err(("node_id", format!("must be 1 to {MAX_NAME_LEN} bytes long")));
    }
    if endpoint.service.is_empty() || endpoint.service.len() > MAX_SERVICE_BYTES {
        return Err((
            "service",
            format!("must be 1 to {MAX_SERVICE_BYTES} bytes long"),
        ));
    }
    if endpoint.errors > endpoint.requests {
        return Err((
            "errors",
            format!(
                "{} errors out of {} requests",
                endpoint.errors, endpoint.requests
            ),
        ));
    }
    if endpoint.latency_bucket_index.len() > BUCKETS {
        return Err((
            "latency_bucket_index",
            format!(
                "{} entries; there are only {BUCKETS} buckets",
                endpoint.latency_bucket_index.len()
            ),
        ));
    }
    let latency = LatencyHistogram::from_sparse(
        &endpoint.latency_bucket_index,
        &endpoint.latency_bucket_count,
    )
    .map_err(|e| {
        let field = match e {
            InvalidHistogram::LengthMismatch { .. } => "latency_bucket_count",
            InvalidHistogram::BucketOutOfRange(_) => "latency_bucket_index",
        };
        (field, e.to_string())
    })?;
    let orca = endpoint.orca.as_ref().map(check_orca).transpose()?;
    // A summary without a single trailer behind it carries no measurement.
    let orca = orca.filter(|_| endpoint.orca.as_ref().is_some_and(|o| o.reports > 0));
    Ok(EndpointSample {
        service: endpoint.service.clone(),
        node_id: endpoint.node_id.clone(),
        calls: endpoint.requests,
        errors: endpoint.errors,
        latency,
        in_flight_mean: endpoint.in_flight_mean_milli as f64 / 1_000.0,
        in_flight_max: endpoint.in_flight_max,
        orca,
    })
}

/// `None` when the node sent no ORCA report in the interval.
fn check_orca(orca: &pb::OrcaSummary) -> Result<OrcaSample, FieldProblem> {
    for (field, value) in [
        ("orca.cpu_utilization", orca.cpu_utilization),
        ("orca.application_utilization", orca.application_utilization),
        ("orca.mem_utilization", orca.mem_utilization),
    ] {
        if !(0.0..=meridian_proto::MAX_ORCA_UTILIZATION).contains(&value) {
            return Err((
                field,
                format!(
                    "{value} is not a utilisation between 0 and {}",
                    meridian_proto::MAX_ORCA_UTILIZATION
                ),
            ));
        }
    }
    if !orca.rps.is_finite() || orca.rps < 0.0 {
        return Err(("orca.rps", format!("{} is not a rate", orca.rps)));
    }
    Ok(OrcaSample {
        cpu_utilization: orca.cpu_utilization,
        application_utilization: orca.application_utilization,
        rps: orca.rps,
    })
}
