//! `meridianctl services list|set|delete`, and how a service policy prints (also used by
//! `meridianctl topology`), rate limits per client tier included.
//!
//! `services set` edits rather than replaces: the Admin API only offers "upsert the whole
//! policy", and most of a policy (failover tiers, outlier ejection, health checks, scaling)
//! has no flag here (the concurrency limit has: `--concurrency static|adaptive|none` and
//! the `--concurrency-*` / `--queue-*` flags, and the adaptive algorithm its `--adaptive-*` flags), so the command reads the current policy, changes the fields given on
//! the command line and writes it back. A new service starts from the defaults.

use clap::{Args, Subcommand, ValueEnum};
use meridian_proto::v1 as pb;
use meridian_shared::domain::ConcurrencyPolicy;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, text_cell};
use super::{CtlError, Output, enums};

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// List service routing policies.
    List {
        /// Only services of this federation.
        #[arg(long)]
        federation: Option<String>,
    },
    /// Create a service's routing policy or change fields of an existing one; fields not
    /// given keep their current values.
    Set(Box<SetArgs>),
    /// Delete a service's routing policy.
    Delete {
        /// The fully qualified gRPC service name, e.g. demo.v1.Echo.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// The fully qualified gRPC service name, e.g. demo.v1.Echo.
    name: String,
    /// The federation whose nodes serve it; it must exist.
    #[arg(long)]
    federation: String,
    /// How proxies pick a node among the usable ones (default least_connections).
    #[arg(long, value_parser = enums::algorithm_parser())]
    algorithm: Option<pb::Algorithm>,
    /// For consistent_hash: the request header holding the affinity key, e.g. x-user-id.
    #[arg(long, value_name = "HEADER")]
    hash_header: Option<String>,
    /// Most attempts per request, the first included, 1 to 10 (0: the default, 3).
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// A method safe to retry even after it reached a node: "/pkg.Service/Method" or
    /// "pkg.Service/*". Repeat for more; replaces the current list.
    #[arg(long = "idempotent-method", value_name = "METHOD")]
    idempotent_methods: Vec<String>,
    /// Deadline for requests that carry no grpc-timeout, in milliseconds (0: the proxy's
    /// --default-deadline-ms, none unless set).
    #[arg(long, value_name = "MS")]
    default_timeout_ms: Option<u32>,
    /// Calls in flight at once from one proxy to one node; a full node is skipped, and
    /// with every node full calls fail fast with UNAVAILABLE (0: the proxy's
    /// --max-requests-per-endpoint, default 1024).
    #[arg(long, value_name = "N")]
    max_requests_per_endpoint: Option<u32>,
    /// A forwarded call with no frame in either direction for this long ends with
    /// UNAVAILABLE, in milliseconds (0: the proxy's --stream-idle-timeout-ms, default
    /// 300000).
    #[arg(long, value_name = "MS")]
    stream_idle_timeout_ms: Option<u32>,
    /// Largest gRPC message (request or response) a call may carry, in bytes; larger ones
    /// end the call with RESOURCE_EXHAUSTED (0: the proxy's --max-message-bytes).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<u32>,
    /// How long proxies keep a RouteMessage answer for retries with the same idempotency
    /// key, in milliseconds (0: not kept; messages in flight at once are still joined).
    #[arg(long, value_name = "MS")]
    dedup_ttl_ms: Option<u32>,
    /// Most RouteMessage answers a proxy keeps for the service (0: the default, 10000).
    #[arg(long, value_name = "N")]
    dedup_max_entries: Option<u32>,
    /// Most bytes of RouteMessage answers a proxy keeps for the service (0: the default,
    /// 16 MiB).
    #[arg(long, value_name = "BYTES")]
    dedup_max_bytes: Option<u64>,
    /// Whether the service's message ids are unique, so an id serves as the idempotency
    /// key of a message that has none.
    #[arg(long, value_name = "BOOL")]
    ids_are_unique: Option<bool>,
    /// A client tier's federation-wide rate limit: NAME=CALLS_PER_SECOND[/BURST], e.g.
    /// free=50/10 or pro=1000 (burst 0 or absent: one second of the rate). Repeat for
    /// more; replaces the current tiers.
    #[arg(long = "rate-limit-tier", value_name = "NAME=RATE[/BURST]", value_parser = parse_tier)]
    rate_limit_tiers: Vec<pb::RateLimitTier>,
    /// The request header naming a call's tier (default x-meridian-tier).
    #[arg(long, value_name = "HEADER")]
    rate_limit_header: Option<String>,
    /// The tier of calls without the header or naming an unknown tier (default: the
    /// first tier).
    #[arg(long, value_name = "TIER")]
    rate_limit_default_tier: Option<String>,
    /// Remove the service's rate limits.
    #[arg(long, conflicts_with_all = ["rate_limit_tiers", "rate_limit_header", "rate_limit_default_tier"])]
    no_rate_limit: bool,
    /// A fallback service, e.g. demo.v1.EchoBackup: calls go to it when this service has
    /// no usable node or a call still fails retryably after its attempts (forwarded calls
    /// to the same method of it). Repeat for a chain, tried in order (at most 4); replaces
    /// the current chain.
    #[arg(long = "fallback", value_name = "SERVICE")]
    fallback_services: Vec<String>,
    /// Remove the service's fallback chain.
    #[arg(long, conflicts_with = "fallback_services")]
    no_fallback: bool,
    /// Whether forwarded calls may go to every region's nodes as the algorithm picks them
    /// (true), or stay in the proxy's region while it has usable capacity (false, the
    /// default).
    #[arg(long, value_name = "BOOL")]
    global_routing: Option<bool>,
    #[command(flatten)]
    concurrency: ConcurrencyArgs,
    /// The adaptive algorithm: candidates sampled per call, 2 to 8 (0: 3).
    #[arg(long, value_name = "N")]
    adaptive_choices: Option<u32>,
    /// The adaptive algorithm: projected utilisation above which a node is avoided while
    /// a cooler candidate exists (0: 1.5).
    #[arg(long, value_name = "FRACTION")]
    adaptive_hot_utilization: Option<f64>,
    /// The adaptive algorithm: how long a node's ORCA report counts, ms (0: 2000).
    #[arg(long, value_name = "MS")]
    adaptive_report_ttl_ms: Option<u32>,
    /// The adaptive algorithm: ignore the load nodes report (ORCA), or heed it again.
    #[arg(long, value_name = "BOOL")]
    adaptive_ignore_node_reports: Option<bool>,
    /// The adaptive algorithm: ask each node for ORCA reports out of band every this many
    /// ms, 100 to 60000 (0: no stream).
    #[arg(long, value_name = "MS")]
    adaptive_oob_report_interval_ms: Option<u32>,
    /// The adaptive algorithm: Prequal probes per call, 0 to 4 (0: no probes).
    #[arg(long, value_name = "RATE")]
    adaptive_probes_per_call: Option<f64>,
    /// The adaptive algorithm: with probes on, a probe round at least this often, ms
    /// (0: 1000).
    #[arg(long, value_name = "MS")]
    adaptive_probe_idle_interval_ms: Option<u32>,
    /// The adaptive algorithm: quantile of the probed in-flight above which a node is hot
    /// (0: 0.8).
    #[arg(long, value_name = "FRACTION")]
    adaptive_probe_hot_quantile: Option<f64>,
}

