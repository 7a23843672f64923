//! The command line of `meridian-demo-node`: who the node is, where it listens, how badly
//! it behaves from the start, and (optionally) which control plane it registers with.

use std::net::SocketAddr;

use clap::Parser;

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

    /// Milliseconds added to every Echo and MessageHandler call.
    #[arg(long, env = "MERIDIAN_DEMO_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u32,

    /// Share of Echo and MessageHandler calls that fail with UNAVAILABLE "injected
    /// failure", 0 to 1.
    #[arg(long, env = "MERIDIAN_DEMO_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Start with grpc.health.v1 reporting NOT_SERVING (DemoControl/SetHealth changes it).
    #[arg(long, env = "MERIDIAN_DEMO_UNHEALTHY")]
    pub unhealthy: bool,

    /// gRPC URL of a control plane to register with (meridian.v1.NodeRegistry), e.g.
    /// http://127.0.0.1:7700. Needs --federation, --region and --zone.
    #[arg(
        long,
        env = "MERIDIAN_DEMO_REGISTER_WITH",
        value_name = "URL",
        requires_all = ["federation", "region", "zone"]
    )]
    pub register_with: Option<String>,

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

    /// Weight for weighted routing, 1 to 10000; 0 lets the control plane use its default.
    #[arg(long, env = "MERIDIAN_DEMO_WEIGHT", default_value_t = 0)]
    pub weight: u32,

    /// Lease time-to-live requested at registration, in seconds (5 to 300).
    #[arg(long, env = "MERIDIAN_DEMO_TTL_SECONDS", default_value_t = 10)]
    pub ttl_seconds: u32,
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
}
