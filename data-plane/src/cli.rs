//! `meridian-proxy`'s command line: every setting of the config file can be overridden by a
//! flag or its `MERIDIAN_*` variable (a flag wins over its variable, both win over the
//! file).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use meridian_shared::config::{ConfigError, ProxyConfig, Validate, load_file, override_with};
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

    /// Address for client gRPC traffic (HTTP/2 cleartext). Default 127.0.0.1:7800.
    #[arg(long, env = "MERIDIAN_GRPC_ADDR", value_name = "HOST:PORT")]
    pub grpc_addr: Option<SocketAddr>,

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

    /// Largest gRPC message accepted, in bytes. Default 4194304 (4 MiB).
    #[arg(long, env = "MERIDIAN_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<u32>,

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
        override_with(&mut config.log.format, &self.log_format);
        override_with(&mut config.log.level, &self.log_level);
        if self.table_cache.is_some() {
            config.table_cache = self.table_cache.clone();
        }
        if self.token_file.is_some() {
            config.token_file = self.token_file.clone();
        }
        config.validate()?;
        Ok(config)
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
    fn a_missing_region_is_refused_naming_the_field() {
        let err = args(&["--id", "p1"]).load_config().unwrap_err();
        assert_eq!(err.field(), Some("region"), "{err}");
    }
}
