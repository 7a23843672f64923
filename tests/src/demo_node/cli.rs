//! The command line of `meridian-demo-node`: who the node is, where it listens, how badly
//! it behaves from the start, and (optionally) which control plane it registers with.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use meridian_shared::config::{ClientTlsConfig, ListenerTlsConfig};

/// A demo backend of a Meridian federation: serves demo.v1.Echo, demo.v1.DemoControl,
/// meridian.v1.MessageHandler, grpc.health.v1.Health and server reflection on one port,
/// and can register itself with a control plane.
///
/// Prints `listening on HOST:PORT` as its first line on stdout once it accepts calls.
#[derive(Debug, Clone, Parser)]
#[command(name = "meridian-demo-node", version)]
pub struct DemoNodeArgs {
    /// The node's id, returned in every reply and used as its registered id.
    #[arg(long, env = "MERIDIAN_DEMO_ID")]
    pub id: String,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "MERIDIAN_DEMO_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// TLS certificate chain (PEM); with --tls-key the node serves TLS (ALPN h2) instead
    /// of h2c.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM).
    #[arg(
        long,
        env = "MERIDIAN_DEMO_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Milliseconds added to every Echo and MessageHandler call.
    #[arg(long, env = "MERIDIAN_DEMO_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u32,

    /// Share of Echo and MessageHandler calls that fail with UNAVAILABLE "injected
    /// failure", 0 to 1.
    #[arg(long, env = "MERIDIAN_DEMO_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// The utilisation reported in ORCA trailers (`endpoint-load-metrics-bin`), a
    /// non-negative fraction; without it, the calls in their latency wait over
    /// --capacity (DemoControl/SetUtilization changes it).
    #[arg(long, env = "MERIDIAN_DEMO_UTILIZATION", value_parser = parse_utilization)]
    pub utilization: Option<f64>,

    /// Calls in flight that make a reported utilisation of 1 when --utilization is not
    /// set.
    #[arg(long, env = "MERIDIAN_DEMO_CAPACITY", default_value_t = super::behaviour::DEFAULT_CAPACITY)]
    pub capacity: u32,

    /// Calls served at once, like a server with a fixed pool of workers: calls beyond it
    /// wait for a worker before their latency, so latency grows with load past this
    /// real capacity. 0: no limit.
    #[arg(long, env = "MERIDIAN_DEMO_WORKERS", default_value_t = 0)]
    pub workers: u32,

    /// Seconds after start at which the node degrades: from then on its latency is
    /// multiplied by --degrade-factor (the routing benchmark's degrading replica).
    #[arg(
        long,
        env = "MERIDIAN_DEMO_DEGRADE_AFTER_SECONDS",
        value_name = "SECONDS"
    )]
    pub degrade_after_seconds: Option<f64>,

    /// How many times slower the node answers once degraded.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_DEGRADE_FACTOR",
        default_value_t = 5,
        requires = "degrade_after_seconds"
    )]
    pub degrade_factor: u32,

    /// Start with grpc.health.v1 reporting NOT_SERVING (DemoControl/SetHealth changes it).
    #[arg(long, env = "MERIDIAN_DEMO_UNHEALTHY")]
    pub unhealthy: bool,

    /// Answer like a plain gRPC server: no `x-served-by` and no ORCA trailers. The
    /// data-plane benchmark's backends run so, to measure proxies as the reference
    /// harness does (its echo backend sends neither).
    #[arg(long, env = "MERIDIAN_DEMO_PLAIN")]
    pub plain: bool,

    /// Send no ORCA trailers (`endpoint-load-metrics-bin`); the node's load is then known
    /// only from its out-of-band ORCA stream (unless --no-orca-service too).
    #[arg(long, env = "MERIDIAN_DEMO_NO_ORCA_TRAILERS")]
    pub no_orca_trailers: bool,

    /// Do not serve xds.service.orca.v3.OpenRcaService (out-of-band ORCA reports):
    /// clients asking for it get UNIMPLEMENTED, as from a server without ORCA.
    #[arg(long, env = "MERIDIAN_DEMO_NO_ORCA_SERVICE")]
    pub no_orca_service: bool,

    /// gRPC URL of a control plane to register with (meridian.v1.NodeRegistry), e.g.
    /// http://127.0.0.1:7700. Needs --federation, --region and --zone.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_REGISTER_WITH",
        value_name = "URL",
        requires_all = ["federation", "region", "zone"]
    )]
    pub register_with: Option<String>,

    /// CA (PEM) the control plane's certificate must chain to; needed for an https://
    /// --register-with.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_CONTROL_PLANE_CA",
        value_name = "FILE",
        requires = "register_with"
    )]
    pub control_plane_ca: Option<PathBuf>,

    /// Client certificate (PEM) presented to the control plane (mTLS); with
    /// --control-plane-key.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_CONTROL_PLANE_CERT",
        value_name = "FILE",
        requires_all = ["control_plane_key", "control_plane_ca"]
    )]
    pub control_plane_cert: Option<PathBuf>,

    /// Private key (PEM) of --control-plane-cert.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_CONTROL_PLANE_KEY",
        value_name = "FILE",
        requires = "control_plane_cert"
    )]
    pub control_plane_key: Option<PathBuf>,

    /// File holding the node-role token to register with (default: the MERIDIAN_TOKEN
    /// environment variable).
    #[arg(long, env = "MERIDIAN_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Federation to register in.
    #[arg(long, env = "MERIDIAN_DEMO_FEDERATION")]
    pub federation: Option<String>,

    /// Region to register in; must exist in the federation.
    #[arg(long, env = "MERIDIAN_DEMO_REGION")]
    pub region: Option<String>,

    /// Zone to register in; must be one of the region's zones.
    #[arg(long, env = "MERIDIAN_DEMO_ZONE")]
    pub zone: Option<String>,

    /// gRPC services to register as served, comma-separated.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_SERVICES",
        value_delimiter = ',',
        default_value = "demo.v1.Echo"
    )]
    pub services: Vec<String>,

    /// Also answer demo.v1.Echo's methods under this service name (e.g. demo.v1.EchoBackup
    /// for calls to /demo.v1.EchoBackup/Say), as a node of a fallback service would.
    /// Repeatable, or comma-separated.
    #[arg(
        long = "echo-alias",
        env = "MERIDIAN_DEMO_ECHO_ALIASES",
        value_name = "SERVICE",
        value_delimiter = ','
    )]
    pub echo_aliases: Vec<String>,

    /// Weight for weighted routing, 1 to 10000; 0 lets the control plane use its default.
    #[arg(long, env = "MERIDIAN_DEMO_WEIGHT", default_value_t = 0)]
    pub weight: u32,

    /// Lease time-to-live requested at registration, in seconds (5 to 300).
    #[arg(long, env = "MERIDIAN_DEMO_TTL_SECONDS", default_value_t = 10)]
    pub ttl_seconds: u32,
}

