//! The control plane's configuration (`meridian-control --config FILE`).
//!
//! ```toml
//! replica_id = "cp-1"
//! [listen]
//! grpc = "127.0.0.1:7700"   # RoutingDiscovery, NodeRegistry, Admin, health, reflection
//! http = "127.0.0.1:7701"   # /metrics, /ready, /live, the dashboard
//! [listener_limits]         # of the gRPC listener (see config/listener_limits.rs)
//! max_connections = 10000
//! [tls]                     # optional; required off loopback unless insecure = true
//! cert = "/etc/meridian/tls/control.pem"
//! key = "/etc/meridian/tls/control.key"
//! client_ca = "/etc/meridian/tls/ca.pem"   # optional: require client certificates (mTLS)
//! [http_tls]                # optional: the HTTP port serves HTTPS (the dashboard's tokens)
//! cert = "/etc/meridian/tls/control.pem"
//! key = "/etc/meridian/tls/control.key"
//! [store]
//! backend = "etcd"          # or "embedded"
//! etcd_endpoints = ["http://127.0.0.1:2379"]
//! prefix = "/meridian/"
//! etcd_user = "meridian"    # etcd authentication; the password comes from a file or
//! etcd_password_file = "/etc/meridian/etcd-password"   # MERIDIAN_ETCD_PASSWORD, never here
//! [store.etcd_tls]          # needed for https:// endpoints
//! ca = "/etc/meridian/etcd/ca.pem"
//! cert = "/etc/meridian/etcd/client.pem"   # optional: etcd's --client-cert-auth
//! key = "/etc/meridian/etcd/client.key"
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
//! [scaling]                 # what scaling actuators may run; empty: none of that kind
//! exec_allow = ["/usr/local/bin/meridian-kubectl-scale"]   # exact absolute paths
//! webhook_allow = ["https://autoscaler.internal:8443/hooks/"]  # URL prefixes
//! webhook_ca = "/etc/meridian/tls/webhooks-ca.pem"   # needed for https:// webhooks
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{AuthConfig, ConfigError, ListenerLimits, ListenerTlsConfig, Validate};
use crate::names::name_problem;
use crate::reload::FixedSettings;
use crate::telemetry::LogConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// This replica's name in leader election, events and `meridianctl proxies`.
    pub replica_id: String,
    pub listen: ControlPlaneListen,
    /// Limits of the gRPC listener.
    pub listener_limits: ListenerLimits,
    /// TLS on the gRPC listener; `None` serves plaintext (loopback, or with `insecure`).
    pub tls: Option<ListenerTlsConfig>,
    /// TLS on the HTTP listener (metrics, probes, dashboard); `None` serves plain HTTP.
    pub http_tls: Option<ListenerTlsConfig>,
    /// Allow plaintext gRPC on a non-loopback address (tokens and tables in the clear).
    pub insecure: bool,
    pub store: StoreConfig,
    pub election: ElectionConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub scaling: ScalingConfig,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        ControlPlaneConfig {
            replica_id: format!("cp-{}", std::process::id()),
            listen: ControlPlaneListen::default(),
            listener_limits: ListenerLimits::default(),
            tls: None,
            http_tls: None,
            insecure: false,
            store: StoreConfig::default(),
            election: ElectionConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            scaling: ScalingConfig::default(),
        }
    }
}

/// The scaling actuators service policies may name. An operator token can set a
/// policy, so without these lists it could make the control plane run any program or
/// reach any address; empty lists allow no actuator of their kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingConfig {
    /// Programs an exec actuator may run: exact absolute paths.
    pub exec_allow: Vec<PathBuf>,
    /// URL prefixes a webhook actuator's URL must start with (at a `/` or `?` boundary,
    /// or the prefix ends with `/`).
    pub webhook_allow: Vec<String>,
    /// The CA (PEM) the certificates of `https://` webhook receivers must chain to; the
    /// only one trusted for them. `https://` prefixes need it.
    pub webhook_ca: Option<PathBuf>,
}

