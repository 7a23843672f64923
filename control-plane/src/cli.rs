//! `meridian-control`'s command line: every setting of the config file can be overridden
//! by a flag or its `MERIDIAN_*` variable (a flag wins over its variable, both win over
//! the file).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use meridian_shared::config::{
    ConfigError, ControlPlaneConfig, ListenerLimitsArgs, ListenerTlsConfig, Role, StoreBackend,
    TokenConfig, Validate, load_file, override_with,
};
use meridian_shared::telemetry::LogFormat;

/// Meridian control plane: keeps the federation's topology in etcd and streams routing
/// tables to meridian-proxy instances.
///
/// Settings come from --config (TOML), then MERIDIAN_* environment variables, then flags.
/// Try it without etcd: `meridian-control --dev`.
#[derive(Debug, Parser)]
#[command(name = "meridian-control", version, about, long_about)]
pub struct ControlArgs {
    /// TOML configuration file (see deploy/control-plane.toml for every key).
    #[arg(long, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Development mode: use the embedded in-process store instead of etcd, so one
    /// machine needs nothing else to try Meridian.
    #[arg(long)]
    pub dev: bool,

    /// Operator token to accept in dev mode (default: a random one, printed at start).
    /// Prefer the environment variable: a flag's value shows in `ps`.
    #[arg(
        long,
        env = "MERIDIAN_DEV_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "dev"
    )]
    pub dev_token: Option<String>,

    /// Node-role token to accept in dev mode, for self-registering nodes (default: a
    /// random one, printed at start).
    #[arg(
        long,
        env = "MERIDIAN_DEV_NODE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "dev"
    )]
    pub dev_node_token: Option<String>,

    /// Proxy-role token to accept in dev mode (default: a random one, printed at start).
    #[arg(
        long,
        env = "MERIDIAN_DEV_PROXY_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        requires = "dev"
    )]
    pub dev_proxy_token: Option<String>,

    /// Address of the gRPC server (routing streams, node registry, Admin API, health,
    /// reflection). Default 127.0.0.1:7700.
    #[arg(long, env = "MERIDIAN_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<SocketAddr>,

    /// TLS certificate chain (PEM) of the gRPC listener; with --tls-key, serves TLS.
    /// Re-read when the file changes.
    #[arg(
        long,
        env = "MERIDIAN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "MERIDIAN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (mTLS). Proxies and nodes may then
    /// authenticate with their certificate alone ([[auth.certificates]]).
    #[arg(
        long,
        env = "MERIDIAN_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// TLS certificate chain (PEM) of the HTTP listener (metrics, probes, the dashboard),
    /// which then serves HTTPS. Replaces [http_tls]. Re-read when the file changes.
    #[arg(
        long,
        env = "MERIDIAN_HTTP_TLS_CERT",
        value_name = "FILE",
        requires = "http_tls_key"
    )]
    pub http_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --http-tls-cert.
    #[arg(
        long,
        env = "MERIDIAN_HTTP_TLS_KEY",
        value_name = "FILE",
        requires = "http_tls_cert"
    )]
    pub http_tls_key: Option<PathBuf>,

    /// Serve plaintext gRPC on a non-loopback address (tokens and tables in the clear).
    #[arg(long, env = "MERIDIAN_INSECURE")]
    pub insecure: bool,

    /// Address of the HTTP server (/metrics, /live, /ready). Default 127.0.0.1:7701.
    #[arg(long, env = "MERIDIAN_HTTP_ADDR", value_name = "HOST:PORT")]
    pub http_addr: Option<SocketAddr>,

    /// Name of this replica in leader election, events and `meridianctl proxies`.
    /// Default cp-<pid>.
    #[arg(long, env = "MERIDIAN_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,

    /// Store backend: etcd (production) or embedded (single replica). --dev implies
    /// embedded. Default etcd.
    #[arg(long, env = "MERIDIAN_STORE", value_name = "BACKEND", value_parser = parse_backend)]
    pub store: Option<StoreBackend>,

    /// etcd client URLs, comma-separated. Default http://127.0.0.1:2379.
    #[arg(
        long,
        env = "MERIDIAN_ETCD_ENDPOINTS",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub etcd_endpoints: Option<Vec<String>>,

    /// CA (PEM) that signed etcd's server certificates; needed for https:// endpoints.
    #[arg(long, env = "MERIDIAN_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key. Read at
    /// start: a rotated certificate takes a restart.
    #[arg(long, env = "MERIDIAN_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,

    /// Private key (PEM) of --etcd-cert.
    #[arg(long, env = "MERIDIAN_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,

    /// Name etcd's certificate must carry, when it differs from the endpoints' host.
    #[arg(long, env = "MERIDIAN_ETCD_SERVER_NAME", value_name = "NAME")]
    pub etcd_server_name: Option<String>,

    /// etcd user to authenticate as (etcd's own authentication); its password is read
    /// from a file (--etcd-password-file) or MERIDIAN_ETCD_PASSWORD, never from a flag.
    #[arg(long, env = "MERIDIAN_ETCD_USER", value_name = "USER")]
    pub etcd_user: Option<String>,

    /// File holding the password of --etcd-user (a trailing newline is ignored).
    #[arg(long, env = "MERIDIAN_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,

    /// Prefix of every key Meridian writes, so several federations or test runs can
    /// share one etcd. Default /meridian/.
    #[arg(long, env = "MERIDIAN_STORE_PREFIX", value_name = "PREFIX")]
    pub store_prefix: Option<String>,

    /// File the embedded store persists to; without it, dev-mode state is lost on exit.
    #[arg(long, env = "MERIDIAN_EMBEDDED_FILE", value_name = "FILE")]
    pub embedded_file: Option<PathBuf>,

    /// TTL of the leader lease in seconds: how long a crashed leader delays the next.
    /// Default 10.
    #[arg(long, env = "MERIDIAN_ELECTION_TTL", value_name = "SECONDS")]
    pub election_ttl: Option<u32>,

    /// TOML file of Admin API tokens ([[tokens]] name, token, role = viewer|operator).
    #[arg(long, env = "MERIDIAN_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,

    /// A program scaling policies' exec actuators may run: its exact absolute path.
    /// Repeat (or separate with commas) for more; replaces scaling.exec_allow of the
    /// file. None: no exec actuator may be set.
    #[arg(
        long = "scaling-exec-allow",
        env = "MERIDIAN_SCALING_EXEC_ALLOW",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub scaling_exec_allow: Vec<PathBuf>,

    /// A URL prefix scaling policies' webhook actuators may POST to, e.g.
    /// https://autoscaler.internal:8443/hooks/ (https:// needs --scaling-webhook-ca).
    /// Repeat for more; replaces scaling.webhook_allow of the file. None: no webhook
    /// actuator may be set.
    #[arg(
        long = "scaling-webhook-allow",
        env = "MERIDIAN_SCALING_WEBHOOK_ALLOW",
        value_name = "URL_PREFIX",
        value_delimiter = ','
    )]
    pub scaling_webhook_allow: Vec<String>,

    /// CA (PEM) the certificates of https:// webhook receivers must chain to; the only
    /// one trusted for them. Re-read when the file changes.
    #[arg(long, env = "MERIDIAN_SCALING_WEBHOOK_CA", value_name = "FILE")]
    pub scaling_webhook_ca: Option<PathBuf>,

    /// Limits of the gRPC listener ([listener_limits]).
    #[command(flatten)]
    pub listener_limits: ListenerLimitsArgs,

    /// Log format: human or json. Default human.
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info or info,meridian_control_plane=debug. RUST_LOG wins when
    /// set. Default info.
    #[arg(long, env = "MERIDIAN_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