impl DemoNodeArgs {
    /// The listener's TLS, when --tls-cert and --tls-key are given.
    pub fn listener_tls(&self) -> Option<ListenerTlsConfig> {
        Some(ListenerTlsConfig {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// TLS towards the control plane, when --control-plane-ca is given.
    pub fn control_plane_tls(&self) -> Option<ClientTlsConfig> {
        Some(ClientTlsConfig {
            cert: self.control_plane_cert.clone(),
            key: self.control_plane_key.clone(),
            ..ClientTlsConfig::with_ca(self.control_plane_ca.clone()?)
        })
    }
}

fn parse_rate(value: &str) -> Result<f64, String> {
    let rate: f64 = value
        .parse()
        .map_err(|e| format!("{value:?} is not a number: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is outside 0 to 1"))
    }
}

fn parse_utilization(value: &str) -> Result<f64, String> {
    let utilization: f64 = value
        .parse()
        .map_err(|e| format!("{value:?} is not a number: {e}"))?;
    if utilization >= 0.0 && utilization.is_finite() {
        Ok(utilization)
    } else {
        Err(format!("{utilization} is not a non-negative number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_listen_on_a_free_loopback_port_without_registering() {
        let args = DemoNodeArgs::try_parse_from(["meridian-demo-node", "--id", "n1"]).unwrap();
        assert_eq!(args.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(args.services, ["demo.v1.Echo"]);
        assert_eq!(args.ttl_seconds, 10);
        assert!(args.register_with.is_none());
    }

    #[test]
    fn registering_needs_the_location_and_rates_stay_within_0_and_1() {
        let missing_zone = DemoNodeArgs::try_parse_from([
            "meridian-demo-node",
            "--id",
            "n1",
            "--register-with",
            "http://127.0.0.1:7700",
            "--federation",
            "prod",
            "--region",
            "eu-west",
        ]);
        assert!(missing_zone.is_err());
        let rate = DemoNodeArgs::try_parse_from(["x", "--id", "n1", "--error-rate", "1.5"]);
        assert!(rate.is_err());
        let services =
            DemoNodeArgs::try_parse_from(["x", "--id", "n1", "--services", "a.B,c.D"]).unwrap();
        assert_eq!(services.services, ["a.B", "c.D"]);
    }

    #[test]
    fn tls_flags_come_in_pairs() {
        let parse =
            |extra: &[&str]| DemoNodeArgs::try_parse_from(["x", "--id", "n1"].iter().chain(extra));
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        let args = parse(&["--tls-cert", "c.pem", "--tls-key", "c.key"]).unwrap();
        assert!(!args.listener_tls().unwrap().files().require_client_cert);
        assert!(args.control_plane_tls().is_none());
        let url = ["--register-with", "https://cp:7700", "--federation", "f"];
        let location = ["--region", "r", "--zone", "z"];
        let with = |tls: &[&'static str]| {
            let mut all = url.to_vec();
            all.extend(location);
            all.extend(tls);
            parse(&all)
        };
        assert!(
            with(&[
                "--control-plane-cert",
                "n.pem",
                "--control-plane-ca",
                "ca.pem"
            ])
            .is_err()
        );
        let args = with(&[
            "--control-plane-ca",
            "ca.pem",
            "--control-plane-cert",
            "n.pem",
            "--control-plane-key",
            "n.key",
        ])
        .unwrap();
        let tls = args.control_plane_tls().unwrap();
        assert_eq!(tls.key, Some("n.key".into()));
    }
}