impl Validate for ScalingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, path) in self.exec_allow.iter().enumerate() {
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    format!("scaling.exec_allow[{i}]"),
                    path,
                    "must be an absolute path (--scaling-exec-allow)",
                ));
            }
        }
        for (i, prefix) in self.webhook_allow.iter().enumerate() {
            let field = format!("scaling.webhook_allow[{i}]");
            if prefix.starts_with("https://") && self.webhook_ca.is_none() {
                return Err(ConfigError::invalid(
                    field,
                    prefix,
                    "https:// webhooks need the CA of the receivers' certificates: give scaling.webhook_ca (--scaling-webhook-ca)",
                ));
            }
            let host = prefix
                .strip_prefix("http://")
                .or_else(|| prefix.strip_prefix("https://"))
                .unwrap_or_default();
            let host = host.split(['/', '?']).next().unwrap_or_default();
            if host.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::invalid(
                    field,
                    prefix,
                    "expected an http(s)://host[:port][/path] prefix (--scaling-webhook-allow)",
                ));
            }
        }
        Ok(())
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
    /// TLS to etcd; needed for `https://` endpoints, refused with `http://` ones.
    pub etcd_tls: Option<EtcdTlsConfig>,
    /// The etcd user to authenticate as (etcd's own authentication); its password comes
    /// from `etcd_password_file` or [`ETCD_PASSWORD_ENV`], never from the file or a flag
    /// value, which `ps` or a config dump would show.
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
}

/// The environment variable the etcd password is read from when no
/// `store.etcd_password_file` is configured.
pub const ETCD_PASSWORD_ENV: &str = "MERIDIAN_ETCD_PASSWORD";

/// TLS to etcd: the CA its server certificates chain to and, when etcd runs with
/// `--client-cert-auth`, a client certificate. Re-read when the files change: the control
/// plane connects to etcd anew with them and, once etcd answers, uses that connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdTlsConfig {
    /// CA bundle (PEM) that signed etcd's server certificates; required.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM); needs `key`.
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// The name etcd's certificate must carry, when it differs from the endpoints' host.
    pub server_name: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Etcd,
            etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/meridian/".into(),
            embedded_file: None,
            dial_timeout_ms: 2_000,
            etcd_tls: None,
            etcd_user: None,
            etcd_password_file: None,
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

impl ControlPlaneConfig {
    /// The settings a running control plane keeps until restarted (`reloads: no` in
    /// docs/configuration.md). The rest reloads on SIGHUP or a file change: `log.level`
    /// and the whole `[auth]` section, tokens file included.
    pub fn fixed_settings(&self) -> FixedSettings {
        let store = &self.store;
        vec![
            ("replica_id", self.replica_id.clone()),
            ("listen.grpc", self.listen.grpc.to_string()),
            ("listen.http", self.listen.http.to_string()),
            ("tls", format!("{:?}", self.tls)),
            ("http_tls", format!("{:?}", self.http_tls)),
            ("insecure", self.insecure.to_string()),
            ("store.backend", format!("{:?}", store.backend)),
            (
                "store.etcd_endpoints",
                format!("{:?}", store.etcd_endpoints),
            ),
            ("store.prefix", store.prefix.clone()),
            ("store.embedded_file", format!("{:?}", store.embedded_file)),
            ("store.dial_timeout_ms", store.dial_timeout_ms.to_string()),
            ("store.etcd_tls", format!("{:?}", store.etcd_tls)),
            ("store.etcd_user", format!("{:?}", store.etcd_user)),
            (
                "store.etcd_password_file",
                format!("{:?}", store.etcd_password_file),
            ),
            (
                "election.lease_ttl_seconds",
                self.election.lease_ttl_seconds.to_string(),
            ),
            ("log.format", format!("{:?}", self.log.format)),
            ("scaling", format!("{:?}", self.scaling)),
            ("listener_limits", format!("{:?}", self.listener_limits)),
        ]
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
        if self.tls.is_none() && !self.insecure && !self.listen.grpc.ip().is_loopback() {
            return Err(ConfigError::invalid(
                "listen.grpc",
                self.listen.grpc,
                "is not a loopback address, and without TLS tokens, tables and node addresses would cross the network in the clear: \
                 give tls.cert and tls.key (--tls-cert, --tls-key), or set insecure = true (--insecure) to accept that",
            ));
        }
        if let Some(tls) = &self.http_tls {
            for (field, path) in [("http_tls.cert", &tls.cert), ("http_tls.key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::invalid(field, path, "a file is needed"));
                }
            }
        }
        if self.listen.grpc == self.listen.http {
            return Err(ConfigError::invalid(
                "listen.http",
                self.listen.http,
                "must differ from listen.grpc",
            ));
        }
        self.listener_limits.validate("listener_limits")?;
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
            let password_in_env = std::env::var_os(ETCD_PASSWORD_ENV).is_some();
            validate_etcd_access(store, password_in_env)?;
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
        self.scaling.validate()?;
        self.log.validate()
    }
}

