//! `meridian-proxy`'s command line: every setting of the config file can be overridden by a
//! flag or its `MERIDIAN_*` variable (a flag wins over its variable, both win over the
//! file).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use meridian_shared::config::{
    ClientTlsConfig, ConfigError, ListenerLimitsArgs, ListenerTlsConfig, ProxyConfig,
    UpstreamTlsRule, Validate, load_file, override_with,
};
use meridian_shared::telemetry::LogFormat;

/// Meridian proxy: forwards gRPC traffic to the nodes of a federation, following the
/// routing tables the control plane streams to it, and keeps routing with its last good
/// table when the control plane is away.
///
/// Settings come from --config (TOML), then MERIDIAN_* environment variables, then flags.
#[derive(Debug, Parser)]
#[command(name = "meridian-proxy", version, about, long_about)]
pub struct ProxyArgs {
    /// TOML configuration file (see deploy/proxy.toml for every key).
    #[arg(long, env = "MERIDIAN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Stable proxy id, shown in `meridianctl proxies` and in routing decisions. Required.
    #[arg(long, env = "MERIDIAN_PROXY_ID", value_name = "ID")]
    pub id: Option<String>,

    /// Federation whose routing table to follow. Default "default".
    #[arg(long, env = "MERIDIAN_FEDERATION", value_name = "NAME")]
    pub federation: Option<String>,

    /// Region the proxy runs in; routing prefers it. Required.
    #[arg(long, env = "MERIDIAN_REGION", value_name = "NAME")]
    pub region: Option<String>,

    /// Zone the proxy runs in; geographic routing prefers it over the rest of the region.
    #[arg(long, env = "MERIDIAN_ZONE", value_name = "NAME")]
    pub zone: Option<String>,

    /// Control-plane replicas, comma-separated; the proxy fails over between them.
    /// Default http://127.0.0.1:7700.
    #[arg(
        long,
        env = "MERIDIAN_CONTROL_PLANES",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub control_planes: Option<Vec<String>>,

    /// CA (PEM) the control planes' certificates must chain to; needed for https://
    /// control planes. Replaces [control_plane_tls]. Re-read when the file changes.
    #[arg(long, env = "MERIDIAN_CONTROL_PLANE_CA", value_name = "FILE")]
    pub control_plane_ca: Option<PathBuf>,

