//! The proxy's configuration (`meridian-proxy --config FILE`).
//!
//! ```toml
//! id = "proxy-eu-west-1"
//! federation = "prod"
//! region = "eu-west"
//! zone = "eu-west-a"
//! control_planes = ["http://127.0.0.1:7700", "http://127.0.0.1:7710"]
//! table_cache = "/var/lib/meridian/proxy-eu-west-1.table"
//! token_file = "/etc/meridian/proxy.token"   # proxy-role token; else MERIDIAN_TOKEN
//! drain_grace_seconds = 10
//! max_message_bytes = 4194304            # per message; a service's limits.max_message_bytes wins
//! retry_buffer_call_bytes = 4194304      # an idempotent call's body kept for retries, at most
//! retry_buffer_total_bytes = 67108864    # all calls' bodies kept for retries, at most
//! [listen]
//! grpc = "127.0.0.1:7800"    # client traffic (h2c, or TLS with [listen_tls])
//! admin = "127.0.0.1:7801"   # /metrics, /ready, /live, /debug/table (HTTPS with [admin_tls])
//! [listener_limits]          # connections, timeouts, streams (see config/listener_limits.rs)
//! max_connections = 10000
//! idle_timeout_seconds = 300
//! [listen_tls]               # optional: clients connect with TLS
//! cert = "/etc/meridian/tls/proxy-server.pem"
//! key = "/etc/meridian/tls/proxy-server.key"
//! client_ca = "/etc/meridian/tls/clients-ca.pem"   # optional: require client certificates
//! [admin_tls]                # optional: the admin port serves HTTPS
//! cert = "/etc/meridian/tls/proxy-server.pem"
//! key = "/etc/meridian/tls/proxy-server.key"
//! [control_plane_tls]        # needed for https:// control planes
//! ca = "/etc/meridian/tls/ca.pem"
//! cert = "/etc/meridian/tls/proxy.pem"   # optional, with key: mTLS
//! key = "/etc/meridian/tls/proxy.key"
//! [upstream]                 # limits towards the nodes (a service's endpoint_limits wins)
//! max_requests_per_endpoint = 1024       # calls in flight per node; full nodes are skipped
//! max_streams_per_connection = 100       # then another connection to the node is opened
//! max_connections_per_endpoint = 8       # connections per node (at least one per worker)
//! stream_window_bytes = 1048576          # HTTP/2 window of each call from a node
//! stream_idle_timeout_ms = 300000        # no frame either way for this long ends a call
//! default_deadline_ms = 0                # deadline of calls without grpc-timeout; 0: none
//! [[upstream_tls]]           # nodes of these services are reached over TLS
//! services = ["demo.v1.Echo"]            # or ["*"]: every service
//! ca = "/etc/meridian/tls/nodes-ca.pem"
//! [log]
//! format = "human"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::control_plane::valid_endpoint_url;
use super::{ClientTlsConfig, ConfigError, ListenerLimits, ListenerTlsConfig, Validate};
use crate::names::name_problem;
use crate::reload::FixedSettings;
use crate::telemetry::LogConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Stable id, shown in `meridianctl proxies` and in routing decisions.
    pub id: String,
    pub federation: String,
    pub region: String,
    /// Optional: without it, geographic routing starts at the region.
    pub zone: String,
    /// Control-plane replicas, tried in turn.
    pub control_planes: Vec<String>,
    /// Where the last good routing table is kept across restarts.
    pub table_cache: Option<PathBuf>,
    /// File holding the proxy-role token presented to the control plane; without it the
    /// `MERIDIAN_TOKEN` environment variable is used.
    pub token_file: Option<PathBuf>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_grace_seconds: u32,
    /// Largest gRPC message a call may carry, bytes, for services whose policy sets none.
    pub max_message_bytes: u32,
    /// Most bytes of one idempotent call's request body kept for retries; a larger body is
    /// forwarded as it streams, without retries.
    pub retry_buffer_call_bytes: u64,
    /// Most bytes of request bodies kept for retries by all calls at once; a call that
    /// would go over is forwarded as it streams, without retries.
    pub retry_buffer_total_bytes: u64,
    pub listen: ProxyListen,
    /// Limits towards the nodes: calls in flight, connections and their windows,
    /// timeouts.
    pub upstream: UpstreamLimits,
    /// Limits of the client gRPC listener.
    pub listener_limits: ListenerLimits,
    /// TLS on the client gRPC listener; `None` serves h2c (loopback, development).
    pub listen_tls: Option<ListenerTlsConfig>,
    /// TLS on the admin HTTP listener; `None` serves plain HTTP.
    pub admin_tls: Option<ListenerTlsConfig>,
    /// TLS towards the control planes; needed for `https://` URLs, ignored for `http://`.
    pub control_plane_tls: Option<ClientTlsConfig>,
    /// Which nodes are reached over TLS, by the services they serve. A node has one
    /// connection, so one rule applies to it: the first, in this order, that names any
    /// service the node serves (or `"*"`). Nodes no rule matches are reached in h2c.
    pub upstream_tls: Vec<UpstreamTlsRule>,
    pub log: LogConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            id: String::new(),
            federation: "default".into(),
            region: String::new(),
            zone: String::new(),
            control_planes: vec!["http://127.0.0.1:7700".into()],
            table_cache: None,
            token_file: None,
            drain_grace_seconds: 10,
            max_message_bytes: 4 * 1024 * 1024,
            retry_buffer_call_bytes: 4 * 1024 * 1024,
            retry_buffer_total_bytes: 64 * 1024 * 1024,
            listen: ProxyListen::default(),
            upstream: UpstreamLimits::default(),
            listener_limits: ListenerLimits::default(),
            listen_tls: None,
            admin_tls: None,
            control_plane_tls: None,
            upstream_tls: Vec::new(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyListen {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl Default for ProxyListen {
    fn default() -> Self {
        ProxyListen {
            grpc: SocketAddr::from(([127, 0, 0, 1], 7800)),
            admin: SocketAddr::from(([127, 0, 0, 1], 7801)),
        }
    }
}

/// The `[upstream]` section: what the proxy asks of one node at once, how it spreads calls
/// over connections to it, and how long calls may go on. A service's `endpoint_limits`
/// (max requests, idle timeout) and `timeout.default_timeout_ms` override the matching
/// setting for that service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamLimits {
    /// Calls in flight at once to one node (Envoy's circuit-breaker `max_requests`): a
    /// full node is skipped by the balancers; with every usable node full a call fails
    /// fast with UNAVAILABLE.
    pub max_requests_per_endpoint: u32,
    /// Calls carried at once by one HTTP/2 connection to a node; past it the proxy opens
    /// another connection to the node (up to `max_connections_per_endpoint`).
    pub max_streams_per_connection: u32,
    /// Connections to one node, spread over the worker threads (at least one each).
    pub max_connections_per_endpoint: u32,
    /// The HTTP/2 flow-control window of each call's response from a node, bytes: what
    /// the proxy buffers for a client that does not read. The connection's window is
    /// this times `max_streams_per_connection`, so calls whose clients stop reading can
    /// never use up the connection's window and stall the other calls on it.
    pub stream_window_bytes: u32,
    /// A forwarded call with no frame in either direction for this long ends with
    /// UNAVAILABLE; 0: never.
    pub stream_idle_timeout_ms: u32,
    /// The deadline of calls that carry no `grpc-timeout` (and whose service sets no
    /// `timeout.default_timeout_ms`); 0: none.
    pub default_deadline_ms: u32,
}

impl Default for UpstreamLimits {
    fn default() -> Self {
        UpstreamLimits {
            max_requests_per_endpoint: 1024,
            max_streams_per_connection: 100,
            max_connections_per_endpoint: 8,
            stream_window_bytes: 1024 * 1024,
            stream_idle_timeout_ms: 300_000,
            default_deadline_ms: 0,
        }
    }
}

/// The largest HTTP/2 flow-control window (RFC 9113, 6.9.1).
const MAX_H2_WINDOW: u64 = (1 << 31) - 1;

impl UpstreamLimits {
    /// The stream idle timeout; `None`: never.
    pub fn stream_idle_timeout(&self) -> Option<std::time::Duration> {
        millis_if_set(self.stream_idle_timeout_ms)
    }

    /// The deadline of calls without `grpc-timeout`; `None`: none.
    pub fn default_deadline(&self) -> Option<std::time::Duration> {
        millis_if_set(self.default_deadline_ms)
    }

    /// The HTTP/2 window of a whole connection to a node: room for every call it may
    /// carry at its full stream window.
    pub fn connection_window_bytes(&self) -> u32 {
        let window =
            u64::from(self.stream_window_bytes) * u64::from(self.max_streams_per_connection);
        window.min(MAX_H2_WINDOW) as u32
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let within = |field: &str, value: u32, range: std::ops::RangeInclusive<u32>| {
            if range.contains(&value) {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    format!("upstream.{field}"),
                    value,
                    format!("must be between {} and {}", range.start(), range.end()),
                ))
            }
        };
        within(
            "max_requests_per_endpoint",
            self.max_requests_per_endpoint,
            1..=1_000_000,
        )?;
        within(
            "max_streams_per_connection",
            self.max_streams_per_connection,
            1..=10_000,
        )?;
        within(
            "max_connections_per_endpoint",
            self.max_connections_per_endpoint,
            1..=1_024,
        )?;
        within(
            "stream_window_bytes",
            self.stream_window_bytes,
            65_535..=MAX_H2_WINDOW as u32,
        )?;
        if u64::from(self.stream_window_bytes) * u64::from(self.max_streams_per_connection)
            > MAX_H2_WINDOW
        {
            return Err(ConfigError::invalid(
                "upstream.stream_window_bytes",
                self.stream_window_bytes,
                format!(
                    "times max_streams_per_connection ({}) must fit an HTTP/2 connection window (2147483647 bytes)",
                    self.max_streams_per_connection
                ),
            ));
        }
        if self.stream_idle_timeout_ms != 0 {
            within(
                "stream_idle_timeout_ms",
                self.stream_idle_timeout_ms,
                100..=86_400_000,
            )?;
        }
        within(
            "default_deadline_ms",
            self.default_deadline_ms,
            0..=86_400_000,
        )
    }
}

