//! An endpoint: one node of one routing table, with the load counters the balancers read
//! (in-flight requests, a latency estimate averaged over time ([`ewma`]), the load the node
//! reports itself ([`reported_load`])) and the pooled HTTP/2 connections requests go over ([`connection`]),
//! in h2c or TLS as the `[[upstream_tls]]` rules say ([`upstream_tls`]); gRPC calls of
//! the proxy's own go over them through [`channel`], among them the ORCA out-of-band
//! stream that keeps the reported load fresh when a policy asks for it ([`orca_stream`]).
//!
//! An endpoint's live state outlives table versions: while a node keeps its address and
//! TLS settings, a new table reuses its endpoint unchanged, or — when other fields of the
//! node changed (a health verdict, a label, its weight or zone) — makes an endpoint with
//! the new fields over the same connections, in-flight count, latency estimate, reported
//! load, latest probe, ORCA stream, breaker and warm-up ([`Endpoint::updated`]). A health write or a label therefore
//! drops no connection, readmits no ejected node and forgets no latency.
//!
//! An endpoint takes at most `max_requests` calls in flight (Envoy's circuit-breaker
//! `max_requests`, from `[upstream]` or the node's services' `endpoint_limits`): a full
//! endpoint is not ready, so the balancers skip it as they skip one whose breaker is open,
//! and a call that finds every endpoint full fails fast. The check and the count are two
//! atomics, not one step, so calls picking at the same instant on different workers may
//! overshoot the limit by at most one call per worker.
//!
//! Everything a request touches here is an atomic; nothing on the request path locks.

pub mod breaker;
pub mod channel;
pub mod connection;
pub mod ewma;
pub mod orca_stream;
pub mod probed_load;
pub mod reported_load;
pub mod upstream_tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use http::HeaderValue;
use http::uri::{Authority, Scheme};
use meridian_shared::config::UpstreamLimits;
use meridian_shared::domain::Node;
use meridian_shared::tls::ClientTls;

pub use self::breaker::{Breaker, BreakerSettings};

/// Share of its full load a warming endpoint starts with.
const WARM_START: f64 = 0.1;
pub use self::connection::{Connection, PoolSettings, StreamSlot};
pub use self::ewma::LatencyEwma;
pub use self::orca_stream::OrcaStream;
pub use self::probed_load::ProbedLoad;
pub use self::reported_load::ReportedLoad;
pub use self::upstream_tls::UpstreamTls;

#[derive(Debug)]
pub struct Endpoint {
    /// The node as this table version has it.
    pub node: Node,
    // The live state below is shared with the endpoints of the node in other table
    // versions (see the module doc).
    in_flight: Arc<AtomicU32>,
    /// Calls in flight at which the endpoint is full (set by each table version).
    max_requests: AtomicU32,
    pub ewma: Arc<LatencyEwma>,
    /// The node's latest ORCA report, for the adaptive balancer.
    pub reported: Arc<ReportedLoad>,
    /// The node's ORCA out-of-band stream, when a policy asks for one.
    pub orca_stream: Arc<OrcaStream>,
    /// The node's latest Prequal probe, when a policy sends them.
    pub probed: Arc<ProbedLoad>,
    pub breaker: Arc<Breaker>,
    pub connection: Arc<Connection>,
    /// The node's address as a URI authority, for upstream requests; `None` when the
    /// address is not one (the table validated it, so only for hand-made tables).
    pub authority: Option<Authority>,
    /// `https` when the connection does TLS, for the `:scheme` of upstream requests.
    pub scheme: Scheme,
    /// The node id as a header value, for the `x-meridian-node` response header.
    pub node_header: Option<HeaderValue>,
    in_flight_gauge: metrics::Gauge,
    /// When the endpoint last became usable (ns since the breaker clock's epoch);
    /// `i64::MIN` for endpoints that need no warm-up.
    ready_since: Arc<AtomicI64>,
    /// How long a returning endpoint ramps from a tenth of its share to all of it.
    slow_start_ns: i64,
}

impl Endpoint {
    pub fn new(node: Node) -> Self {
        Endpoint::with_breaker(node, BreakerSettings::default())
    }

    /// An endpoint whose breaker follows `breaker` (the service's outlier policy).
    pub fn with_breaker(node: Node, breaker: BreakerSettings) -> Self {
        Endpoint::with_pool(node, breaker, PoolSettings::default())
    }

