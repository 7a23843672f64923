//! The proxy's routing table: the data the control plane sent ([`data`]), turned into
//! what the request path reads — per service, balancers over its usable endpoints (all
//! regions, and the proxy's own region only) — and published through an atomic pointer
//! swap, so readers on the request path never block and always see one whole version.
//! [`subscription`] keeps it current; [`cache_file`] keeps the last good one on disk.

pub mod cache_file;
pub mod data;
pub mod route_metrics;
pub mod subscription;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwapOption, Guard};
use meridian_proto::v1 as pb;
use meridian_shared::config::UpstreamLimits;
use meridian_shared::domain::{Algorithm, NodeStatus, ServicePolicy};
use serde_json::json;

pub use self::data::TableData;
pub use self::route_metrics::RouteMetrics;
use crate::admission::concurrency::ConcurrencyLimiter;
use crate::admission::rate::{FederationProxies, RateLimiter};
use crate::balance::least_connections::LeastConnections;
use crate::balance::{self, Balancer, Locality};
use crate::endpoint::{BreakerSettings, Endpoint, UpstreamSettings};
use crate::error::RequestError;
use crate::load_report::CallLoad;
use crate::retry::RetryBudget;
use crate::router::dedup::{DedupCache, DedupSettings};

/// Where the table in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    Stream,
    File,
}

/// Who and where this proxy is.
#[derive(Debug, Clone, Default)]
pub struct ProxyIdentity {
    pub id: String,
    pub federation: String,
    pub region: String,
    pub zone: String,
}

/// One service as the request path sees it.
#[derive(Debug)]
pub struct ServiceRoute {
    pub name: String,
    pub policy: ServicePolicy,
    /// Usable endpoints anywhere in the federation, the proxy's region first unless the
    /// policy sets `global_routing` ([`balance::build_for_locality`]).
    pub all: Box<dyn Balancer>,
    /// Usable endpoints in the proxy's region.
    pub local: Box<dyn Balancer>,
    /// Usable endpoints per region, least connections first, for RouteMessage's
    /// `target_region`; regions without one are absent.
    pub by_region: HashMap<String, LeastConnections>,
    /// Nodes serving it in the table, usable or not (for error messages).
    pub known_nodes: usize,
    /// Request metrics per node id.
    pub metrics: HashMap<String, Arc<RouteMetrics>>,
    /// What retries of this service may spend.
    pub retry_budget: Arc<RetryBudget>,
    /// The calls in flight at once, when the policy limits them; kept from the previous
    /// table while the concurrency policy stays the same.
    pub concurrency: Option<Arc<ConcurrencyLimiter>>,
    /// RouteMessage outcomes by idempotency key; kept across table versions while the
    /// policy's dedup settings stay the same.
    pub dedup: Arc<DedupCache<pb::RouteMessageResponse>>,
    /// Its rate limits per client tier (admits everything without tiers).
    pub rate_limit: Arc<RateLimiter>,
    /// The deadline of calls that carry no `grpc-timeout`: the policy's, else the
    /// proxy's `[upstream] default_deadline_ms`; `None`: none.
    pub default_deadline: Option<Duration>,
    /// How long a forwarded call may go without a frame either way: the policy's, else
    /// the proxy's `[upstream] stream_idle_timeout_ms`; `None`: for ever.
    pub stream_idle_timeout: Option<Duration>,
}

impl ServiceRoute {
    /// Records a failed call on `endpoint`. Its breaker may open only while fewer than the
    /// policy's maximum share (default 50 %) of this service's endpoints are ejected, so
    /// a service-wide problem cannot eject every endpoint.
    pub fn record_failure(&self, endpoint: &Endpoint) {
        let endpoints = self.all.endpoints();
        let max_percent = self.policy.outlier.effective_max_ejection_percent() as usize;
        let ejected = endpoints.iter().filter(|e| e.breaker.is_open()).count();
        let may_open = (ejected + 1) * 100 <= max_percent * endpoints.len().max(1);
        endpoint.breaker.record_failure_unless_capped(may_open);
    }

    /// When a call with these request headers must end (see [`crate::hop::deadline`]).
    pub fn deadline(
        &self,
        headers: &http::HeaderMap,
    ) -> Result<Option<tokio::time::Instant>, RequestError> {
        crate::hop::deadline(
            headers,
            self.default_deadline,
            self.policy.timeout.effective_max_timeout(),
        )
    }

