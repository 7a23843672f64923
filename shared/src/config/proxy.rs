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
//! admin = "127.0.0.1:7801"   # /metrics, /ready, /live, /debug/table
//! [listener_limits]          # connections, timeouts, streams (see config/listener_limits.rs)
//! max_connections = 10000
//! idle_timeout_seconds = 300
//! [listen_tls]               # optional: clients connect with TLS
//! cert = "/etc/meridian/tls/proxy-server.pem"
//! key = "/etc/meridian/tls/proxy-server.key"
//! client_ca = "/etc/meridian/tls/clients-ca.pem"   # optional: require client certificates
//! [control_plane_tls]        # needed for https:// control planes
//! ca = "/etc/meridian/tls/ca.pem"
//! cert = "/etc/meridian/tls/proxy.pem"   # optional, with key: mTLS
//! key = "/etc/meridian/tls/proxy.key"
//! [[upstream_tls]]           # nodes of these services are reached over TLS
//! services = ["demo.v1.Echo"]            # or ["*"]: every service
//! ca = "/etc/meridian/tls/nodes-ca.pem"
//! [log]
//! format = "human"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::control_plane::valid_endpoint_url;
use super::{ClientTlsConfig, ConfigError, ListenerLimits, ListenerTlsConfig, Validate};
use crate::names::name_problem;
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
    /// Limits of the client gRPC listener.
    pub listener_limits: ListenerLimits,
    /// TLS on the client gRPC listener; `None` serves h2c (loopback, development).
    pub listen_tls: Option<ListenerTlsConfig>,
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
            listener_limits: ListenerLimits::default(),
            listen_tls: None,
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
        self.log.validate()
    }
}

impl ProxyConfig {
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
        if let Some(tls) = &self.listen_tls {
            for (field, path) in [("listen_tls.cert", &tls.cert), ("listen_tls.key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(field, path, "a file is needed"));
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