/// The concurrency limit per proxy and its queue; see `ConcurrencyPolicy` in
/// topology.proto. Fields not given keep their values.
#[derive(Debug, Args)]
pub struct ConcurrencyArgs {
    /// How the proxies limit the calls in flight: static, adaptive (from measured
    /// latency), or none (clears every concurrency setting).
    #[arg(long, value_enum, value_name = "KIND")]
    concurrency: Option<LimitKind>,
    /// Static: the limit. Adaptive: the starting limit (0: 20).
    #[arg(long, value_name = "N")]
    concurrency_limit: Option<u32>,
    /// Adaptive: the lowest limit (0: 3).
    #[arg(long, value_name = "N")]
    concurrency_min_limit: Option<u32>,
    /// Adaptive: the highest limit (0: 1000).
    #[arg(long, value_name = "N")]
    concurrency_max_limit: Option<u32>,
    /// Adaptive: how often the limit is recomputed, in milliseconds (0: 100).
    #[arg(long, value_name = "MS")]
    concurrency_sample_window_ms: Option<u32>,
    /// Adaptive: how often the no-load latency is measured again, in milliseconds
    /// (0: 30000).
    #[arg(long, value_name = "MS")]
    concurrency_min_rtt_interval_ms: Option<u32>,
    /// Calls that may wait for a slot (0: none wait).
    #[arg(long, value_name = "N")]
    queue_size: Option<u32>,
    /// Longest a call waits for a slot, in milliseconds (0: 1000).
    #[arg(long, value_name = "MS")]
    queue_max_wait_ms: Option<u32>,
    /// Queue wait above which lower priorities are shed, in milliseconds (0: a quarter
    /// of the longest wait).
    #[arg(long, value_name = "MS")]
    queue_target_wait_ms: Option<u32>,
    /// Which call goes when the queue is full.
    #[arg(long, value_enum, value_name = "STRATEGY")]
    queue_drop: Option<DropStrategy>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LimitKind {
    None,
    Static,
    Adaptive,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DropStrategy {
    RejectNew,
    DropOldest,
}

impl ConcurrencyArgs {
    fn apply(self, policy: &mut Option<pb::ConcurrencyPolicy>) {
        if let Some(LimitKind::None) = self.concurrency {
            *policy = None;
            return;
        }
        let c = policy.get_or_insert_default();
        if let Some(kind) = self.concurrency {
            c.kind = match kind {
                LimitKind::Static => pb::ConcurrencyLimitKind::Static,
                _ => pb::ConcurrencyLimitKind::Adaptive,
            } as i32;
        }
        if let Some(drop) = self.queue_drop {
            c.drop_strategy = match drop {
                DropStrategy::RejectNew => pb::QueueDropStrategy::RejectNew,
                DropStrategy::DropOldest => pb::QueueDropStrategy::DropOldest,
            } as i32;
        }
        for (value, field) in [
            (self.concurrency_limit, &mut c.limit),
            (self.concurrency_min_limit, &mut c.min_limit),
            (self.concurrency_max_limit, &mut c.max_limit),
            (self.concurrency_sample_window_ms, &mut c.sample_window_ms),
            (
                self.concurrency_min_rtt_interval_ms,
                &mut c.min_rtt_interval_ms,
            ),
            (self.queue_size, &mut c.max_queue),
            (self.queue_max_wait_ms, &mut c.max_queue_wait_ms),
            (self.queue_target_wait_ms, &mut c.target_queue_wait_ms),
        ] {
            if let Some(value) = value {
                *field = value;
            }
        }
        if *c == pb::ConcurrencyPolicy::default() {
            *policy = None;
        }
    }
}

/// `NAME=RATE[/BURST]`.
fn parse_tier(text: &str) -> Result<pb::RateLimitTier, String> {
    let (name, limit) = text.split_once('=').ok_or_else(|| {
        format!("{text:?}: expected NAME=CALLS_PER_SECOND[/BURST], e.g. free=50/10")
    })?;
    let (rate, burst) = match limit.split_once('/') {
        Some((rate, burst)) => (rate, Some(burst)),
        None => (limit, None),
    };
    let calls_per_second = rate
        .parse::<f64>()
        .map_err(|_| format!("{text:?}: {rate:?} is not a number of calls per second"))?;
    let burst = burst
        .map(|b| b.parse::<u32>())
        .transpose()
        .map_err(|_| format!("{text:?}: the burst is not a whole number of calls"))?
        .unwrap_or(0);
    Ok(pb::RateLimitTier {
        name: name.to_owned(),
        calls_per_second,
        burst,
    })
}

impl SetArgs {
    /// Applies the flags given to `policy`, leaving every other field as it is.
    fn apply(self, policy: &mut pb::ServicePolicy) {
        self.apply_limits(policy);
        policy.name = self.name;
        policy.federation = self.federation;
        if let Some(algorithm) = self.algorithm {
            policy.algorithm = algorithm as i32;
        }
        if let Some(header) = self.hash_header {
            policy.hash.get_or_insert_default().header = header;
        }
        if let Some(max_attempts) = self.max_attempts {
            policy.retry.get_or_insert_default().max_attempts = max_attempts;
        }
        if !self.idempotent_methods.is_empty() {
            policy.retry.get_or_insert_default().idempotent_methods = self.idempotent_methods;
        }
        if let Some(timeout) = self.default_timeout_ms {
            policy.timeout.get_or_insert_default().default_timeout_ms = timeout;
        }
        if self.no_rate_limit {
            policy.rate_limit = None;
        }
        if !self.rate_limit_tiers.is_empty() {
            policy.rate_limit.get_or_insert_default().tiers = self.rate_limit_tiers;
        }
        if let Some(header) = self.rate_limit_header {
            policy.rate_limit.get_or_insert_default().tier_header = header;
        }
        if let Some(tier) = self.rate_limit_default_tier {
            policy.rate_limit.get_or_insert_default().default_tier = tier;
        }
        if self.no_fallback {
            policy.fallback_services.clear();
        }
        if !self.fallback_services.is_empty() {
            policy.fallback_services = self.fallback_services;
        }
        if let Some(global) = self.global_routing {
            policy.global_routing = global;
        }
        self.concurrency.apply(&mut policy.concurrency);
        let adaptive = &mut policy.adaptive;
        if let Some(choices) = self.adaptive_choices {
            adaptive.get_or_insert_default().choices = choices;
        }
        if let Some(hot) = self.adaptive_hot_utilization {
            adaptive.get_or_insert_default().hot_utilization = hot;
        }
        if let Some(ttl) = self.adaptive_report_ttl_ms {
            adaptive.get_or_insert_default().report_ttl_ms = ttl;
        }
        if let Some(ignore) = self.adaptive_ignore_node_reports {
            adaptive.get_or_insert_default().ignore_node_reports = ignore;
        }
        if let Some(interval) = self.adaptive_oob_report_interval_ms {
            adaptive.get_or_insert_default().oob_report_interval_ms = interval;
        }
        if let Some(rate) = self.adaptive_probes_per_call {
            adaptive.get_or_insert_default().probes_per_call = rate;
        }
        if let Some(interval) = self.adaptive_probe_idle_interval_ms {
            adaptive.get_or_insert_default().probe_idle_interval_ms = interval;
        }
        if let Some(quantile) = self.adaptive_probe_hot_quantile {
            adaptive.get_or_insert_default().probe_hot_quantile = quantile;
        }
    }

    fn apply_limits(&self, policy: &mut pb::ServicePolicy) {
        let set = |policy: &mut pb::ServicePolicy, change: &dyn Fn(&mut pb::RequestLimits)| {
            change(policy.limits.get_or_insert_default());
        };
        if let Some(bytes) = self.max_message_bytes {
            set(policy, &|l| l.max_message_bytes = bytes);
        }
        if let Some(ttl) = self.dedup_ttl_ms {
            set(policy, &|l| l.dedup_ttl_ms = ttl);
        }
        if let Some(entries) = self.dedup_max_entries {
            set(policy, &|l| l.dedup_max_entries = entries);
        }
        if let Some(bytes) = self.dedup_max_bytes {
            set(policy, &|l| l.dedup_max_bytes = bytes);
        }
        if let Some(unique) = self.ids_are_unique {
            set(policy, &|l| l.ids_are_unique = unique);
        }
        if let Some(max) = self.max_requests_per_endpoint {
            policy
                .endpoint_limits
                .get_or_insert_default()
                .max_requests_per_endpoint = max;
        }
        if let Some(idle) = self.stream_idle_timeout_ms {
            policy
                .endpoint_limits
                .get_or_insert_default()
                .stream_idle_timeout_ms = idle;
        }
    }
}

pub(super) async fn run(
    mut admin: Admin,
    command: ServicesCommand,
    format: Output,
) -> Result<(), CtlError> {
    match command {
        ServicesCommand::List { federation } => {
            let services = list(&mut admin, federation.unwrap_or_default()).await?;
            print_list(&services, format)
        }
        ServicesCommand::Set(args) => {
            // Any federation: a service moving to another federation keeps its policy.
            let mut policy = list(&mut admin, String::new())
                .await?
                .into_iter()
                .find(|p| p.name == args.name)
                .unwrap_or_default();
            args.apply(&mut policy);
            let policy = admin
                .upsert_service_policy(pb::UpsertServicePolicyRequest {
                    policy: Some(policy),
                })
                .await?
                .into_inner();
            print_list(std::slice::from_ref(&policy), format)
        }
        ServicesCommand::Delete { name } => {
            admin
                .delete_service_policy(pb::DeleteServicePolicyRequest { name: name.clone() })
                .await?;
            super::print_deleted("service", &name, format)
        }
    }
}

async fn list(admin: &mut Admin, federation: String) -> Result<Vec<pb::ServicePolicy>, CtlError> {
    let request = pb::ListServicesRequest { federation };
    Ok(admin.list_services(request).await?.into_inner().services)
}

fn print_list(services: &[pb::ServicePolicy], format: Output) -> Result<(), CtlError> {
    match format {
        Output::Table => output::emit(&table(services).render()),
        Output::Json => output::emit_json(&Value::Array(services.iter().map(json).collect())),
    }
}

pub(super) fn table(services: &[pb::ServicePolicy]) -> Table {
    let mut table = Table::new(&[
        "SERVICE",
        "FEDERATION",
        "ALGORITHM",
        "HASH HEADER",
        "MAX ATTEMPTS",
        "DEFAULT TIMEOUT",
        "CONCURRENCY",
        "MAX MESSAGE",
        "DEDUP TTL",
        "MAX PER NODE",
        "IDLE TIMEOUT",
        "RATE LIMITS",
        "FALLBACK",
    ]);
    for s in services {
        let retry = s.retry.clone().unwrap_or_default();
        let timeout = s.timeout.unwrap_or_default();
        let limits = s.limits.unwrap_or_default();
        let endpoint_limits = s.endpoint_limits.unwrap_or_default();
        table.push(vec![
            s.name.clone(),
            s.federation.clone(),
            enums::algorithm_name(s.algorithm),
            text_cell(&s.hash.clone().unwrap_or_default().header),
            match retry.max_attempts {
                0 => "default".to_owned(),
                n => n.to_string(),
            },
            match timeout.default_timeout_ms {
                0 => "proxy default".to_owned(),
                ms => format!("{ms}ms"),
            },
            concurrency_cell(s.concurrency.as_ref()),
            match limits.max_message_bytes {
                0 => "proxy default".to_owned(),
                bytes => format!("{bytes}B"),
            },
            match limits.dedup_ttl_ms {
                0 => "off".to_owned(),
                ms => format!("{ms}ms"),
            },
            match endpoint_limits.max_requests_per_endpoint {
                0 => "proxy default".to_owned(),
                n => n.to_string(),
            },
            match endpoint_limits.stream_idle_timeout_ms {
                0 => "proxy default".to_owned(),
                ms => format!("{ms}ms"),
            },
            rate_limits_cell(s.rate_limit.as_ref()),
            match s.fallback_services.as_slice() {
                [] => "none".to_owned(),
                chain => chain.join(" > "),
            },
        ]);
    }
    table
}

/// The limit in short: `none`, `static 50, queue 20/500ms`, `adaptive 1-1000, queue 0`.
fn concurrency_cell(policy: Option<&pb::ConcurrencyPolicy>) -> String {
    let Some(Ok(c)) = policy.copied().map(ConcurrencyPolicy::try_from) else {
        return "none".to_owned();
    };
    let limit = match c.kind {
        meridian_shared::domain::ConcurrencyLimitKind::None => return "none".to_owned(),
        meridian_shared::domain::ConcurrencyLimitKind::Static => format!("static {}", c.limit),
        meridian_shared::domain::ConcurrencyLimitKind::Adaptive => format!(
            "adaptive {}-{}",
            c.effective_min_limit(),
            c.effective_max_limit()
        ),
    };
    format!(
        "{limit}, queue {}/{}ms",
        c.max_queue,
        c.effective_max_queue_wait().as_millis()
    )
}

fn concurrency_json(policy: Option<&pb::ConcurrencyPolicy>) -> Value {
    let c = policy.copied().unwrap_or_default();
    let domain = ConcurrencyPolicy::try_from(c).unwrap_or_default();
    json!({
        "kind": domain.kind.as_str(),
        "limit": c.limit,
        "min_limit": c.min_limit,
        "max_limit": c.max_limit,
        "max_queue": c.max_queue,
        "max_queue_wait_ms": c.max_queue_wait_ms,
        "drop_strategy": domain.drop_strategy.as_str(),
        "target_queue_wait_ms": c.target_queue_wait_ms,
        "sample_window_ms": c.sample_window_ms,
        "min_rtt_interval_ms": c.min_rtt_interval_ms,
    })
}

/// `free=50/s(burst 10)* pro=1000/s` (the default tier starred), or `none`.
fn rate_limits_cell(policy: Option<&pb::RateLimitPolicy>) -> String {
    let Some(policy) = policy.filter(|p| !p.tiers.is_empty()) else {
        return "none".to_owned();
    };
    let default = if policy.default_tier.is_empty() {
        &policy.tiers[0].name
    } else {
        &policy.default_tier
    };
    let tiers: Vec<String> = policy
        .tiers
        .iter()
        .map(|t| {
            let burst = match t.burst {
                0 => String::new(),
                b => format!("(burst {b})"),
            };
            let star = if &t.name == default { "*" } else { "" };
            format!("{}={}/s{burst}{star}", t.name, t.calls_per_second)
        })
        .collect();
    tiers.join(" ")
}

/// The whole policy; absent sub-policies print as their defaults (zeros) so every
/// service has the same shape.
pub(crate) fn json(policy: &pb::ServicePolicy) -> Value {
    let failover = policy.failover.clone().unwrap_or_default();
    let retry = policy.retry.clone().unwrap_or_default();
    let timeout = policy.timeout.unwrap_or_default();
    let outlier = policy.outlier.unwrap_or_default();
    let hash = policy.hash.clone().unwrap_or_default();
    let scaling = policy.scaling.clone().unwrap_or_default();
    let limits = policy.limits.unwrap_or_default();
    let endpoint_limits = policy.endpoint_limits.unwrap_or_default();
    let rate_limit = policy.rate_limit.clone().unwrap_or_default();
    let adaptive = policy.adaptive.unwrap_or_default();
    let tiers: Vec<Value> = failover
        .tiers
        .iter()
        .map(
            |t| json!({ "name": t.name, "regions": t.regions, "zones": t.zones, "nodes": t.nodes }),
        )
        .collect();
    json!({
        "name": policy.name,
        "federation": policy.federation,
        "algorithm": enums::algorithm_name(policy.algorithm),
        "failover": {
            "tiers": tiers,
            "overprovisioning_percent": failover.overprovisioning_percent,
            "panic_threshold_percent": failover.panic_threshold_percent,
            "auto_recovery": failover.auto_recovery,
            "slow_start_ms": failover.slow_start_ms,
        },
        "retry": {
            "max_attempts": retry.max_attempts,
            "idempotent_methods": retry.idempotent_methods,
            "budget_percent": retry.budget_percent,
            "budget_min_per_second": retry.budget_min_per_second,
            "backoff_base_ms": retry.backoff_base_ms,
            "backoff_max_ms": retry.backoff_max_ms,
        },
        "timeout": {
            "default_timeout_ms": timeout.default_timeout_ms,
            "max_timeout_ms": timeout.max_timeout_ms,
        },
        "outlier": {
            "consecutive_failures": outlier.consecutive_failures,
            "failure_rate_percent": outlier.failure_rate_percent,
            "min_requests": outlier.min_requests,
            "window_ms": outlier.window_ms,
            "base_ejection_ms": outlier.base_ejection_ms,
            "max_ejection_ms": outlier.max_ejection_ms,
            "max_ejection_percent": outlier.max_ejection_percent,
        },
        "health_check": health_check_json(policy.health_check.as_ref()),
        "hash": { "header": hash.header },
        "scaling": {
            "min_nodes": scaling.min_nodes,
            "max_nodes": scaling.max_nodes,
            "target_utilization_percent": scaling.target_utilization_percent,
            "tolerance_percent": scaling.tolerance_percent,
            "scale_down_stabilization_ms": scaling.scale_down_stabilization_ms,
            "scale_up_stabilization_ms": scaling.scale_up_stabilization_ms,
        },
        "concurrency": concurrency_json(policy.concurrency.as_ref()),
        "adaptive": {
            "choices": adaptive.choices,
            "hot_utilization": adaptive.hot_utilization,
            "report_ttl_ms": adaptive.report_ttl_ms,
            "ignore_node_reports": adaptive.ignore_node_reports,
            "oob_report_interval_ms": adaptive.oob_report_interval_ms,
            "probes_per_call": adaptive.probes_per_call,
            "probe_idle_interval_ms": adaptive.probe_idle_interval_ms,
            "probe_hot_quantile": adaptive.probe_hot_quantile,
        },
        "limits": {
            "max_message_bytes": limits.max_message_bytes,
            "dedup_ttl_ms": limits.dedup_ttl_ms,
            "dedup_max_entries": limits.dedup_max_entries,
            "dedup_max_bytes": limits.dedup_max_bytes,
            "ids_are_unique": limits.ids_are_unique,
        },
        "endpoint_limits": {
            "max_requests_per_endpoint": endpoint_limits.max_requests_per_endpoint,
            "stream_idle_timeout_ms": endpoint_limits.stream_idle_timeout_ms,
        },
        "fallback_services": policy.fallback_services,
        "global_routing": policy.global_routing,
        "rate_limit": {
            "tiers": rate_limit.tiers.iter().map(|t| json!({
                "name": t.name,
                "calls_per_second": t.calls_per_second,
                "burst": t.burst,
            })).collect::<Vec<_>>(),
            "tier_header": rate_limit.tier_header,
            "default_tier": rate_limit.default_tier,
        },
    })
}

fn health_check_json(check: Option<&pb::HealthCheckPolicy>) -> Value {
    let check = check.cloned().unwrap_or_default();
    json!({
        "grpc_service": check.grpc_service,
        "tcp_only": check.tcp_only,
        "interval_ms": check.interval_ms,
        "timeout_ms": check.timeout_ms,
        "unhealthy_threshold": check.unhealthy_threshold,
        "healthy_threshold": check.healthy_threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::tests::parse;
    use crate::ctl::{Command, Noun};

    fn set_args(command_line: &str) -> SetArgs {
        match parse(command_line).expect("parses").command {
            Command::Services(Noun {
                verb: Some(ServicesCommand::Set(args)),
            }) => *args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn set_changes_only_the_fields_given() {
        let mut policy = pb::ServicePolicy {
            name: "demo.v1.Echo".into(),
            federation: "prod".into(),
            algorithm: pb::Algorithm::Geographic as i32,
            retry: Some(pb::RetryPolicy {
                max_attempts: 4,
                budget_percent: 30,
                ..Default::default()
            }),
            ..Default::default()
        };
        set_args(
            "services set demo.v1.Echo --federation prod --algorithm consistent_hash \
             --hash-header x-user-id --idempotent-method /demo.v1.Echo/Get",
        )
        .apply(&mut policy);
        assert_eq!(policy.algorithm, pb::Algorithm::ConsistentHash as i32);
        assert_eq!(policy.hash.expect("hash set").header, "x-user-id");
        let retry = policy.retry.expect("retry kept");
        assert_eq!(retry.max_attempts, 4);
        assert_eq!(retry.budget_percent, 30);
        assert_eq!(retry.idempotent_methods, ["/demo.v1.Echo/Get"]);
        assert_eq!(policy.timeout, None);
        assert_eq!(policy.limits, None, "no limit flag given");
    }

    #[test]
    fn set_takes_a_fallback_chain_and_can_remove_it() {
        let mut policy = pb::ServicePolicy::default();
        set_args(
            "services set demo.v1.Echo --federation prod --fallback demo.v1.EchoBackup \
             --fallback demo.v2.Echo --global-routing true",
        )
        .apply(&mut policy);
        assert_eq!(
            policy.fallback_services,
            ["demo.v1.EchoBackup", "demo.v2.Echo"]
        );
        assert!(policy.global_routing);
        assert_eq!(json(&policy)["fallback_services"][1], "demo.v2.Echo");
        set_args("services set demo.v1.Echo --federation prod --max-attempts 2").apply(&mut policy);
        assert_eq!(policy.fallback_services.len(), 2, "kept");
        set_args("services set demo.v1.Echo --federation prod --no-fallback").apply(&mut policy);
        assert!(policy.fallback_services.is_empty());
        assert!(policy.global_routing, "kept");
    }

    #[test]
    fn set_changes_the_request_limits_given() {
        let mut policy = pb::ServicePolicy {
            limits: Some(pb::RequestLimits {
                dedup_max_entries: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        set_args(
            "services set demo.v1.Echo --federation prod --max-message-bytes 65536 \
             --dedup-ttl-ms 30000 --ids-are-unique true",
        )
        .apply(&mut policy);
        let limits = policy.limits.expect("limits set");
        assert_eq!(limits.max_message_bytes, 65_536);
        assert_eq!(limits.dedup_ttl_ms, 30_000);
        assert!(limits.ids_are_unique);
        assert_eq!(limits.dedup_max_entries, 7, "kept");
        let value = json(&policy);
        assert_eq!(value["limits"]["max_message_bytes"], 65_536);
        assert_eq!(policy.endpoint_limits, None, "no endpoint limit flag given");
    }

    #[test]
    fn set_changes_the_endpoint_limits_given() {
        let mut policy = pb::ServicePolicy {
            endpoint_limits: Some(pb::EndpointLimits {
                stream_idle_timeout_ms: 9_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        set_args("services set demo.v1.Echo --federation prod --max-requests-per-endpoint 32")
            .apply(&mut policy);
        let limits = policy.endpoint_limits.expect("endpoint limits set");
        assert_eq!(limits.max_requests_per_endpoint, 32);
        assert_eq!(limits.stream_idle_timeout_ms, 9_000, "kept");
        let value = json(&policy);
        assert_eq!(value["endpoint_limits"]["max_requests_per_endpoint"], 32);
        let rendered = table(std::slice::from_ref(&policy)).render();
        assert!(rendered.contains("MAX PER NODE"), "{rendered}");
    }

    #[test]
    fn set_tunes_the_adaptive_algorithm_and_keeps_what_is_not_given() {
        let mut policy = pb::ServicePolicy::default();
        set_args(
            "services set demo.v1.Echo --federation prod --adaptive-choices 3 \
             --adaptive-hot-utilization 0.9 --adaptive-report-ttl-ms 500",
        )
        .apply(&mut policy);
        set_args("services set demo.v1.Echo --federation prod --adaptive-ignore-node-reports true")
            .apply(&mut policy);
        set_args(
            "services set demo.v1.Echo --federation prod --adaptive-oob-report-interval-ms 250 \
             --adaptive-probes-per-call 0.5 --adaptive-probe-idle-interval-ms 400 \
             --adaptive-probe-hot-quantile 0.9",
        )
        .apply(&mut policy);
        let a = policy.adaptive.expect("adaptive set");
        assert_eq!(
            (
                a.choices,
                a.hot_utilization,
                a.report_ttl_ms,
                a.ignore_node_reports
            ),
            (3, 0.9, 500, true)
        );
        assert_eq!(
            (
                a.oob_report_interval_ms,
                a.probes_per_call,
                a.probe_idle_interval_ms,
                a.probe_hot_quantile
            ),
            (250, 0.5, 400, 0.9)
        );
        assert_eq!(json(&policy)["adaptive"]["choices"], 3);
        assert_eq!(json(&policy)["adaptive"]["oob_report_interval_ms"], 250);
    }

    #[test]
    fn set_changes_the_concurrency_limit_and_none_clears_it() {
        let mut policy = pb::ServicePolicy::default();
        set_args(
            "services set demo.v1.Echo --federation prod --concurrency adaptive \
             --concurrency-max-limit 300 --queue-size 40 --queue-max-wait-ms 500 \
             --queue-drop drop-oldest",
        )
        .apply(&mut policy);
        let c = policy.concurrency.expect("concurrency set");
        assert_eq!(c.kind, pb::ConcurrencyLimitKind::Adaptive as i32);
        assert_eq!(
            (c.max_limit, c.max_queue, c.max_queue_wait_ms),
            (300, 40, 500)
        );
        assert_eq!(c.drop_strategy, pb::QueueDropStrategy::DropOldest as i32);
        assert_eq!(
            concurrency_cell(policy.concurrency.as_ref()),
            "adaptive 3-300, queue 40/500ms"
        );
        assert_eq!(json(&policy)["concurrency"]["drop_strategy"], "drop_oldest");

        set_args("services set demo.v1.Echo --federation prod --queue-size 10").apply(&mut policy);
        let c = policy.concurrency.expect("concurrency kept");
        assert_eq!((c.max_limit, c.max_queue), (300, 10), "other fields kept");

        set_args("services set demo.v1.Echo --federation prod --concurrency none")
            .apply(&mut policy);
        assert_eq!(policy.concurrency, None);
        assert_eq!(json(&policy)["concurrency"]["kind"], "none");
    }

    #[test]
    fn set_takes_rate_limit_tiers_and_can_remove_them() {
        let mut policy = pb::ServicePolicy {
            name: "demo.v1.Echo".into(),
            federation: "prod".into(),
            ..Default::default()
        };
        set_args(
            "services set demo.v1.Echo --federation prod --rate-limit-tier free=50/10 \
             --rate-limit-tier pro=1000 --rate-limit-default-tier free --rate-limit-header x-plan",
        )
        .apply(&mut policy);
        let limits = policy.rate_limit.clone().expect("rate limits set");
        assert_eq!(limits.tiers.len(), 2);
        assert_eq!(
            (
                limits.tiers[0].name.as_str(),
                limits.tiers[0].calls_per_second,
                limits.tiers[0].burst
            ),
            ("free", 50.0, 10)
        );
        assert_eq!(
            (limits.tiers[1].calls_per_second, limits.tiers[1].burst),
            (1000.0, 0)
        );
        assert_eq!(
            (limits.tier_header.as_str(), limits.default_tier.as_str()),
            ("x-plan", "free")
        );
        assert_eq!(
            rate_limits_cell(Some(&limits)),
            "free=50/s(burst 10)* pro=1000/s"
        );
        assert_eq!(json(&policy)["rate_limit"]["tiers"][1]["name"], "pro");

        set_args("services set demo.v1.Echo --federation prod --no-rate-limit").apply(&mut policy);
        assert_eq!(policy.rate_limit, None);
        assert_eq!(rate_limits_cell(None), "none");

        let err = parse("services set demo.v1.Echo --federation prod --rate-limit-tier free")
            .expect_err("no rate");
        assert!(err.to_string().contains("NAME=CALLS_PER_SECOND"), "{err}");
    }

    #[test]
    fn set_refuses_an_unknown_algorithm() {
        let err = parse("services set demo.v1.Echo --federation prod --algorithm fastest")
            .expect_err("unknown algorithm");
        assert!(err.to_string().contains("least_connections"), "{err}");
    }

    #[test]
    fn policies_print_enums_by_name() {
        let policy = pb::ServicePolicy {
            name: "demo.v1.Echo".into(),
            algorithm: pb::Algorithm::LeastConnections as i32,
            ..Default::default()
        };
        let value = json(&policy);
        assert_eq!(value["algorithm"], "least_connections");
        assert_eq!(value["retry"]["max_attempts"], 0);
    }
}
