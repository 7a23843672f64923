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
//! [listen]
//! grpc = "127.0.0.1:7800"    # client traffic (h2c)
//! admin = "127.0.0.1:7801"   # /metrics, /ready, /live, /debug/table
//! [log]
//! format = "human"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::control_plane::valid_endpoint_url;
use super::{ConfigError, Validate};
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
    /// Largest gRPC message accepted, bytes.
    pub max_message_bytes: u32,
    pub listen: ProxyListen,
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
            listen: ProxyListen::default(),
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
        if self.listen.grpc == self.listen.admin {
            return Err(ConfigError::invalid(
                "listen.admin",
                self.listen.admin,
                "must differ from listen.grpc",
            ));
        }
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
        self.log.validate()
    }
}