    /// An endpoint whose breaker follows `breaker` and whose connections are pooled as
    /// `pool` says.
    pub fn with_pool(node: Node, breaker: BreakerSettings, pool: PoolSettings) -> Self {
        let connection = Connection::new(node.address.clone(), pool);
        let in_flight_gauge =
            metrics::gauge!("meridian_proxy_endpoint_in_flight", "node" => node.id.clone());
        Endpoint {
            authority: node.address.parse().ok(),
            scheme: Scheme::HTTP,
            node_header: HeaderValue::from_str(&node.id).ok(),
            in_flight: Arc::default(),
            max_requests: AtomicU32::new(UpstreamLimits::default().max_requests_per_endpoint),
            ewma: Arc::default(),
            reported: Arc::default(),
            orca_stream: Arc::default(),
            probed: Arc::default(),
            breaker: Arc::new(exported_breaker(&node.id, breaker)),
            connection: Arc::new(connection),
            in_flight_gauge,
            ready_since: Arc::new(AtomicI64::new(i64::MIN)),
            slow_start_ns: 0,
            node,
        }
    }

    /// This endpoint as a newer table has its node: `node`'s fields (status, weight, zone,
    /// labels...) over the same connection, in-flight count, latency estimate, warm-up and
    /// breaker — a fresh breaker only when the outlier policy changed its `breaker`
    /// settings. Only for the same node id at the same address and TLS settings (the
    /// connection is kept as it is).
    pub fn updated(&self, node: Node, breaker: BreakerSettings) -> Endpoint {
        let breaker = if self.breaker.settings() == breaker {
            Arc::clone(&self.breaker)
        } else {
            Arc::new(exported_breaker(&node.id, breaker))
        };
        Endpoint {
            node,
            in_flight: Arc::clone(&self.in_flight),
            max_requests: AtomicU32::new(self.max_requests()),
            ewma: Arc::clone(&self.ewma),
            reported: Arc::clone(&self.reported),
            orca_stream: Arc::clone(&self.orca_stream),
            probed: Arc::clone(&self.probed),
            breaker,
            connection: Arc::clone(&self.connection),
            authority: self.authority.clone(),
            scheme: self.scheme.clone(),
            node_header: self.node_header.clone(),
            in_flight_gauge: self.in_flight_gauge.clone(),
            ready_since: Arc::clone(&self.ready_since),
            slow_start_ns: self.slow_start_ns,
        }
    }

    /// Like [`Endpoint::start_request`], for a request whose end is not in this scope
    /// (a streamed response).
    pub fn start_owned_request(self: &Arc<Self>) -> OwnedInFlight {
        self.breaker.start_call();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.increment(1.0);
        OwnedInFlight {
            endpoint: Arc::clone(self),
            stream: None,
        }
    }

    /// Reaches the node over TLS with `tls` from now on (call before first use); its
    /// certificate must name the host of its address unless `tls` names another server.
    pub fn use_tls(&mut self, tls: ClientTls) {
        let host = match &self.authority {
            Some(authority) => authority.host().to_owned(),
            None => self.node.address.clone(),
        };
        let pool = self.connection.settings();
        self.connection = Arc::new(Connection::with_tls(
            self.node.address.clone(),
            &host,
            tls,
            pool,
        ));
        self.scheme = Scheme::HTTPS;
    }

    /// Keeps the node's ORCA out-of-band stream asking for a report every `interval`, or
    /// stops it (`None`); see [`OrcaStream::keep`].
    pub fn keep_orca_stream(&self, interval: Option<std::time::Duration>) {
        self.orca_stream.keep(interval, || orca_stream::OrcaFeed {
            node_id: self.node.id.clone(),
            connection: Arc::clone(&self.connection),
            origin: self.origin(),
            reported: Arc::clone(&self.reported),
            in_flight: Arc::clone(&self.in_flight),
        });
    }

