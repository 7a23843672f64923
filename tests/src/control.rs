//! A real `meridian-control` process for tests: on a given etcd, under a prefix of its
//! own, on free loopback ports, with an operator and a viewer token; started and waited
//! for until `/ready`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meridian_proto::v1::admin_client::AdminClient;
use tonic::transport::Channel;

use crate::http;
use crate::ports::free_port;
use crate::process::ChildProcess;

/// The operator token every test control plane accepts.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789";
/// The viewer token every test control plane accepts.
pub const VIEWER_TOKEN: &str = "test-viewer-token-0123456789";
/// The node-role token (any federation) every test control plane accepts; demo nodes
/// started by the harness register with it.
pub const NODE_TOKEN: &str = "test-node-token-0123456789";
/// The proxy-role token (any federation) every test control plane accepts; proxies and
/// subscribers started by the harness present it.
pub const PROXY_TOKEN: &str = "test-proxy-token-0123456789";
/// A second unscoped node-role token, another credential than [`NODE_TOKEN`].
pub const SECOND_NODE_TOKEN: &str = "test-second-node-token-0123456789";
/// A node-role token scoped to federation `other`.
pub const OTHER_FEDERATION_NODE_TOKEN: &str = "test-other-node-token-0123456789";
/// A proxy-role token scoped to federation `other`.
pub const OTHER_FEDERATION_PROXY_TOKEN: &str = "test-other-proxy-token-0123456789";

/// The tokens file of every test control plane: the tokens above.
pub fn tokens_file_text() -> String {
    let token = |name: &str, token: &str, role: &str, extra: &str| {
        format!("[[tokens]]\nname = \"{name}\"\ntoken = \"{token}\"\nrole = \"{role}\"\n{extra}")
    };
    [
        token("tester", OPERATOR_TOKEN, "operator", ""),
        token("watcher", VIEWER_TOKEN, "viewer", ""),
        token("nodes", NODE_TOKEN, "node", ""),
        token("proxies", PROXY_TOKEN, "proxy", ""),
        token("more-nodes", SECOND_NODE_TOKEN, "node", ""),
        token(
            "other-nodes",
            OTHER_FEDERATION_NODE_TOKEN,
            "node",
            "federation = \"other\"\n",
        ),
        token(
            "other-proxies",
            OTHER_FEDERATION_PROXY_TOKEN,
            "proxy",
            "federation = \"other\"\n",
        ),
    ]
    .concat()
}

const READY_DEADLINE: Duration = Duration::from_secs(30);

pub struct ControlPlaneProcess {
    pub process: ChildProcess,
    pub replica: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

/// Where and how to start a control plane.
pub struct ControlPlaneOptions<'a> {
    /// etcd client URLs; empty runs in dev mode on the embedded store.
    pub etcd_endpoints: &'a [String],
    pub prefix: &'a str,
    pub replica: &'a str,
    pub election_ttl_seconds: u32,
    /// Directory for the log and the tokens file.
    pub dir: &'a Path,
}

/// Command-line arguments and environment variables added to those of
/// [`ControlPlaneOptions`] (etcd TLS and credentials, say).
#[derive(Debug, Clone, Default)]
pub struct ExtraSettings {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// TOML appended to the tokens file, e.g. `[[certificates]]` mappings for mTLS.
    pub credentials: String,
}

impl ControlPlaneProcess {
    /// Starts one and waits until it is ready (its topology is loaded).
    pub async fn start(options: ControlPlaneOptions<'_>) -> Self {
        Self::start_with(options, &ExtraSettings::default()).await
    }

    /// Starts one with `extra` settings and waits until it is ready.
    pub async fn start_with(options: ControlPlaneOptions<'_>, extra: &ExtraSettings) -> Self {
        let cp = Self::launch(options, extra);
        cp.wait_ready().await;
        cp
    }

    async fn wait_ready(&self) {
        let ready = http::wait_for_ok(self.http, "/ready", READY_DEADLINE).await;
        assert!(
            ready,
            "{} not ready; its output:\n{}",
            self.replica,
            self.process.output()
        );
    }

    /// Starts one with `extra` settings without waiting for it, for tests of a control
    /// plane that must refuse to start.
    pub fn launch(options: ControlPlaneOptions<'_>, extra: &ExtraSettings) -> Self {
        Self::launch_on(
            SocketAddr::from(([127, 0, 0, 1], free_port())),
            options,
            extra,
        )
    }

    /// Starts one whose gRPC listener is `grpc` (an address of a private bridge, say, for
    /// proxies in network namespaces), and waits until it is ready; its HTTP listener
    /// stays on loopback.
    pub async fn start_on(
        grpc: SocketAddr,
        options: ControlPlaneOptions<'_>,
        extra: &ExtraSettings,
    ) -> Self {
        let cp = Self::launch_on(grpc, options, extra);
        cp.wait_ready().await;
        cp
    }

