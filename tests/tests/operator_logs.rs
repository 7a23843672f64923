//! What the proxy's logs look like to an operator: `--log-format json` writes one JSON
//! object per line with the fields log pipelines index; human-format logs written to a
//! file carry no ANSI colour codes; and a control plane that stays down is reported once
//! and then summarised, not once per reconnect attempt.

use std::time::Duration;

use meridian_tests::ports::free_port;
use meridian_tests::proxy::{ProxyOptions, ProxyProcess};

/// Starts a proxy whose only control plane is a port nothing listens on.
async fn orphan_proxy(dir: &std::path::Path, id: &str, extra_args: &[&str]) -> ProxyProcess {
    let nowhere = [format!("http://127.0.0.1:{}", free_port())];
    let options = ProxyOptions {
        id,
        federation: "prod",
        region: "eu-west",
        zone: "eu-west-a",
        control_planes: &nowhere,
        dir,
        ports: None,
    };
    ProxyProcess::start_with_args(options, extra_args).await
}

fn json_lines(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
        })
        .collect()
}

#[tokio::test]
async fn json_logs_carry_the_fields_and_a_down_control_plane_is_warned_once_then_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = orphan_proxy(dir.path(), "proxy-json", &["--log-format", "json"]).await;

    // Reconnect attempts back off from 100 ms: wait for several of them.
    let attempts = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("routing stream: reconnect attempt failed"))
            })
            .count()
    };
    let started = tokio::time::Instant::now();
    let lines = loop {
        let lines = json_lines(&proxy.process.output());
        if attempts(&lines) >= 4 {
            break lines;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "fewer than 4 reconnect attempts in 30 s:\n{}",
            proxy.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let serving = lines
        .iter()
        .find(|l| l["message"] == "proxy serving")
        .expect("a `proxy serving` line");
    assert_eq!(serving["level"], "INFO", "{serving}");
    assert_eq!(
        serving["target"], "meridian_data_plane::server",
        "{serving}"
    );
    assert_eq!(serving["proxy"], "proxy-json", "{serving}");
    assert_eq!(serving["region"], "eu-west", "{serving}");
    assert_eq!(serving["grpc"], proxy.grpc.to_string(), "{serving}");
    let timestamp = serving["timestamp"].as_str().expect("a timestamp");
    assert!(
        timestamp.len() >= 20 && timestamp.as_bytes()[10] == b'T',
        "not an RFC 3339 time stamp: {timestamp}"
    );

    let warnings: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("routing stream"))
        })
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "{} failed attempts gave {} warnings, not one: {warnings:#?}",
        attempts(&lines),
        warnings.len()
    );
    assert!(warnings[0]["control_plane"].is_string(), "{}", warnings[0]);
    assert!(warnings[0]["error"].is_string(), "{}", warnings[0]);
}

#[tokio::test]
async fn human_logs_written_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = orphan_proxy(dir.path(), "proxy-human", &[]).await;
    let started = tokio::time::Instant::now();
    while !proxy.process.output().contains("routing stream lost") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no warning in 30 s:\n{}",
            proxy.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = proxy.process.output();
    assert!(output.contains(" WARN "), "{output}");
    assert!(
        !output.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{output:?}"
    );
}