fn millis_if_set(ms: u32) -> Option<std::time::Duration> {
    (ms > 0).then(|| std::time::Duration::from_millis(u64::from(ms)))
}

/// One `[[upstream_tls]]` rule: the nodes serving any of `services` are reached over TLS,
/// verified against `ca`, presenting `cert`/`key` if given, expecting `server_name` if
/// given (else the host of the node's address).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsRule {
    /// gRPC service names (`pkg.Service`); [`UpstreamTlsRule::EVERY_SERVICE`] matches all.
    pub services: Vec<String>,
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
}

impl UpstreamTlsRule {
    /// The service name that matches every service.
    pub const EVERY_SERVICE: &str = "*";

    /// Every node, verified against `ca` (what `--upstream-ca` means).
    pub fn every_service(ca: PathBuf) -> Self {
        UpstreamTlsRule {
            services: vec![Self::EVERY_SERVICE.to_owned()],
            ca,
            cert: None,
            key: None,
            server_name: None,
        }
    }

    /// Whether the rule applies to a node serving `service`.
    pub fn matches(&self, service: &str) -> bool {
        self.services
            .iter()
            .any(|s| s == Self::EVERY_SERVICE || s == service)
    }

    /// The client side of the rule.
    pub fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: self.server_name.clone(),
        }
    }
}