    /// `http(s)://address`, the origin of gRPC client calls to this endpoint.
    pub fn origin(&self) -> http::Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = self.authority.clone();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        http::Uri::from_parts(parts).unwrap_or_default()
    }

    /// Whether the balancers may pick this endpoint now: it is not full and its breaker
    /// allows a call.
    pub fn is_ready(&self) -> bool {
        !self.is_full() && self.breaker.is_ready()
    }

    /// Whether the endpoint has as many calls in flight as it may take.
    pub fn is_full(&self) -> bool {
        self.in_flight() >= self.max_requests()
    }

    /// The calls in flight at which the endpoint is full.
    pub fn max_requests(&self) -> u32 {
        self.max_requests.load(Ordering::Relaxed)
    }

    /// Sets the calls in flight at which the endpoint is full (at least 1).
    pub fn set_max_requests(&self, max: u32) {
        self.max_requests.store(max.max(1), Ordering::Relaxed);
    }

    /// Sets how long this endpoint ramps up whenever it becomes usable again.
    pub fn set_slow_start(&mut self, window: std::time::Duration) {
        self.slow_start_ns = breaker::nanos(window);
    }

    /// How long this endpoint ramps up whenever it becomes usable again.
    pub fn slow_start(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(u64::try_from(self.slow_start_ns).unwrap_or(0))
    }

    /// Makes this endpoint ramp up starting now (it has just become usable: a node added
    /// or recovered).
    pub fn start_warming(&mut self) {
        self.ready_since.store(breaker::now_ns(), Ordering::Relaxed);
    }

    /// The share of its full load the endpoint should take now: from 0.1 right after it
    /// became usable up to 1.0 at the end of its slow-start window.
    pub fn warmth(&self) -> f64 {
        let since = self.ready_since.load(Ordering::Relaxed);
        if since == i64::MIN || self.slow_start_ns <= 0 {
            return 1.0;
        }
        let elapsed = (breaker::now_ns() - since) as f64 / self.slow_start_ns as f64;
        (WARM_START + (1.0 - WARM_START) * elapsed).clamp(WARM_START, 1.0)
    }

    /// Records a successful call; an endpoint its breaker readmits warms up again.
    pub fn record_success(&self) {
        if self.breaker.record_success() && self.slow_start_ns > 0 {
            self.ready_since.store(breaker::now_ns(), Ordering::Relaxed);
        }
    }

    /// Requests sent to this endpoint and not yet finished.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the guard drops.
    pub fn start_request(&self) -> InFlight<'_> {
        self.breaker.start_call();
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.in_flight_gauge.increment(1.0);
        InFlight(self)
    }

    fn finish_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.in_flight_gauge.decrement(1.0);
    }
}

/// A breaker with `settings` whose state `meridian_proxy_endpoint_breaker_open{node}`
/// shows.
fn exported_breaker(node_id: &str, settings: BreakerSettings) -> Breaker {
    let breaker = Breaker::with_settings(settings);
    let gauge =
        metrics::gauge!("meridian_proxy_endpoint_breaker_open", "node" => node_id.to_owned());
    gauge.set(0.0);
    breaker.export_state(gauge);
    breaker
}

/// A request in flight on an endpoint; finishing it (dropping the guard) decrements the
/// count.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.finish_request();
    }
}

/// An owned [`InFlight`], which also gives back the call's place on its connection
/// ([`OwnedInFlight::hold_stream`]) when it drops.
#[derive(Debug)]
pub struct OwnedInFlight {
    endpoint: Arc<Endpoint>,
    stream: Option<StreamSlot>,
}

impl OwnedInFlight {
    /// Keeps the call's place on the connection it went over until the guard drops.
    pub fn hold_stream(&mut self, stream: StreamSlot) {
        self.stream = Some(stream);
    }
}

impl OwnedInFlight {
    /// The endpoint the call is in flight on.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }
}

impl Drop for OwnedInFlight {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.endpoint.connection.end_stream(stream);
        }
        self.endpoint.finish_request();
    }
}

/// The settings every endpoint of the proxy is built with: which nodes are reached over
/// TLS, and the `[upstream]` limits.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    pub tls: UpstreamTls,
    pub limits: UpstreamLimits,
}

impl UpstreamSettings {
    /// The pool of connections each endpoint keeps.
    pub fn pool(&self) -> PoolSettings {
        PoolSettings::from_limits(&self.limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_endpoint_is_not_ready_until_a_call_ends() {
        let endpoint = Arc::new(Endpoint::new(Node {
            id: "n1".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        }));
        endpoint.set_max_requests(2);
        let first = endpoint.start_owned_request();
        assert!(endpoint.is_ready());
        let second = endpoint.start_request();
        assert!(endpoint.is_full() && !endpoint.is_ready());
        drop(first);
        assert!(endpoint.is_ready(), "one call ended");
        drop(second);
        assert_eq!(endpoint.in_flight(), 0);
    }
}