fn parse_backend(name: &str) -> Result<StoreBackend, String> {
    match name {
        "etcd" => Ok(StoreBackend::Etcd),
        "embedded" => Ok(StoreBackend::Embedded),
        other => Err(format!(
            "unknown store backend {other:?}; expected etcd or embedded"
        )),
    }
}

impl ControlArgs {
    /// The configuration: the file (or defaults), the overrides, then validation.
    pub fn load_config(&self) -> Result<ControlPlaneConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => ControlPlaneConfig::default(),
        };
        self.apply_overrides(&mut config);
        config.validate()?;
        Ok(config)
    }

    fn apply_overrides(&self, config: &mut ControlPlaneConfig) {
        override_with(&mut config.listen.grpc, &self.grpc_addr);
        override_with(&mut config.listen.http, &self.http_addr);
        override_with(&mut config.replica_id, &self.replica_id);
        override_with(&mut config.store.backend, &self.store);
        override_with(&mut config.store.etcd_endpoints, &self.etcd_endpoints);
        override_with(&mut config.store.prefix, &self.store_prefix);
        override_with(&mut config.election.lease_ttl_seconds, &self.election_ttl);
        self.listener_limits.apply(&mut config.listener_limits);
        override_with(&mut config.log.format, &self.log_format);
        override_with(&mut config.log.level, &self.log_level);
        if self.embedded_file.is_some() {
            config.store.embedded_file = self.embedded_file.clone();
        }
        if self.tokens_file.is_some() {
            config.auth.tokens_file = self.tokens_file.clone();
        }
        if !self.scaling_exec_allow.is_empty() {
            config.scaling.exec_allow = self.scaling_exec_allow.clone();
        }
        if !self.scaling_webhook_allow.is_empty() {
            config.scaling.webhook_allow = self.scaling_webhook_allow.clone();
        }
        if self.scaling_webhook_ca.is_some() {
            config.scaling.webhook_ca = self.scaling_webhook_ca.clone();
        }
        self.apply_etcd_access(config);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(ListenerTlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            });
        }
        if let (Some(cert), Some(key)) = (&self.http_tls_cert, &self.http_tls_key) {
            config.http_tls = Some(ListenerTlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            });
        }
        if self.insecure {
            config.insecure = true;
        }
        if self.dev {
            config.store.backend = StoreBackend::Embedded;
        }
    }

    /// The etcd TLS and user flags, each replacing its key of the file.
    fn apply_etcd_access(&self, config: &mut ControlPlaneConfig) {
        let store = &mut config.store;
        let tls_flags = [&self.etcd_ca, &self.etcd_cert, &self.etcd_key];
        if tls_flags.iter().any(|flag| flag.is_some()) || self.etcd_server_name.is_some() {
            let tls = store.etcd_tls.get_or_insert_with(Default::default);
            for (target, flag) in [
                (&mut tls.ca, &self.etcd_ca),
                (&mut tls.cert, &self.etcd_cert),
                (&mut tls.key, &self.etcd_key),
            ] {
                if flag.is_some() {
                    *target = flag.clone();
                }
            }
            if self.etcd_server_name.is_some() {
                tls.server_name = self.etcd_server_name.clone();
            }
        }
        if self.etcd_user.is_some() {
            store.etcd_user = self.etcd_user.clone();
        }
        if self.etcd_password_file.is_some() {
            store.etcd_password_file = self.etcd_password_file.clone();
        }
    }

    /// In dev mode, adds the credentials a demo needs: an operator, a node and a proxy
    /// token, each the given one or a random one. Returns the random ones, which only
    /// the user can be told; empty outside dev mode.
    pub fn add_dev_credentials(&self, config: &mut ControlPlaneConfig) -> Vec<DevCredential> {
        if !self.dev {
            return Vec::new();
        }
        let mut generated = Vec::new();
        let roles: [_; DEV_ROLES] = [
            ("dev", Role::Operator, &self.dev_token),
            ("dev-node", Role::Node, &self.dev_node_token),
            ("dev-proxy", Role::Proxy, &self.dev_proxy_token),
        ];
        for (name, role, given) in roles {
            let token = given.clone().unwrap_or_else(|| {
                let bytes: [u8; 16] = rand::random();
                let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                generated.push(DevCredential {
                    role,
                    token: token.clone(),
                });
                token
            });
            config
                .auth
                .tokens
                .push(TokenConfig::new(name, &token, role));
        }
        generated
    }
}