    fn launch_on(
        grpc: SocketAddr,
        options: ControlPlaneOptions<'_>,
        extra: &ExtraSettings,
    ) -> Self {
        let http_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tokens = options.dir.join("tokens.toml");
        std::fs::write(&tokens, tokens_file_text() + &extra.credentials)
            .expect("writing the tokens file");
        let ttl = options.election_ttl_seconds.to_string();
        let (grpc_arg, http_arg, endpoints) = (
            grpc.to_string(),
            http_addr.to_string(),
            options.etcd_endpoints.join(","),
        );
        let mut args = vec![
            "--replica-id",
            options.replica,
            "--grpc-addr",
            &grpc_arg,
            "--http-addr",
            &http_arg,
            "--store-prefix",
            options.prefix,
            "--election-ttl",
            &ttl,
            "--tokens-file",
            tokens.to_str().expect("utf-8 temp path"),
            "--log-level",
            "info,meridian_control_plane=debug",
        ];
        if options.etcd_endpoints.is_empty() {
            args.push("--dev");
        } else {
            args.extend(["--etcd-endpoints", endpoints.as_str()]);
        }
        args.extend(extra.args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = extra
            .env
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let process = ChildProcess::spawn_with_env(
            "meridian-control",
            &args,
            &env,
            &options.dir.join(format!("{}.log", options.replica)),
        )
        .expect("starting meridian-control");
        ControlPlaneProcess {
            process,
            replica: options.replica.to_owned(),
            grpc,
            http: http_addr,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Creates federation `federation` (if needed; its nodes may use loopback addresses)
    /// and, in it, region `region` at `(latitude, longitude)` with `zones`.
    pub async fn create_region(
        &self,
        federation: &str,
        region: &str,
        (latitude, longitude): (f64, f64),
        zones: &[&str],
    ) {
        use meridian_proto::v1 as pb;
        let mut admin = self.admin().await;
        let request = pb::UpsertFederationRequest {
            federation: Some(pb::Federation {
                name: federation.into(),
                allowed_networks: vec!["127.0.0.0/8".into()],
                ..Default::default()
            }),
        };
        admin
            .upsert_federation(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("creating the federation");
        let request = pb::UpsertRegionRequest {
            region: Some(pb::Region {
                name: region.into(),
                federation: federation.into(),
                location: Some(pb::GeoPoint {
                    latitude,
                    longitude,
                }),
                zones: zones.iter().map(|z| z.to_string()).collect(),
                ..Default::default()
            }),
        };
        admin
            .upsert_region(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("creating the region");
    }

    /// Slows active health checks to one per 10 minutes, for tests whose nodes are
    /// addresses with nothing listening: the checker would otherwise mark them unhealthy
    /// mid-test and change the tables those tests compare.
    pub async fn slow_health_checks(&self) {
        use meridian_proto::v1 as pb;
        let config = pb::DynamicConfig {
            default_health_check: Some(pb::HealthCheckPolicy {
                interval_ms: 600_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = pb::UpdateConfigRequest {
            config: Some(config),
            dry_run: false,
            expected_revision: 0,
        };
        self.admin()
            .await
            .update_config(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("slowing health checks");
    }

    /// Changes the stored dynamic configuration with `change` (UpdateConfig replaces the
    /// whole configuration, so this reads the stored one first).
    pub async fn change_config(&self, change: impl FnOnce(&mut meridian_proto::v1::DynamicConfig)) {
        use meridian_proto::v1 as pb;
        let mut admin = self.admin().await;
        let mut config = admin
            .get_config(authorized(pb::GetConfigRequest {}, OPERATOR_TOKEN))
            .await
            .expect("reading the configuration")
            .into_inner()
            .config
            .unwrap_or_default();
        change(&mut config);
        let request = pb::UpdateConfigRequest {
            config: Some(config),
            dry_run: false,
            expected_revision: 0,
        };
        admin
            .update_config(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("changing the configuration");
    }

    /// An Admin client; add a token per request with [`authorized`].
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(channel(&self.url()).await)
    }

    /// Whether this replica reports itself leader on `/metrics`.
    pub async fn is_leader(&self) -> bool {
        match http::get(self.http, "/metrics").await {
            Ok((200, body)) => body
                .lines()
                .any(|l| l.trim() == "meridian_control_leader 1"),
            _ => false,
        }
    }

    /// A counter or gauge value from `/metrics` (summed over label sets), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let Ok((200, body)) = http::get(self.http, "/metrics").await else {
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A connected channel to `url`.
pub async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("valid url")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// An interceptor adding `authorization: Bearer <token>` to every call of a client.
pub fn bearer(token: &str) -> meridian_shared::credentials::BearerAuth {
    meridian_shared::credentials::BearerAuth::new(token, "test").expect("ascii token")
}

/// `message` with `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii token"),
    );
    request
}