    /// The metrics of calls to `node_id`.
    pub fn metrics_of(&self, node_id: &str) -> Arc<RouteMetrics> {
        self.metrics
            .get(node_id)
            .cloned()
            .unwrap_or_else(|| Arc::new(RouteMetrics::new(&self.name, node_id)))
    }
}

#[derive(Debug)]
pub struct ProxyTable {
    pub data: TableData,
    pub locality: Locality,
    pub source: TableSource,
    pub applied_at: SystemTime,
    services: HashMap<String, Arc<ServiceRoute>>,
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// The proxy's `[upstream]` limits, which services' policies override.
    upstream: UpstreamLimits,
    /// How many proxies share the federation's rate limits (carried over).
    federation_proxies: Arc<FederationProxies>,
}

impl ProxyTable {
    /// Builds the request-path view of `data`, reusing the endpoints (counters and
    /// connections) of `previous` for nodes that did not change. New endpoints reach
    /// their node over TLS when `upstream.tls` says so, and pool their connections as
    /// `upstream.limits` says; every endpoint takes the calls in flight its services'
    /// policies (or the proxy's limits) allow.
    pub fn build(
        data: TableData,
        identity: &ProxyIdentity,
        previous: Option<&ProxyTable>,
        source: TableSource,
        upstream: &UpstreamSettings,
    ) -> Self {
        let federation_proxies = previous
            .map(|p| Arc::clone(&p.federation_proxies))
            .unwrap_or_default();
        let regions: Vec<_> = data.regions.values().cloned().collect();
        let locality = Locality::new(&identity.region, &identity.zone, &regions);
        let endpoints: HashMap<String, Arc<Endpoint>> = data
            .nodes
            .values()
            .map(|node| {
                let before = previous.and_then(|p| p.endpoints.get(&node.id));
                let endpoint = endpoint_for(&data, node, before, previous.is_some(), upstream);
                endpoint.set_max_requests(max_requests(&data, node, &upstream.limits));
                (node.id.clone(), endpoint)
            })
            .collect();
        let names: BTreeSet<&String> = data
            .services
            .keys()
            .chain(data.nodes.values().flat_map(|n| n.services.iter()))
            .collect();
        let services = names
            .into_iter()
            .map(|name| {
                let policy = data
                    .services
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| ServicePolicy {
                        name: name.clone(),
                        federation: data.federation.clone(),
                        ..Default::default()
                    });
                let serving: Vec<&Arc<Endpoint>> =
                    endpoints.values().filter(|e| e.node.serves(name)).collect();
                // The serving nodes whose status passes `keep`, by id; and those of them in
                // this proxy's region.
                let with_status = |keep: fn(NodeStatus) -> bool| {
                    let mut all: Vec<Arc<Endpoint>> = serving
                        .iter()
                        .filter(|e| keep(e.node.status))
                        .map(|e| Arc::clone(e))
                        .collect();
                    all.sort_by(|a, b| a.node.id.cmp(&b.node.id));
                    let local: Vec<Arc<Endpoint>> = all
                        .iter()
                        .filter(|e| e.node.region == identity.region)
                        .cloned()
                        .collect();
                    (all, local)
                };
                let (mut usable, mut local) = with_status(NodeStatus::is_routable);
                // Members that are down count in their tier's total for the spill rule.
                let (mut down, mut local_down) = with_status(balance::is_down_member);
                if let Some(targeted) = failover_endpoints(&data, &policy, &usable) {
                    // An operator's failover moves the service, region restriction included.
                    down.retain(|e| in_failover_target(&data, &policy, e));
                    local_down = down.clone();
                    local = targeted.clone();
                    usable = targeted;
                }
                // For every node serving the service, usable or not (RouteMessage may
                // name one outside the balancers); carried over from the previous table
                // so counters and load figures go on.
                let before = previous.and_then(|p| p.services.get(name));
                let metrics = serving
                    .iter()
                    .map(|e| {
                        let id = &e.node.id;
                        let kept = before.and_then(|r| r.metrics.get(id)).cloned();
                        let metrics = kept.unwrap_or_else(|| Arc::new(RouteMetrics::new(name, id)));
                        (id.clone(), metrics)
                    })
                    .collect();
                let mut by_region: HashMap<String, Vec<Arc<Endpoint>>> = HashMap::new();
                for endpoint in &usable {
                    by_region
                        .entry(endpoint.node.region.clone())
                        .or_default()
                        .push(Arc::clone(endpoint));
                }
                let concurrency = match before {
                    Some(b) if b.policy.concurrency == policy.concurrency => b.concurrency.clone(),
                    _ => ConcurrencyLimiter::new(name, &policy.concurrency),
                };
                // The budget outlives table versions while its policy holds: a table a
                // second during an incident must not refill it each time.
                let retry_budget = match before {
                    Some(b) if b.policy.retry == policy.retry => Arc::clone(&b.retry_budget),
                    _ => Arc::new(RetryBudget::new(&policy.retry)),
                };
                let settings = dedup_settings(&policy);
                let dedup = before
                    .map(|r| &r.dedup)
                    .filter(|d| d.settings() == settings)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(DedupCache::new(name, settings)));
                let rate_limit = RateLimiter::build(
                    name,
                    &policy.rate_limit,
                    before.map(|r| &r.rate_limit),
                    &federation_proxies,
                );
                let route = ServiceRoute {
                    default_deadline: policy
                        .timeout
                        .effective_default_timeout(upstream.limits.default_deadline()),
                    stream_idle_timeout: policy
                        .endpoint_limits
                        .effective_stream_idle_timeout(upstream.limits.stream_idle_timeout()),
                    rate_limit,
                    concurrency,
                    dedup,
                    retry_budget,
                    metrics,
                    name: name.clone(),
                    by_region: by_region
                        .into_iter()
                        .map(|(region, endpoints)| (region, LeastConnections::new(endpoints)))
                        .collect(),
                    all: balance::build_for_locality(
                        policy.algorithm,
                        usable,
                        &down,
                        &locality,
                        &policy.failover,
                        &policy.adaptive,
                        policy.global_routing,
                    ),
                    local: balance::build(
                        policy.algorithm,
                        local,
                        &local_down,
                        &locality,
                        &policy.failover,
                        &policy.adaptive,
                    ),
                    known_nodes: serving.len(),
                    policy,
                };
                (name.clone(), Arc::new(route))
            })
            .collect();
        keep_orca_streams(&data, &endpoints);
        ProxyTable {
            data,
            locality,
            source,
            applied_at: SystemTime::now(),
            services,
            endpoints,
            upstream: upstream.limits.clone(),
            federation_proxies,
        }
    }

    pub fn version(&self) -> u64 {
        self.data.version
    }

    pub fn service(&self, name: &str) -> Option<&Arc<ServiceRoute>> {
        self.services.get(name)
    }

    pub fn endpoint(&self, node_id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints.get(node_id)
    }

    /// The load figures of every (node, service) of the table, for the load reports.
    pub fn loads(&self) -> impl Iterator<Item = &Arc<CallLoad>> {
        self.services
            .values()
            .flat_map(|route| route.metrics.values().map(|m| &m.load))
    }

    /// The rate limiters of services that have tiers, for the load reports' demand.
    pub fn rate_limiters(&self) -> impl Iterator<Item = &Arc<RateLimiter>> {
        self.services
            .values()
            .map(|route| &route.rate_limit)
            .filter(|limiter| !limiter.tiers().is_empty())
    }

    /// Applies the control plane's answer to a load report: how many proxies share the
    /// federation's rate limits, and this proxy's share of each (service, tier) it names.
    pub fn apply_rate_shares(&self, answer: &meridian_proto::v1::LoadReportResponse) {
        self.federation_proxies.set(answer.federation_proxies);
        for share in &answer.rate_shares {
            let tier = self
                .services
                .get(&share.service)
                .and_then(|route| route.rate_limit.tier(&share.tier));
            if let Some(tier) = tier {
                tier.set_share(share.share);
            }
        }
    }

    /// The table and every endpoint's state, for `/debug/table`.
    pub fn debug_json(&self) -> serde_json::Value {
        let mut services: Vec<_> = self.services.values().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let services: Vec<_> = services
            .into_iter()
            .map(|route| {
                let mut endpoints: Vec<_> = self
                    .endpoints
                    .values()
                    .filter(|e| e.node.serves(&route.name))
                    .collect();
                endpoints.sort_by(|a, b| a.node.id.cmp(&b.node.id));
                let limits = &route.policy.limits;
                let (kept, kept_bytes, in_flight) = route.dedup.usage();
                json!({
                    "name": route.name,
                    "algorithm": route.policy.algorithm.as_str(),
                    "adaptive": route.policy.adaptive,
                    "limits": {
                        // 0: the proxy's --max-message-bytes.
                        "max_message_bytes": limits.max_message_bytes,
                        "dedup_ttl_ms": limits.dedup_ttl_ms,
                        "dedup_max_entries": limits.effective_dedup_max_entries(),
                        "dedup_max_bytes": limits.effective_dedup_max_bytes(),
                        "ids_are_unique": limits.ids_are_unique,
                        "dedup_kept": kept,
                        "dedup_kept_bytes": kept_bytes,
                        "dedup_in_flight": in_flight,
                    },
                    // In force, the proxy's [upstream] settings filled in.
                    "endpoint_limits": {
                        "max_requests_per_endpoint": route.policy.endpoint_limits
                            .effective_max_requests(self.upstream.max_requests_per_endpoint),
                        "stream_idle_timeout_ms": route.stream_idle_timeout.map(|t| t.as_millis() as u64),
                        "default_deadline_ms": route.default_deadline.map(|t| t.as_millis() as u64),
                    },
                    "has_policy": self.data.services.contains_key(&route.name),
                    "global_routing": route.policy.global_routing,
                    "fallback_services": route.policy.fallback_services,
                    "usable_endpoints": route.all.endpoints().len(),
                    "concurrency": route.concurrency.as_ref().map(|c| c.debug_json()),
                    "rate_limit": route.rate_limit.debug_json(),
                    "endpoints": endpoints.iter().map(|e| json!({
                        "node": e.node.id,
                        "address": e.node.address,
                        "tls": e.connection.is_tls(),
                        "region": e.node.region,
                        "zone": e.node.zone,
                        "weight": e.node.effective_weight(),
                        "status": e.node.status.as_str(),
                        "usable": e.node.status.is_routable(),
                        "in_flight": e.in_flight(),
                        "max_requests": e.max_requests(),
                        "full": e.is_full(),
                        "connections": e.connection.open_connections(),
                        "breaker_open": e.breaker.is_open(),
                        "warmth": e.warmth(),
                        "ready": e.is_ready(),
                        "latency_estimate_ms": e.ewma.estimate().as_secs_f64() * 1e3,
                        "reported_utilization": e.reported.latest(),
                        "orca_stream": {
                            "running": e.orca_stream.is_running(),
                            "unsupported": e.orca_stream.unsupported(),
                        },
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "version": self.data.version,
            "federation": self.data.federation,
            "source": match self.source { TableSource::Stream => "stream", TableSource::File => "file" },
            "applied_at": humantime_rfc3339(self.applied_at),
            "region": self.locality.region,
            "zone": self.locality.zone,
            "regions": self.data.regions.keys().collect::<Vec<_>>(),
            "failovers": self.data.failovers.values().map(|f| json!({
                "service": f.service, "target": f.target, "reason": f.reason,
            })).collect::<Vec<_>>(),
            "services": services,
        })
    }
}

/// The endpoint of `node` in a new table. `before` is its endpoint in the previous table
/// (`had_table`), if any: reused as it is when nothing about the node changed; when only
/// fields other than its address and TLS settings changed (status, weight, zone, labels),
/// the node's new fields over the same live state (connection, counters, latency
/// estimate, breaker, warm-up); otherwise a new endpoint. A node that becomes usable after
/// the first table (added, recovered, undrained) ramps up; the first table's nodes take
/// full load at once.
fn endpoint_for(
    data: &TableData,
    node: &meridian_shared::domain::Node,
    before: Option<&Arc<Endpoint>>,
    had_table: bool,
    upstream: &UpstreamSettings,
) -> Arc<Endpoint> {
    let breaker = breaker_settings(data, node);
    let slow_start = slow_start(data, node);
    let was_usable = before.is_some_and(|e| e.node.status.is_routable());
    let same_connection =
        |e: &&Arc<Endpoint>| e.node.address == node.address && upstream.tls.same_for(&e.node, node);
    let Some(before) = before.filter(same_connection) else {
        let mut endpoint = Endpoint::with_pool(node.clone(), breaker, upstream.pool());
        if let Some(tls) = upstream.tls.for_node(node) {
            endpoint.use_tls(tls.clone());
        }
        endpoint.set_slow_start(slow_start);
        if had_table && node.status.is_routable() && !was_usable {
            endpoint.start_warming();
        }
        return Arc::new(endpoint);
    };
    if before.node == *node
        && before.breaker.settings() == breaker
        && before.slow_start() == slow_start
    {
        return Arc::clone(before);
    }
    let mut endpoint = before.updated(node.clone(), breaker);
    endpoint.set_slow_start(slow_start);
    if node.status.is_routable() && !was_usable {
        endpoint.start_warming();
    }
    Arc::new(endpoint)
}

/// Runs the ORCA out-of-band stream of each usable node that an adaptive service asking
/// for one routes to, at the shortest interval its services ask for; stops the others.
fn keep_orca_streams(data: &TableData, endpoints: &HashMap<String, Arc<Endpoint>>) {
    for endpoint in endpoints.values() {
        let node = &endpoint.node;
        let interval = node
            .status
            .is_routable()
            .then(|| {
                node.services
                    .iter()
                    .filter_map(|s| data.services.get(s))
                    .filter(|p| p.algorithm == Algorithm::Adaptive)
                    .filter_map(|p| p.adaptive.oob_report_interval())
                    .min()
            })
            .flatten();
        endpoint.keep_orca_stream(interval);
    }
}

/// How RouteMessage deduplication of the service keeps answers.
fn dedup_settings(policy: &ServicePolicy) -> DedupSettings {
    let limits = &policy.limits;
    DedupSettings {
        ttl: limits.dedup_ttl(),
        max_entries: limits.effective_dedup_max_entries() as usize,
        max_bytes: limits.effective_dedup_max_bytes(),
    }
}

/// The slow-start window of a node: that of the first of its services (by name) with a
/// policy; the default (10 s) otherwise.
fn slow_start(data: &TableData, node: &meridian_shared::domain::Node) -> std::time::Duration {
    let mut services: Vec<&String> = node.services.iter().collect();
    services.sort();
    services
        .into_iter()
        .find_map(|s| data.services.get(s))
        .map(|p| p.failover.effective_slow_start())
        .unwrap_or_else(|| {
            meridian_shared::domain::FailoverPolicy::default().effective_slow_start()
        })
}

/// The calls in flight a node may take: the `endpoint_limits.max_requests_per_endpoint`
/// of the first of its services (by name) whose policy sets one; the proxy's otherwise. (A
/// node has one count of calls in flight, shared by all the services it serves.)
fn max_requests(
    data: &TableData,
    node: &meridian_shared::domain::Node,
    proxy: &UpstreamLimits,
) -> u32 {
    let mut services: Vec<&String> = node.services.iter().collect();
    services.sort();
    services
        .into_iter()
        .filter_map(|s| data.services.get(s))
        .map(|p| p.endpoint_limits.max_requests_per_endpoint)
        .find(|&max| max > 0)
        .unwrap_or(proxy.max_requests_per_endpoint)
}

/// A node's breaker follows the outlier policy of the first of its services (by name) whose
/// policy sets one; the defaults otherwise. (A node has one connection and one breaker,
/// shared by all the services it serves.)
fn breaker_settings(data: &TableData, node: &meridian_shared::domain::Node) -> BreakerSettings {
    let mut services: Vec<&String> = node.services.iter().collect();
    services.sort();
    services
        .into_iter()
        .filter_map(|s| data.services.get(s))
        .find(|p| p.outlier != Default::default())
        .map(|p| BreakerSettings::from_policy(&p.outlier))
        .unwrap_or_default()
}

/// The usable endpoints of the tier, backup group or region a failover of this service
/// sends its traffic to; `None` when no failover is in force, or when the target has no
/// usable endpoint (then routing stays as it was rather than going nowhere).
fn failover_endpoints(
    data: &TableData,
    policy: &ServicePolicy,
    usable: &[Arc<Endpoint>],
) -> Option<Vec<Arc<Endpoint>>> {
    let failover = data.failovers.get(&policy.name)?;
    let targeted: Vec<Arc<Endpoint>> = usable
        .iter()
        .filter(|e| in_failover_target(data, policy, e))
        .cloned()
        .collect();
    if targeted.is_empty() {
        tracing::warn!(
            service = %policy.name,
            target = %failover.target,
            "failover target has no usable endpoint; routing as if there were no failover"
        );
        return None;
    }
    Some(targeted)
}

/// Whether `endpoint` is in the tier, backup group or region the failover of this service
/// in force (if any) targets.
fn in_failover_target(data: &TableData, policy: &ServicePolicy, endpoint: &Endpoint) -> bool {
    let Some(failover) = data.failovers.get(&policy.name) else {
        return true;
    };
    let node = &endpoint.node;
    match policy
        .failover
        .tiers
        .iter()
        .find(|t| t.name == failover.target)
    {
        Some(tier) => {
            tier.regions.contains(&node.region)
                || tier.zones.contains(&node.zone)
                || tier.nodes.contains(&node.id)
        }
        None => node.region == failover.target,
    }
}

fn humantime_rfc3339(time: SystemTime) -> String {
    prost_types::Timestamp::from(time).to_string()
}

/// The table in force, shared by the request path and the subscription.
#[derive(Debug, Clone, Default)]
pub struct TableHandle(Arc<ArcSwapOption<ProxyTable>>);

impl TableHandle {
    /// The current table; cheap, lock-free, and stable for as long as it is held.
    pub fn load(&self) -> Guard<Option<Arc<ProxyTable>>> {
        self.0.load()
    }

    pub fn current(&self) -> Option<Arc<ProxyTable>> {
        self.0.load_full()
    }

    pub fn store(&self, table: ProxyTable) {
        metrics::gauge!(
            "meridian_proxy_table_version",
            "federation" => table.data.federation.clone()
        )
        .set(table.version() as f64);
        metrics::gauge!("meridian_proxy_table_age_seconds").set(0.0);
        self.0.store(Some(Arc::new(table)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meridian_shared::domain::{Node, NodeStatus, OutlierPolicy};

    use super::*;

    fn data(outlier: OutlierPolicy) -> TableData {
        let mut data = TableData {
            version: 1,
            federation: "prod".into(),
            ..Default::default()
        };
        data.nodes.insert(
            "n1".into(),
            Node {
                id: "n1".into(),
                address: "127.0.0.1:9".into(),
                services: vec!["demo.v1.Echo".into()],
                ..Default::default()
            },
        );
        data.services.insert(
            "demo.v1.Echo".into(),
            ServicePolicy {
                name: "demo.v1.Echo".into(),
                outlier,
                ..Default::default()
            },
        );
        data
    }

    #[test]
    fn a_nodes_breaker_follows_its_services_outlier_policy() {
        let identity = ProxyIdentity::default();
        let table = ProxyTable::build(
            data(OutlierPolicy::default()),
            &identity,
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        assert_eq!(
            table.endpoint("n1").unwrap().breaker.settings(),
            BreakerSettings::default()
        );

        let strict = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection_ms: 500,
            max_ejection_ms: 4_000,
            ..Default::default()
        };
        let next = ProxyTable::build(
            data(strict),
            &identity,
            Some(&table),
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let settings = next.endpoint("n1").unwrap().breaker.settings();
        assert_eq!(
            settings,
            BreakerSettings {
                threshold: 2,
                min_penalty: Duration::from_millis(500),
                max_penalty: Duration::from_secs(4),
                ..BreakerSettings::default()
            },
            "a policy change must reach the breaker"
        );
    }

    #[test]
    fn a_nodes_limit_of_calls_in_flight_follows_its_services_policy_else_the_proxys() {
        let identity = ProxyIdentity::default();
        let upstream = UpstreamSettings {
            limits: UpstreamLimits {
                max_requests_per_endpoint: 50,
                stream_idle_timeout_ms: 0,
                default_deadline_ms: 7_000,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut data = data(OutlierPolicy::default());
        let table = ProxyTable::build(
            data.clone(),
            &identity,
            None,
            TableSource::Stream,
            &upstream,
        );
        assert_eq!(table.endpoint("n1").unwrap().max_requests(), 50);
        let route = table.service("demo.v1.Echo").unwrap();
        assert_eq!(route.default_deadline, Some(Duration::from_secs(7)));
        assert_eq!(route.stream_idle_timeout, None);

        let policy = data.services.get_mut("demo.v1.Echo").unwrap();
        policy.endpoint_limits.max_requests_per_endpoint = 3;
        policy.endpoint_limits.stream_idle_timeout_ms = 2_000;
        policy.timeout.default_timeout_ms = 500;
        let next = ProxyTable::build(
            data,
            &identity,
            Some(&table),
            TableSource::Stream,
            &upstream,
        );
        let endpoint = next.endpoint("n1").unwrap();
        assert!(
            Arc::ptr_eq(endpoint, table.endpoint("n1").unwrap()),
            "the endpoint is reused"
        );
        assert_eq!(endpoint.max_requests(), 3, "the policy's limit reaches it");
        let route = next.service("demo.v1.Echo").unwrap();
        assert_eq!(route.default_deadline, Some(Duration::from_millis(500)));
        assert_eq!(route.stream_idle_timeout, Some(Duration::from_secs(2)));
        let shown = &next.debug_json()["services"][0]["endpoint_limits"];
        assert_eq!(shown["max_requests_per_endpoint"], 3);
        assert_eq!(shown["default_deadline_ms"], 500);
    }

    #[tokio::test]
    async fn at_most_the_maximum_share_of_a_services_endpoints_is_ejected() {
        let mut data = data(OutlierPolicy::default());
        for id in ["n2", "n3", "n4"] {
            let mut node = data.nodes["n1"].clone();
            node.id = id.into();
            data.nodes.insert(id.into(), node);
        }
        let table = ProxyTable::build(
            data,
            &ProxyIdentity::default(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let route = table.service("demo.v1.Echo").unwrap();
        for endpoint in route.all.endpoints() {
            for _ in 0..10 {
                route.record_failure(endpoint);
            }
        }
        let ejected = route
            .all
            .endpoints()
            .iter()
            .filter(|e| e.breaker.is_open())
            .count();
        assert_eq!(ejected, 2, "the default cap is half of the 4 endpoints");
    }

    /// The share of 20,000 picks of Echo's balancer that stay in eu-west, seen from a
    /// proxy there, when eu-west's three nodes have `statuses` and us-east has two healthy
    /// ones.
    fn home_share(statuses: [NodeStatus; 3]) -> f64 {
        let mut data = data(OutlierPolicy::default());
        data.nodes.clear();
        let nodes = statuses
            .iter()
            .enumerate()
            .map(|(i, &status)| (format!("eu-{i}"), "eu-west", status))
            .chain((0..2).map(|i| (format!("us-{i}"), "us-east", NodeStatus::Healthy)));
        for (i, (id, region, status)) in nodes.enumerate() {
            let node = Node {
                id: id.clone(),
                address: format!("127.0.0.1:{}", 9 + i),
                region: region.into(),
                status,
                services: vec!["demo.v1.Echo".into()],
                ..Default::default()
            };
            data.nodes.insert(id, node);
        }
        let identity = ProxyIdentity {
            region: "eu-west".into(),
            ..Default::default()
        };
        let table = ProxyTable::build(
            data,
            &identity,
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let all = &table.service("demo.v1.Echo").unwrap().all;
        let home = (0..20_000)
            .filter(|_| {
                let pick = all.pick(&Default::default()).unwrap();
                all.endpoints()[pick.index].node.region == "eu-west"
            })
            .count();
        home as f64 / 20_000.0
    }

    #[test]
    fn nodes_marked_down_count_in_their_regions_total_and_lost_ones_do_not() {
        use NodeStatus::{Draining, Failed, Healthy, Lost, Quarantined, Unhealthy};
        assert_eq!(home_share([Healthy; 3]), 1.0);
        // 1.4 × 2/3 = 93.3 % stays home.
        for down in [Unhealthy, Quarantined, Draining, Failed] {
            let share = home_share([Healthy, Healthy, down]);
            assert!(
                (0.917..0.95).contains(&share),
                "{down:?}: home kept {share}"
            );
        }
        // 1.4 × 1/3 = 46.7 % stays home, 53.3 % spills.
        let share = home_share([Healthy, Unhealthy, Quarantined]);
        assert!((0.447..0.487).contains(&share), "home kept {share}");
        // Lost nodes have left the federation: the one left is the whole region.
        assert_eq!(home_share([Healthy, Lost, Lost]), 1.0);
    }

    /// The next table after `table`, whose data `change` edits.
    fn next(table: &ProxyTable, change: impl FnOnce(&mut TableData)) -> ProxyTable {
        let mut data = table.data.clone();
        data.version += 1;
        change(&mut data);
        ProxyTable::build(
            data,
            &ProxyIdentity::default(),
            Some(table),
            TableSource::Stream,
            &UpstreamSettings::default(),
        )
    }

    #[tokio::test]
    async fn the_retry_budget_outlives_table_versions_until_its_policy_changes() {
        let first = ProxyTable::build(
            data(OutlierPolicy::default()),
            &ProxyIdentity::default(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let budget =
            |table: &ProxyTable| Arc::clone(&table.service("demo.v1.Echo").unwrap().retry_budget);
        let health_write = next(&first, |data| {
            data.nodes.get_mut("n1").unwrap().status_reason = "probe ok".into();
        });
        assert!(
            Arc::ptr_eq(&budget(&first), &budget(&health_write)),
            "a table that changes no retry policy keeps the budget (and what it has spent)"
        );
        let new_policy = next(&health_write, |data| {
            let retry = &mut data.services.get_mut("demo.v1.Echo").unwrap().retry;
            retry.max_attempts = retry.max_attempts.max(1) + 1;
        });
        assert!(!Arc::ptr_eq(&budget(&health_write), &budget(&new_policy)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoints_state_survives_changes_to_its_node_but_its_address() {
        let first = ProxyTable::build(
            data(OutlierPolicy::default()),
            &ProxyIdentity::default(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let endpoint = Arc::clone(first.endpoint("n1").unwrap());
        for _ in 0..BreakerSettings::default().threshold {
            endpoint.breaker.record_failure();
        }
        endpoint.ewma.observe(Duration::from_millis(250));
        let latency = endpoint.ewma.estimate();
        let _call = endpoint.start_request();

        // A health verdict, a label, a new weight and zone: the same live state.
        let changed = next(&first, |d| {
            let node = d.nodes.get_mut("n1").unwrap();
            node.status = meridian_shared::domain::NodeStatus::Healthy;
            node.labels.insert("tier".into(), "gold".into());
            node.weight = 300;
            node.zone = "eu-west-b".into();
        });
        let kept = changed.endpoint("n1").unwrap();
        assert_eq!(kept.node.weight, 300, "the node's new fields are in force");
        assert_eq!(kept.node.zone, "eu-west-b");
        assert!(kept.breaker.is_open(), "an ejected node stays ejected");
        assert_eq!(kept.in_flight(), 1, "calls in flight are still counted");
        assert_eq!(
            kept.ewma.estimate(),
            latency,
            "the latency estimate is kept"
        );
        assert!(Arc::ptr_eq(&kept.connection, &endpoint.connection));
        assert_eq!(
            kept.warmth(),
            1.0,
            "a node usable before does not warm up again"
        );
        let route = changed.service("demo.v1.Echo").unwrap();
        assert_eq!(route.all.endpoints()[0].node.weight, 300);

        // Nothing changed: the very endpoint.
        let same = next(&changed, |_| {});
        assert!(Arc::ptr_eq(
            same.endpoint("n1").unwrap(),
            changed.endpoint("n1").unwrap()
        ));

        // A new address: a new connection and a fresh state.
        let moved = next(&same, |d| {
            d.nodes.get_mut("n1").unwrap().address = "127.0.0.1:10".into()
        });
        let fresh = moved.endpoint("n1").unwrap();
        assert!(!Arc::ptr_eq(&fresh.connection, &endpoint.connection));
        assert!(!fresh.breaker.is_open());
        assert_eq!(fresh.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_recovered_node_warms_up_over_its_kept_state() {
        let mut failed = data(OutlierPolicy::default());
        failed.nodes.get_mut("n1").unwrap().status = meridian_shared::domain::NodeStatus::Failed;
        let first = ProxyTable::build(
            failed,
            &ProxyIdentity::default(),
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        let before = Arc::clone(first.endpoint("n1").unwrap());
        let recovered = next(&first, |d| {
            d.nodes.get_mut("n1").unwrap().status = meridian_shared::domain::NodeStatus::Healthy
        });
        let endpoint = recovered.endpoint("n1").unwrap();
        assert!(Arc::ptr_eq(&endpoint.connection, &before.connection));
        assert!(endpoint.warmth() < 0.2, "a node usable again ramps up");
    }

    #[tokio::test]
    async fn only_nodes_that_join_after_the_first_table_warm_up() {
        let identity = ProxyIdentity::default();
        let first = data(OutlierPolicy::default());
        let table = ProxyTable::build(
            first.clone(),
            &identity,
            None,
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        assert_eq!(
            table.endpoint("n1").unwrap().warmth(),
            1.0,
            "the first table's nodes take full load"
        );

        let mut second = first;
        let mut joining = second.nodes["n1"].clone();
        joining.id = "n2".into();
        second.nodes.insert("n2".into(), joining);
        let next = ProxyTable::build(
            second,
            &identity,
            Some(&table),
            TableSource::Stream,
            &UpstreamSettings::default(),
        );
        assert_eq!(next.endpoint("n1").unwrap().warmth(), 1.0);
        assert!(
            next.endpoint("n2").unwrap().warmth() < 0.2,
            "a node added later starts warming"
        );
    }
}