    /// Client certificate (PEM) presented to the control planes (mTLS); with
    /// --control-plane-key.
    #[arg(
        long,
        env = "MERIDIAN_CONTROL_PLANE_CERT",
        value_name = "FILE",
        requires_all = ["control_plane_key", "control_plane_ca"]
    )]
    pub control_plane_cert: Option<PathBuf>,

    /// Private key (PEM) of --control-plane-cert.
    #[arg(
        long,
        env = "MERIDIAN_CONTROL_PLANE_KEY",
        value_name = "FILE",
        requires = "control_plane_cert"
    )]
    pub control_plane_key: Option<PathBuf>,

    /// Name the control planes' certificates must carry, instead of the host of each URL.
    #[arg(
        long,
        env = "MERIDIAN_CONTROL_PLANE_SERVER_NAME",
        value_name = "NAME",
        requires = "control_plane_ca"
    )]
    pub control_plane_server_name: Option<String>,

    /// Address for client gRPC traffic (HTTP/2; TLS with --tls-cert, else cleartext).
    /// Default 127.0.0.1:7800.
    #[arg(long, env = "MERIDIAN_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<SocketAddr>,

    /// TLS certificate chain (PEM) of the client gRPC listener; with --tls-key, clients
    /// connect with TLS. Replaces [listen_tls]. Re-read when the file changes.
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

    /// Require client certificates signed by this CA on the client listener (mTLS).
    #[arg(
        long,
        env = "MERIDIAN_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// TLS certificate chain (PEM) of the admin HTTP listener, which then serves HTTPS.
    /// Replaces [admin_tls]. Re-read when the file changes.
    #[arg(
        long,
        env = "MERIDIAN_ADMIN_TLS_CERT",
        value_name = "FILE",
        requires = "admin_tls_key"
    )]
    pub admin_tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --admin-tls-cert.
    #[arg(
        long,
        env = "MERIDIAN_ADMIN_TLS_KEY",
        value_name = "FILE",
        requires = "admin_tls_cert"
    )]
    pub admin_tls_key: Option<PathBuf>,

    /// Reach every node over TLS, verified against this CA (PEM): a last
    /// [[upstream_tls]] rule with services = ["*"], after those of the file.
    #[arg(long, env = "MERIDIAN_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,

    /// Address of the admin HTTP server (/metrics, /live, /ready, /debug/table).
    /// Default 127.0.0.1:7801.
    #[arg(long, env = "MERIDIAN_ADMIN_ADDR", value_name = "HOST:PORT")]
    pub admin_addr: Option<SocketAddr>,

    /// File keeping the last good routing table, so a restarted proxy serves before the
    /// control plane is reachable.
    #[arg(long, env = "MERIDIAN_TABLE_CACHE", value_name = "FILE")]
    pub table_cache: Option<PathBuf>,

    /// File holding the proxy-role token for the control plane (default: the
    /// MERIDIAN_TOKEN environment variable).
    #[arg(long, env = "MERIDIAN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Seconds in-flight requests may take to finish after SIGTERM. Default 10.
    #[arg(long, env = "MERIDIAN_DRAIN_GRACE", value_name = "SECONDS")]
    pub drain_grace: Option<u32>,

    /// Largest gRPC message a call may carry (request or response, forwarded or
    /// RouteMessage), in bytes, for services whose policy sets no limits.max_message_bytes;
    /// a larger one ends the call with RESOURCE_EXHAUSTED. Default 4194304 (4 MiB).
    #[arg(long, env = "MERIDIAN_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<u32>,

    /// Most bytes of one idempotent call's request body kept for retries; a larger body
    /// is forwarded as it streams, without retries. Default 4194304 (4 MiB).
    #[arg(long, env = "MERIDIAN_RETRY_BUFFER_CALL_BYTES", value_name = "BYTES")]
    pub retry_buffer_call_bytes: Option<u64>,

    /// Most bytes of request bodies kept for retries by all calls at once; a call that
    /// would go over is forwarded as it streams, without retries. Default 67108864 (64 MiB).
    #[arg(long, env = "MERIDIAN_RETRY_BUFFER_TOTAL_BYTES", value_name = "BYTES")]
    pub retry_buffer_total_bytes: Option<u64>,

    /// Calls in flight at once from this proxy to one node ([upstream]
    /// max_requests_per_endpoint); a full node is skipped, and with every usable node
    /// full a call fails fast with UNAVAILABLE. A service's
    /// endpoint_limits.max_requests_per_endpoint wins. Default 1024.
    #[arg(long, env = "MERIDIAN_MAX_REQUESTS_PER_ENDPOINT", value_name = "N")]
    pub max_requests_per_endpoint: Option<u32>,

    /// Calls one HTTP/2 connection to a node carries at once before the proxy opens
    /// another connection to it. Default 100.
    #[arg(long, env = "MERIDIAN_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub max_streams_per_connection: Option<u32>,

    /// Connections to one node, spread over the worker threads (at least one each).
    /// Default 8.
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS_PER_ENDPOINT", value_name = "N")]
    pub max_connections_per_endpoint: Option<u32>,

    /// HTTP/2 window of each call's response from a node, in bytes: what the proxy holds
    /// for a client that does not read (a connection's window is this times the streams
    /// it carries). Default 1048576 (1 MiB).
    #[arg(long, env = "MERIDIAN_STREAM_WINDOW_BYTES", value_name = "BYTES")]
    pub stream_window_bytes: Option<u32>,

    /// A forwarded call with no frame in either direction for this long ends with
    /// UNAVAILABLE, in milliseconds; 0: never. A service's
    /// endpoint_limits.stream_idle_timeout_ms wins. Default 300000 (5 min).
    #[arg(long, env = "MERIDIAN_STREAM_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub stream_idle_timeout_ms: Option<u32>,

    /// Deadline of calls that carry no grpc-timeout, in milliseconds; 0: none. A
    /// service's timeout.default_timeout_ms wins. Default 0.
    #[arg(long, env = "MERIDIAN_DEFAULT_DEADLINE_MS", value_name = "MS")]
    pub default_deadline_ms: Option<u32>,
    /// Limits of the client gRPC listener ([listener_limits]).
    #[command(flatten)]
    pub listener_limits: ListenerLimitsArgs,

    /// Log format: human or json. Default human.
    #[arg(long, env = "MERIDIAN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter, e.g. info or info,meridian_data_plane=debug. RUST_LOG wins when set.
    /// Default info.
    #[arg(long, env = "MERIDIAN_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl ProxyArgs {
    /// The configuration: the file (or defaults), the overrides, then validation.
    pub fn load_config(&self) -> Result<ProxyConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => load_file(path)?,
            None => ProxyConfig::default(),
        };
        override_with(&mut config.id, &self.id);
        override_with(&mut config.federation, &self.federation);
        override_with(&mut config.region, &self.region);
        override_with(&mut config.zone, &self.zone);
        override_with(&mut config.control_planes, &self.control_planes);
        override_with(&mut config.listen.grpc, &self.grpc_addr);
        override_with(&mut config.listen.admin, &self.admin_addr);
        override_with(&mut config.drain_grace_seconds, &self.drain_grace);
        override_with(&mut config.max_message_bytes, &self.max_message_bytes);
        override_with(
            &mut config.retry_buffer_call_bytes,
            &self.retry_buffer_call_bytes,
        );
        override_with(
            &mut config.retry_buffer_total_bytes,
            &self.retry_buffer_total_bytes,
        );
        self.override_upstream(&mut config);
        self.listener_limits.apply(&mut config.listener_limits);
        override_with(&mut config.log.format, &self.log_format);
        override_with(&mut config.log.level, &self.log_level);
        if self.table_cache.is_some() {
            config.table_cache = self.table_cache.clone();
        }
        if self.token_file.is_some() {
            config.token_file = self.token_file.clone();
        }
        self.override_tls(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// The [upstream] flags, each over its key.
    fn override_upstream(&self, config: &mut ProxyConfig) {
        let upstream = &mut config.upstream;
        override_with(
            &mut upstream.max_requests_per_endpoint,
            &self.max_requests_per_endpoint,
        );
        override_with(
            &mut upstream.max_streams_per_connection,
            &self.max_streams_per_connection,
        );
        override_with(
            &mut upstream.max_connections_per_endpoint,
            &self.max_connections_per_endpoint,
        );
        override_with(&mut upstream.stream_window_bytes, &self.stream_window_bytes);
        override_with(
            &mut upstream.stream_idle_timeout_ms,
            &self.stream_idle_timeout_ms,
        );
        override_with(&mut upstream.default_deadline_ms, &self.default_deadline_ms);
    }

    /// The TLS flags: each group replaces its whole section, as a file section would.
    fn override_tls(&self, config: &mut ProxyConfig) {
        if let Some(ca) = &self.control_plane_ca {
            config.control_plane_tls = Some(ClientTlsConfig {
                ca: ca.clone(),
                cert: self.control_plane_cert.clone(),
                key: self.control_plane_key.clone(),
                server_name: self.control_plane_server_name.clone(),
            });
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.listen_tls = Some(ListenerTlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            });
        }
        if let (Some(cert), Some(key)) = (&self.admin_tls_cert, &self.admin_tls_key) {
            config.admin_tls = Some(ListenerTlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: None,
            });
        }
        if let Some(ca) = &self.upstream_ca {
            config
                .upstream_tls
                .push(UpstreamTlsRule::every_service(ca.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> ProxyArgs {
        ProxyArgs::try_parse_from(std::iter::once("meridian-proxy").chain(argv.iter().copied()))
            .unwrap()
    }

    #[test]
    fn flags_fill_in_the_required_identity() {
        let config = args(&["--id", "p1", "--region", "eu-west", "--zone", "eu-west-a"])
            .load_config()
            .unwrap();
        assert_eq!(
            (config.id.as_str(), config.region.as_str()),
            ("p1", "eu-west")
        );
        assert_eq!(config.listen.grpc.to_string(), "127.0.0.1:7800");
    }

    #[test]
    fn tls_flags_fill_in_their_sections() {
        let config = args(&[
            "--id",
            "p1",
            "--region",
            "eu-west",
            "--control-planes",
            "https://cp.example:7700",
            "--control-plane-ca",
            "/tls/ca.pem",
            "--control-plane-cert",
            "/tls/proxy.pem",
            "--control-plane-key",
            "/tls/proxy.key",
            "--tls-cert",
            "/tls/server.pem",
            "--tls-key",
            "/tls/server.key",
            "--tls-client-ca",
            "/tls/clients.pem",
            "--upstream-ca",
            "/tls/nodes.pem",
        ])
        .load_config()
        .unwrap();
        let control = config.control_plane_tls.unwrap();
        assert_eq!(control.key, Some("/tls/proxy.key".into()));
        assert!(config.listen_tls.unwrap().files().require_client_cert);
        assert_eq!(
            config.upstream_tls,
            [UpstreamTlsRule::every_service("/tls/nodes.pem".into())]
        );
    }

    #[test]
    fn an_https_control_plane_without_a_ca_is_refused_naming_the_field() {
        let err = args(&[
            "--id",
            "p1",
            "--region",
            "eu-west",
            "--control-planes",
            "https://cp.example:7700",
        ])
        .load_config()
        .unwrap_err();
        assert_eq!(err.field(), Some("control_plane_tls.ca"), "{err}");
        let half = ProxyArgs::try_parse_from([
            "meridian-proxy",
            "--control-plane-ca",
            "/ca.pem",
            "--control-plane-cert",
            "/c.pem",
        ]);
        assert!(half.is_err(), "a client certificate without its key");
    }

    #[test]
    fn upstream_flags_override_their_keys() {
        let config = args(&[
            "--id",
            "p1",
            "--region",
            "eu-west",
            "--max-requests-per-endpoint",
            "8",
            "--stream-idle-timeout-ms",
            "2000",
            "--default-deadline-ms",
            "5000",
        ])
        .load_config()
        .unwrap();
        assert_eq!(config.upstream.max_requests_per_endpoint, 8);
        assert_eq!(config.upstream.stream_idle_timeout_ms, 2_000);
        assert_eq!(config.upstream.default_deadline_ms, 5_000);
        let err = args(&[
            "--id",
            "p1",
            "--region",
            "eu",
            "--max-requests-per-endpoint",
            "0",
        ])
        .load_config()
        .unwrap_err();
        assert_eq!(err.field(), Some("upstream.max_requests_per_endpoint"));
    }

    #[test]
    fn listener_limit_flags_override_and_are_validated() {
        let config = args(&[
            "--id",
            "p1",
            "--region",
            "eu-west",
            "--max-connections",
            "5",
            "--idle-timeout",
            "2",
        ])
        .load_config()
        .unwrap();
        assert_eq!(config.listener_limits.max_connections, 5);
        assert_eq!(config.listener_limits.idle_timeout_seconds, 2);
        assert_eq!(config.listener_limits.max_concurrent_streams, 1024);
        let err = args(&[
            "--id",
            "p1",
            "--region",
            "eu-west",
            "--max-connections",
            "0",
        ])
        .load_config()
        .unwrap_err();
        assert_eq!(
            err.field(),
            Some("listener_limits.max_connections"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_region_is_refused_naming_the_field() {
        let err = args(&["--id", "p1"]).load_config().unwrap_err();
        assert_eq!(err.field(), Some("region"), "{err}");
    }
}
