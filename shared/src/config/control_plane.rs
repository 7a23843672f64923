//! The control plane's configuration (`meridian-control --config FILE`).
//!
//! ```toml
//! replica_id = "cp-1"
//! [listen]
//! grpc = "127.0.0.1:7700"   # RoutingDiscovery, NodeRegistry, Admin, health, reflection
//! http = "127.0.0.1:7701"   # /metrics, /ready, /live
//! [store]
//! backend = "etcd"          # or "embedded"
//! etcd_endpoints = ["http://127.0.0.1:2379"]
//! prefix = "/meridian/"
//! [election]
//! lease_ttl_seconds = 10
//! [auth]                    # see config/auth.rs for roles and scopes
//! tokens_file = "/etc/meridian/tokens.toml"
//! [[auth.tokens]]
//! name = "alice"
//! token = "..."             # at least 16 characters
//! role = "operator"         # viewer, operator, node or proxy
//! [log]
//! format = "json"
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{AuthConfig, ConfigError, Validate};
use crate::names::name_problem;
use crate::telemetry::LogConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// This replica's name in leader election, events and `meridianctl proxies`.
    pub replica_id: String,
    pub listen: ControlPlaneListen,
    pub store: StoreConfig,
    pub election: ElectionConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            replica_id: format!("cp-{}", std::process::id()),
            listen: ControlPlaneListen::default(),
            store: StoreConfig::default(),
            election: ElectionConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneListen {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Default for ControlPlaneListen {
    fn default() -> Self {
        ControlPlaneListen {
            grpc: SocketAddr::from(([127, 0, 0, 1], 7700)),
            http: SocketAddr::from(([127, 0, 0, 1], 7701)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// A real etcd cluster: production, and every replica shares it.
    #[default]
    Etcd,
    /// In-process, optionally persisted to `embedded_file`: one replica, no etcd needed.
    Embedded,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub etcd_endpoints: Vec<String>,
    /// Key prefix; starts and ends with '/'.
    pub prefix: String,
    /// Where the embedded store persists; none keeps it in memory only.
    pub embedded_file: Option<PathBuf>,
    pub dial_timeout_ms: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Etcd,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/meridian/".into(),
            embedded_file: None,
            dial_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ElectionConfig {
    /// TTL of the leader's lease: how long a dead leader keeps others from taking over.
    pub lease_ttl_seconds: u32,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease_ttl_seconds: 10,
        }
    }
}

impl Validate for ControlPlaneConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(problem) = name_problem(&self.replica_id) {
            return Err(ConfigError::invalid(
                "replica_id",
                &self.replica_id,
                problem,
            ));
        }
        if self.listen.grpc == self.listen.http {
            return Err(ConfigError::invalid(
                "listen.http",
                self.listen.http,
                "must differ from listen.grpc",
            ));
        }
        let store = &self.store;
        if store.backend == StoreBackend::Etcd {
            if store.etcd_endpoints.is_empty() {
                return Err(ConfigError::invalid(
                    "store.etcd_endpoints",
                    &store.etcd_endpoints,
                    "at least one etcd endpoint is needed with backend = \"etcd\"",
                ));
            }
            for (i, endpoint) in store.etcd_endpoints.iter().enumerate() {
                if !valid_endpoint_url(endpoint) {
                    return Err(ConfigError::invalid(
                        format!("store.etcd_endpoints[{i}]"),
                        endpoint,
                        "expected http://host:port or https://host:port",
                    ));
                }
            }
        }
        if !store.prefix.starts_with('/') || !store.prefix.ends_with('/') || store.prefix.len() < 2
        {
            return Err(ConfigError::invalid(
                "store.prefix",
                &store.prefix,
                "must start and end with '/', e.g. \"/meridian/\"",
            ));
        }
        if !(100..=60_000).contains(&store.dial_timeout_ms) {
            return Err(ConfigError::invalid(
                "store.dial_timeout_ms",
                store.dial_timeout_ms,
                "must be between 100 and 60000",
            ));
        }
        if !(2..=300).contains(&self.election.lease_ttl_seconds) {
            return Err(ConfigError::invalid(
                "election.lease_ttl_seconds",
                self.election.lease_ttl_seconds,
                "must be between 2 and 300",
            ));
        }
        self.auth.validate()?;
        self.log.validate()
    }
}

/// `http://host:port` or `https://host:port`, with a non-empty host and a port.
pub(crate) fn valid_endpoint_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let authority = rest.trim_end_matches('/');
    match authority.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}