/// TLS matches the endpoints' scheme, a client certificate comes with its key, and a user
/// with a password source (`password_in_env`: whether [`ETCD_PASSWORD_ENV`] is set).
pub(super) fn validate_etcd_access(
    store: &StoreConfig,
    password_in_env: bool,
) -> Result<(), ConfigError> {
    let https = store
        .etcd_endpoints
        .iter()
        .find(|endpoint| endpoint.starts_with("https://"));
    let plain = store
        .etcd_endpoints
        .iter()
        .position(|endpoint| endpoint.starts_with("http://"));
    match &store.etcd_tls {
        None => {
            if let Some(endpoint) = https {
                return Err(ConfigError::invalid(
                    "store.etcd_tls.ca",
                    endpoint,
                    "https:// etcd endpoints need the CA that signed etcd's certificate \
                     (store.etcd_tls.ca, --etcd-ca)",
                ));
            }
        }
        Some(tls) => {
            if let Some(i) = plain {
                return Err(ConfigError::invalid(
                    "store.etcd_tls",
                    &store.etcd_endpoints[i],
                    format!(
                        "TLS to etcd is configured but store.etcd_endpoints[{i}] is http://; \
                         use https:// endpoints, or remove store.etcd_tls (--etcd-ca, \
                         --etcd-cert, --etcd-key)"
                    ),
                ));
            }
            if tls.ca.is_none() {
                return Err(ConfigError::invalid(
                    "store.etcd_tls.ca",
                    &tls.ca,
                    "TLS to etcd needs the CA that signed etcd's certificate (--etcd-ca)",
                ));
            }
            match (&tls.cert, &tls.key) {
                (Some(cert), None) => {
                    return Err(ConfigError::invalid(
                        "store.etcd_tls.key",
                        cert,
                        "the client certificate store.etcd_tls.cert needs its private key \
                         (--etcd-key)",
                    ));
                }
                (None, Some(key)) => {
                    return Err(ConfigError::invalid(
                        "store.etcd_tls.cert",
                        key,
                        "the client key store.etcd_tls.key needs its certificate (--etcd-cert)",
                    ));
                }
                _ => {}
            }
            if tls.server_name.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    "store.etcd_tls.server_name",
                    "",
                    "must be a DNS name or an IP address; omit it to use the endpoints' host",
                ));
            }
        }
    }
    match &store.etcd_user {
        Some(user) if user.is_empty() => Err(ConfigError::invalid(
            "store.etcd_user",
            user,
            "must not be empty; omit it when etcd does not require authentication",
        )),
        Some(user) if store.etcd_password_file.is_none() && !password_in_env => {
            Err(ConfigError::invalid(
                "store.etcd_password_file",
                user,
                format!(
                    "etcd user {user:?} needs a password: give store.etcd_password_file \
                     (--etcd-password-file) or set {ETCD_PASSWORD_ENV}"
                ),
            ))
        }
        None if store.etcd_password_file.is_some() => Err(ConfigError::invalid(
            "store.etcd_user",
            &store.etcd_user,
            "an etcd password file is configured but no user to go with it (--etcd-user)",
        )),
        _ => Ok(()),
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
