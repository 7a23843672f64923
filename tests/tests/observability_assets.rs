//! The Grafana dashboard and Prometheus alert rules in `deploy/observability/` work with
//! what the binaries really export: the rules pass `promtool check rules`, the dashboard is
//! JSON Grafana can import, and every metric either names is found on the `/metrics` of a
//! real control plane and proxy after some traffic (scraped, not grepped from the source,
//! so a renamed metric or a summary where a histogram is expected fails here).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::http;
use meridian_tests::prometheus::exported_names;

fn asset(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    (path, text)
}

/// Every `meridian_...` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("meridian_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool() {
    let (path, _) = asset("alerts.yml");
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}); install it with `apt-get install prometheus` \
                 (scripts/test.sh does, through scripts/lib/prereqs.sh)"
            )
        });
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_queries() {
    let (_, text) = asset("grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(dashboard["uid"], "meridian-federation");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("every panel queries");
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expression");
            assert!(expr.contains("meridian_"), "{panel}");
        }
    }
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 100, &[]).await;
    let proxy = cluster.proxy("proxy-o11y", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 1).await;

    // Traffic of every kind the rules look at: calls that reach the node, a call the
    // proxy answers itself (a service not in the table), one it refuses (too large).
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    for _ in 0..20 {
        echo.say(demo::SayRequest {
            text: "hello".into(),
            ..Default::default()
        })
        .await
        .expect("a call through the proxy");
    }
    let unknown = DemoControlClient::new(channel(&proxy.url()).await)
        .set_latency(demo::SetLatencyRequest::default())
        .await
        .expect_err("DemoControl is not routed");
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown}");
    let too_large = echo
        .say(demo::SayRequest {
            text: "x".repeat(5 * 1024 * 1024),
            ..Default::default()
        })
        .await
        .expect_err("a 5 MiB message is over the 4 MiB default");
    assert_eq!(
        too_large.code(),
        tonic::Code::ResourceExhausted,
        "{too_large}"
    );

    let mut exported = BTreeSet::new();
    for (addr, what) in [(cluster.cp.http, "control plane"), (proxy.admin, "proxy")] {
        let (code, text) = http::get(addr, "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "{what}: {text}");
        assert!(
            !text.contains("quantile="),
            "{what} still exports summaries:\n{text}"
        );
        exported.extend(exported_names(&text));
    }

    for asset_name in ["alerts.yml", "grafana-dashboard.json"] {
        let (_, text) = asset(asset_name);
        let named = metric_names(&text);
        assert!(named.len() >= 10, "{asset_name}: {named:?}");
        let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{asset_name} names metrics the binaries do not export: {missing:?}\nexported: {exported:?}"
        );
    }
}