impl ControlArgs {
    /// The tokens [`ControlArgs::add_dev_credentials`] added to `config` (none outside dev
    /// mode), to add again when the configuration is reloaded.
    pub fn dev_tokens(&self, config: &ControlPlaneConfig) -> Vec<TokenConfig> {
        if !self.dev {
            return Vec::new();
        }
        // add_dev_credentials appends one token per role, after the configured ones.
        let tokens = &config.auth.tokens;
        tokens[tokens.len().saturating_sub(DEV_ROLES)..].to_vec()
    }
}

/// Roles dev mode adds a token for: operator, node, proxy.
const DEV_ROLES: usize = 3;

/// A token dev mode made up, to be shown to the user once.
pub struct DevCredential {
    pub role: Role,
    pub token: String,
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn args(argv: &[&str]) -> ControlArgs {
        ControlArgs::try_parse_from(std::iter::once("meridian-control").chain(argv.iter().copied()))
            .unwrap()
    }

    #[test]
    fn flags_override_the_file() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[listen]\ngrpc = \"127.0.0.1:9100\"\nhttp = \"127.0.0.1:9101\""
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let config = args(&[
            "--config",
            path,
            "--grpc-addr",
            "127.0.0.1:9200",
            "--max-connections",
            "7",
        ])
        .load_config()
        .unwrap();
        assert_eq!(config.listener_limits.max_connections, 7);
        assert_eq!(
            config.listen.grpc.port(),
            9200,
            "the flag must win over the file"
        );
        assert_eq!(
            config.listen.http.port(),
            9101,
            "the file must win over the default"
        );
    }

    #[test]
    fn dev_mode_uses_the_embedded_store_and_operator_node_and_proxy_tokens() {
        let dev = args(&["--dev"]);
        let mut config = dev.load_config().unwrap();
        assert_eq!(config.store.backend, StoreBackend::Embedded);
        let generated = dev.add_dev_credentials(&mut config);
        let roles: Vec<Role> = generated.iter().map(|c| c.role).collect();
        assert_eq!(roles, [Role::Operator, Role::Node, Role::Proxy]);
        assert!(generated.iter().all(|c| c.token.len() == 32));
        assert_eq!(config.auth.tokens.len(), 3);

        let fixed = args(&["--dev", "--dev-token", "fixed-token-0123456789"]);
        let mut config = fixed.load_config().unwrap();
        let generated = fixed.add_dev_credentials(&mut config);
        assert_eq!(generated.len(), 2, "a given token is not shown again");
        assert_eq!(config.auth.tokens[0].token, "fixed-token-0123456789");
        assert_eq!(fixed.dev_tokens(&config).len(), 3);
        assert!(args(&[]).add_dev_credentials(&mut config).is_empty());
    }

    #[test]
    fn a_bad_override_is_refused_naming_the_field() {
        let err = args(&["--store-prefix", "nope"]).load_config().unwrap_err();
        assert_eq!(err.field(), Some("store.prefix"), "{err}");
        let err = args(&["--etcd-endpoints", "http://a:1,b:2"])
            .load_config()
            .unwrap_err();
        assert_eq!(err.field(), Some("store.etcd_endpoints[1]"), "{err}");
    }

    #[test]
    fn etcd_tls_and_user_flags_fill_the_store_section() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[store]\netcd_endpoints = [\"https://127.0.0.1:2379\"]\n[store.etcd_tls]\nca = \"/from-file/ca.pem\""
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let config = args(&[
            "--config",
            path,
            "--etcd-cert",
            "/c.pem",
            "--etcd-key",
            "/c.key",
            "--etcd-user",
            "meridian",
            "--etcd-password-file",
            "/p",
        ])
        .load_config()
        .unwrap();
        let tls = config.store.etcd_tls.unwrap();
        assert_eq!(tls.ca.unwrap().to_str(), Some("/from-file/ca.pem"));
        assert_eq!(tls.cert.unwrap().to_str(), Some("/c.pem"));
        assert_eq!(tls.key.unwrap().to_str(), Some("/c.key"));
        assert_eq!(config.store.etcd_user.as_deref(), Some("meridian"));

        let err = args(&["--etcd-ca", "/ca.pem"]).load_config().unwrap_err();
        assert_eq!(err.field(), Some("store.etcd_tls"), "{err}");
    }

    #[test]
    fn scaling_allowlists_come_from_flags_or_the_file_and_are_validated() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            file,
            "[scaling]\nexec_allow = [\"/opt/a\"]\nwebhook_allow = [\"http://hooks.internal/\"]"
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        let config = args(&["--config", path]).load_config().unwrap();
        assert_eq!(config.scaling.exec_allow, [PathBuf::from("/opt/a")]);
        let config = args(&[
            "--config",
            path,
            "--scaling-exec-allow",
            "/opt/b",
            "--scaling-exec-allow",
            "/opt/c",
        ])
        .load_config()
        .unwrap();
        assert_eq!(
            config.scaling.exec_allow,
            [PathBuf::from("/opt/b"), PathBuf::from("/opt/c")],
            "the flags replace the file's list"
        );
        assert_eq!(config.scaling.webhook_allow, ["http://hooks.internal/"]);

        let err = args(&["--scaling-exec-allow", "kubectl"])
            .load_config()
            .unwrap_err();
        assert_eq!(err.field(), Some("scaling.exec_allow[0]"), "{err}");
        let config = args(&[
            "--scaling-webhook-allow",
            "https://hooks.internal/",
            "--scaling-webhook-ca",
            "/etc/ca.pem",
        ])
        .load_config()
        .unwrap();
        assert_eq!(config.scaling.webhook_allow, ["https://hooks.internal/"]);
        for bad in ["https://hooks.internal/", "hooks.internal", "http://"] {
            let err = args(&["--scaling-webhook-allow", bad])
                .load_config()
                .unwrap_err();
            assert_eq!(
                err.field(),
                Some("scaling.webhook_allow[0]"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn comma_separated_endpoints_become_a_list() {
        let config = args(&["--etcd-endpoints", "http://127.0.0.1:1,http://127.0.0.1:2"])
            .load_config()
            .unwrap();
        assert_eq!(config.store.etcd_endpoints.len(), 2);
    }
}