/// Most bytes all calls may keep for retries (16 GiB).
const MAX_RETRY_BUFFER_BYTES: u64 = 16 * 1024 * 1024 * 1024;

impl Validate for ProxyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("id", &self.id),
            ("federation", &self.federation),
            ("region", &self.region),
        ] {
            if let Some(problem) = name_problem(value) {
                return Err(ConfigError::invalid(field, value, problem));
            }
        }
        if let Some(problem) = name_problem(&self.zone).filter(|_| !self.zone.is_empty()) {
            return Err(ConfigError::invalid("zone", &self.zone, problem));
        }
        if self.control_planes.is_empty() {
            return Err(ConfigError::invalid(
                "control_planes",
                &self.control_planes,
                "at least one control-plane address is needed",
            ));
        }
        for (i, url) in self.control_planes.iter().enumerate() {
            if !valid_endpoint_url(url) {
                return Err(ConfigError::invalid(
                    format!("control_planes[{i}]"),
                    url,
                    "expected http://host:port or https://host:port",
                ));
            }
        }
        self.validate_tls()?;
        if self.listen.grpc == self.listen.admin {
            return Err(ConfigError::invalid(
                "listen.admin",
                self.listen.admin,
                "must differ from listen.grpc",
            ));
        }
        self.listener_limits.validate("listener_limits")?;
        if !(1..=3_600).contains(&self.drain_grace_seconds) {
            return Err(ConfigError::invalid(
                "drain_grace_seconds",
                self.drain_grace_seconds,
                "must be between 1 and 3600",
            ));
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(ConfigError::invalid(
                "max_message_bytes",
                self.max_message_bytes,
                "must be between 1024 and 268435456",
            ));
        }
        if self.retry_buffer_total_bytes > MAX_RETRY_BUFFER_BYTES {
            return Err(ConfigError::invalid(
                "retry_buffer_total_bytes",
                self.retry_buffer_total_bytes,
                "must be at most 17179869184 (16 GiB)",
            ));
        }
        if self.retry_buffer_call_bytes > self.retry_buffer_total_bytes {
            return Err(ConfigError::invalid(
                "retry_buffer_call_bytes",
                self.retry_buffer_call_bytes,
                format!(
                    "must not be above retry_buffer_total_bytes ({})",
                    self.retry_buffer_total_bytes
                ),
            ));
        }
        self.upstream.validate()?;
        self.log.validate()
    }
}

