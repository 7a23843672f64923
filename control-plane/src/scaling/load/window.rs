//! One replica's sliding window of the load reports it received: per (service, node), a
//! sample per report of every proxy (calls, errors, latency histogram, in-flight), and
//! the latest ORCA figures the node reported about itself. Samples whose interval ended
//! more than the window ago are dropped; the number of (service, node) pairs, proxies and
//! samples per pair is capped, so a flood of reports cannot grow memory without bound.
//!
//! Time is passed in (`now`), never read here, so tests drive it explicitly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meridian_shared::latency_histogram::LatencyHistogram;

use super::report::{CheckedReport, OrcaSample};

/// Most (service, node) pairs one replica tracks.
pub const MAX_PAIRS: usize = 20_000;
/// Most proxies one replica tracks reports from.
pub const MAX_PROXIES: usize = 5_000;
/// Most samples kept per (service, node): 60 s of 1 s reports from 64 proxies; past it
/// the oldest go first.
pub const MAX_SAMPLES_PER_PAIR: usize = 4_096;

/// What the window could not take in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowFull {
    #[error(
        "reports from {MAX_PROXIES} proxies are already tracked; this proxy's reports are ignored until some stop"
    )]
    Proxies,
    #[error("{0} endpoints were ignored: {MAX_PAIRS} (service, node) pairs are already tracked")]
    Pairs(usize),
}

/// One proxy's report on one endpoint.
#[derive(Debug, Clone)]
struct Sample {
    proxy: Arc<str>,
    /// When the report arrived: the end of the interval it covers.
    end: SystemTime,
    interval: Duration,
    calls: u64,
    errors: u64,
    latency: LatencyHistogram,
    in_flight_mean: f64,
    in_flight_max: u32,
}

/// A node's latest ORCA report, and when it was received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrcaLatest {
    pub at: SystemTime,
    pub sample: OrcaSample,
}

#[derive(Debug, Default)]
struct PairWindow {
    samples: VecDeque<Sample>,
    orca: Option<OrcaLatest>,
}

/// One node's load for one service over the window, every proxy together: what a
/// replica publishes and what replicas' figures are merged from.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLoad {
    pub service: String,
    pub node: String,
    pub calls: u64,
    pub errors: u64,
    pub latency: LatencyHistogram,
    /// The integral of requests in flight over the samples' intervals, request-seconds,
    /// summed over proxies (each proxy's in-flight to a node adds to the node's).
    pub in_flight_seconds: f64,
    /// Each proxy's highest in-flight over the window, summed: an upper bound of the
    /// node's peak.
    pub in_flight_max: u32,
    /// ORCA is the node's own figure, not additive: the latest one counts.
    pub orca: Option<OrcaLatest>,
    /// The start of the earliest sample's interval and the end of the latest.
    pub start: SystemTime,
    pub end: SystemTime,
    /// The interval of the latest sample (how often reports are expected).
    pub interval: Duration,
}

/// The window of one replica.
#[derive(Debug)]
pub struct LoadWindow {
    length: Duration,
    pairs: HashMap<(String, String), PairWindow>,
    /// Each tracked proxy and when it last reported.
    proxies: HashMap<Arc<str>, SystemTime>,
}

impl LoadWindow {
    pub fn new(length: Duration) -> Self {
        LoadWindow {
            length,
            pairs: HashMap::new(),
            proxies: HashMap::new(),
        }
    }

    pub fn length(&self) -> Duration {
        self.length
    }

    /// Adds a report received at `now`. What does not fit the caps is left out and said
    /// in the error; the rest is kept.
    pub fn record(&mut self, report: CheckedReport, now: SystemTime) -> Result<(), WindowFull> {
        self.expire(now);
        let proxy: Arc<str> = match self.proxies.get_key_value(report.proxy_id.as_str()) {
            Some((known, _)) => Arc::clone(known),
            None if self.proxies.len() >= MAX_PROXIES => return Err(WindowFull::Proxies),
            None => Arc::from(report.proxy_id.as_str()),
        };
        self.proxies.insert(Arc::clone(&proxy), now);
        let mut left_out = 0;
        for endpoint in report.endpoints {
            let key = (endpoint.service, endpoint.node_id);
            if !self.pairs.contains_key(&key) && self.pairs.len() >= MAX_PAIRS {
                left_out += 1;
                continue;
            }
            let pair = self.pairs.entry(key).or_default();
            if let Some(sample) = endpoint.orca {
                pair.orca = Some(OrcaLatest { at: now, sample });
            }
            if pair.samples.len() >= MAX_SAMPLES_PER_PAIR {
                pair.samples.pop_front();
            }
            pair.samples.push_back(Sample {
                proxy: Arc::clone(&proxy),
                end: now,
                interval: report.interval,
                calls: endpoint.calls,
                errors: endpoint.errors,
                latency: endpoint.latency,
                in_flight_mean: endpoint.in_flight_mean,
                in_flight_max: endpoint.in_flight_max,
            });
        }
        if left_out > 0 {
            return Err(WindowFull::Pairs(left_out));
        }
        Ok(())
    }

    /// Drops samples, ORCA figures and proxies last seen more than the window ago.
    pub fn expire(&mut self, now: SystemTime) {
        let Some(oldest) = now.checked_sub(self.length) else {
            return;
        };
        self.pairs.retain(|_, pair| {
            while pair.samples.front().is_some_and(|s| s.end < oldest) {
                pair.samples.pop_front();
            }
            if pair.orca.is_some_and(|o| o.at < oldest) {
                pair.orca = None;
            }
            !pair.samples.is_empty()
        });
        self.proxies.retain(|_, seen| *seen >= oldest);
    }

    /// Every (service, node) with samples in the window at `now`.
    pub fn nodes(&mut self, now: SystemTime) -> Vec<NodeLoad> {
        self.expire(now);
        self.pairs
            .iter()
            .filter_map(|((service, node), pair)| summarize(service, node, pair))
            .collect()
    }

    /// How many (service, node) pairs and proxies are tracked.
    pub fn tracked(&self) -> (usize, usize) {
        (self.pairs.len(), self.proxies.len())
    }
}

fn summarize(service: &str, node: &str, pair: &PairWindow) -> Option<NodeLoad> {
    let first = pair.samples.front()?;
    let last = pair.samples.back()?;
    let mut load = NodeLoad {
        service: service.to_owned(),
        node: node.to_owned(),
        calls: 0,
        errors: 0,
        latency: LatencyHistogram::new(),
        in_flight_seconds: 0.0,
        in_flight_max: 0,
        orca: pair.orca,
        start: first.end.checked_sub(first.interval).unwrap_or(first.end),
        end: last.end,
        interval: last.interval,
    };
    let mut max_per_proxy: HashMap<&str, u32> = HashMap::new();
    for sample in &pair.samples {
        load.calls = load.calls.saturating_add(sample.calls);
        load.errors = load.errors.saturating_add(sample.errors);
        load.latency.merge(&sample.latency);
        load.in_flight_seconds += sample.in_flight_mean * sample.interval.as_secs_f64();
        let start = sample
            .end
            .checked_sub(sample.interval)
            .unwrap_or(sample.end);
        load.start = load.start.min(start);
        let max = max_per_proxy.entry(&sample.proxy).or_default();
        *max = (*max).max(sample.in_flight_max);
    }
    load.in_flight_max = max_per_proxy
        .values()
        .fold(0u32, |sum, max| sum.saturating_add(*max));
    Some(load)
}
