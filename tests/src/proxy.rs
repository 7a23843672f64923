//! A real `meridian-proxy` process for tests: on free loopback ports, following the given
//! control planes, with a table cache in the test's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_shared::credentials::TOKEN_ENV;

use crate::control::PROXY_TOKEN;
use crate::http;
use crate::ports::free_port;
use crate::process::ChildProcess;

pub struct ProxyProcess {
    pub process: ChildProcess,
    pub id: String,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub cache: PathBuf,
}

/// Where and how to start a proxy.
pub struct ProxyOptions<'a> {
    pub id: &'a str,
    pub federation: &'a str,
    pub region: &'a str,
    pub zone: &'a str,
    pub control_planes: &'a [String],
    /// Directory for the log and the table cache.
    pub dir: &'a Path,
    /// Reuse these ports (restart tests); fresh ones when `None`.
    pub ports: Option<(SocketAddr, SocketAddr)>,
}

impl ProxyProcess {
    /// Starts a proxy and waits until it is live (not necessarily ready).
    pub async fn start(options: ProxyOptions<'_>) -> Self {
        ProxyProcess::start_with_args(options, &[]).await
    }

    /// Like [`ProxyProcess::start`], with more command-line arguments (TLS flags,
    /// `--config FILE`...) after the harness's own.
    pub async fn start_with_args(options: ProxyOptions<'_>, extra_args: &[&str]) -> Self {
        ProxyProcess::launch(None, options, extra_args).await
    }

    /// Like [`ProxyProcess::start_with_args`], inside network namespace `netns` (see
    /// [`ChildProcess::spawn_in_netns`]); `options.ports` should then be addresses of the
    /// namespace that the caller can reach.
    pub async fn start_in_netns(
        netns: &str,
        options: ProxyOptions<'_>,
        extra_args: &[&str],
    ) -> Self {
        ProxyProcess::launch(Some(netns), options, extra_args).await
    }

    async fn launch(netns: Option<&str>, options: ProxyOptions<'_>, extra_args: &[&str]) -> Self {
        let (grpc, admin) = options.ports.unwrap_or_else(|| {
            (
                SocketAddr::from(([127, 0, 0, 1], free_port())),
                SocketAddr::from(([127, 0, 0, 1], free_port())),
            )
        });
        let cache = options.dir.join(format!("{}.table", options.id));
        let (grpc_arg, admin_arg, control_planes) = (
            grpc.to_string(),
            admin.to_string(),
            options.control_planes.join(","),
        );
        let mut args = vec![
            "--id",
            options.id,
            "--federation",
            options.federation,
            "--region",
            options.region,
            "--zone",
            options.zone,
            "--control-planes",
            &control_planes,
            "--grpc-addr",
            &grpc_arg,
            "--admin-addr",
            &admin_arg,
            "--table-cache",
            cache.to_str().expect("utf-8 temp path"),
            "--drain-grace",
            "2",
            "--log-level",
            "info,meridian_data_plane=debug",
        ];
        args.extend_from_slice(extra_args);
        let log = options.dir.join(format!("{}.log", options.id));
        let env = [(TOKEN_ENV, PROXY_TOKEN)];
        let process = match netns {
            Some(netns) => ChildProcess::spawn_in_netns(netns, "meridian-proxy", &args, &env, &log),
            None => ChildProcess::spawn_with_env("meridian-proxy", &args, &env, &log),
        }
        .expect("starting meridian-proxy");
        let live = http::wait_for_ok(admin, "/live", Duration::from_secs(20)).await;
        assert!(
            live,
            "proxy {} not live; its output:\n{}",
            options.id,
            process.output()
        );
        ProxyProcess {
            process,
            id: options.id.to_owned(),
            grpc,
            admin,
            cache,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Waits until `/ready` (a table is loaded).
    pub async fn wait_ready(&self, deadline: Duration) {
        let ready = http::wait_for_ok(self.admin, "/ready", deadline).await;
        assert!(
            ready,
            "proxy {} not ready; its output:\n{}",
            self.id,
            self.process.output()
        );
    }

    /// `/debug/table` as JSON.
    pub async fn debug_table(&self) -> serde_json::Value {
        let (code, body) = http::get(self.admin, "/debug/table")
            .await
            .expect("GET /debug/table");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/debug/table is JSON")
    }

    /// A counter or gauge value from `/metrics` (summed over label sets), 0 if absent.
    pub async fn metric(&self, name: &str) -> f64 {
        self.metric_with(name, &[]).await
    }

    /// The sum of the `/metrics` samples of `name` whose labels contain all of `labels`
    /// (each written as in the exposition, `key="value"`), 0 if none.
    pub async fn metric_with(&self, name: &str, labels: &[&str]) -> f64 {
        let Ok((200, body)) = http::get(self.admin, "/metrics").await else {
            return 0.0;
        };
        body.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter(|l| labels.iter().all(|label| l.contains(label)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls `/debug/table` until `condition` holds; panics with the table after `deadline`.
    pub async fn wait_table(
        &self,
        deadline: Duration,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let started = tokio::time::Instant::now();
        loop {
            let table = self.debug_table().await;
            if condition(&table) {
                return table;
            }
            assert!(
                started.elapsed() < deadline,
                "{what}: not reached within {deadline:?}; table: {table:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}