impl ProxyConfig {
    /// The settings a running proxy keeps until restarted (`reloads: no` in
    /// docs/configuration.md). The rest reloads on SIGHUP or a file change: `log.level`
    /// and `token_file` (its path and the token in it; used from the next connection to a
    /// control plane).
    pub fn fixed_settings(&self) -> FixedSettings {
        vec![
            ("id", self.id.clone()),
            ("federation", self.federation.clone()),
            ("region", self.region.clone()),
            ("zone", self.zone.clone()),
            ("control_planes", format!("{:?}", self.control_planes)),
            ("table_cache", format!("{:?}", self.table_cache)),
            ("drain_grace_seconds", self.drain_grace_seconds.to_string()),
            ("max_message_bytes", self.max_message_bytes.to_string()),
            (
                "retry_buffer_call_bytes",
                self.retry_buffer_call_bytes.to_string(),
            ),
            (
                "retry_buffer_total_bytes",
                self.retry_buffer_total_bytes.to_string(),
            ),
            ("listen.grpc", self.listen.grpc.to_string()),
            ("listen.admin", self.listen.admin.to_string()),
            ("listen_tls", format!("{:?}", self.listen_tls)),
            ("admin_tls", format!("{:?}", self.admin_tls)),
            ("control_plane_tls", format!("{:?}", self.control_plane_tls)),
            ("upstream_tls", format!("{:?}", self.upstream_tls)),
            ("upstream", format!("{:?}", self.upstream)),
            ("listener_limits", format!("{:?}", self.listener_limits)),
            ("log.format", format!("{:?}", self.log.format)),
        ]
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        match &self.control_plane_tls {
            Some(tls) => tls.validate("control_plane_tls")?,
            None => {
                if let Some((i, url)) = self
                    .control_planes
                    .iter()
                    .enumerate()
                    .find(|(_, url)| url.starts_with("https://"))
                {
                    return Err(ConfigError::invalid(
                        "control_plane_tls.ca",
                        None::<PathBuf>,
                        format!(
                            "control_planes[{i}] = {url:?} is https://; the CA that signed the control plane's certificate is needed (--control-plane-ca)"
                        ),
                    ));
                }
            }
        }
        for (section, tls) in [
            ("listen_tls", &self.listen_tls),
            ("admin_tls", &self.admin_tls),
        ] {
            let Some(tls) = tls else { continue };
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{section}.{key}"),
                        path,
                        "a file is needed",
                    ));
                }
            }
        }
        for (i, rule) in self.upstream_tls.iter().enumerate() {
            let section = format!("upstream_tls[{i}]");
            if rule.services.is_empty() || rule.services.iter().any(|s| s.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("{section}.services"),
                    &rule.services,
                    "name at least one service (pkg.Service), or \"*\" for every service",
                ));
            }
            rule.client_tls().validate(&section)?;
        }
        Ok(())
    }
}
