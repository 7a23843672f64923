//! The real `meridian-control` binary, as an operator meets it: it comes up ready in dev
//! mode, answers health checks (through the real `meridianctl`) and reflection v1 and
//! v1alpha (what grpcurl uses, new and old builds), serves Prometheus metrics, stops cleanly on SIGTERM, and refuses bad
//! configuration or a taken port with a message naming what is wrong.

use std::net::SocketAddr;
use std::time::Duration;

use meridian_tests::http;
use meridian_tests::ports::free_port;
use meridian_tests::process::{ChildProcess, run_to_completion};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const START_DEADLINE: Duration = Duration::from_secs(20);

struct RunningControlPlane {
    process: ChildProcess,
    grpc: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start_dev_control_plane() -> RunningControlPlane {
    let dir = tempfile::tempdir().unwrap();
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let process = ChildProcess::spawn(
        "meridian-control",
        &[
            "--dev",
            "--grpc-addr",
            &grpc.to_string(),
            "--http-addr",
            &http.to_string(),
        ],
        &dir.path().join("control.log"),
    )
    .unwrap();
    assert!(
        http::wait_for_ok(http, "/ready", START_DEADLINE).await,
        "control plane not ready; its output:\n{}",
        process.output()
    );
    RunningControlPlane {
        process,
        grpc,
        http,
        _dir: dir,
    }
}

async fn reflected_services(grpc: SocketAddr) -> Vec<String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

/// The services listed through reflection v1alpha, what grpcurl before 1.8.8 asks.
async fn reflected_services_v1alpha(grpc: SocketAddr) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1alpha is served")
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn dev_control_plane_serves_health_reflection_and_metrics_then_stops_on_sigterm() {
    let mut cp = start_dev_control_plane().await;
    let url = format!("http://{}", cp.grpc);

    let (status, stdout, stderr) = run_to_completion(
        "meridianctl",
        &["--control-plane", &url, "status", "-o", "json"],
    );
    assert!(status.success(), "meridianctl status failed: {stderr}");
    let answer: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["status"], "SERVING");

    let services = reflected_services(cp.grpc).await;
    for wanted in [
        "grpc.health.v1.Health",
        "meridian.v1.Admin",
        "meridian.v1.RoutingDiscovery",
    ] {
        assert!(
            services.iter().any(|s| s == wanted),
            "{wanted} not in {services:?}"
        );
    }

    let services = reflected_services_v1alpha(cp.grpc).await;
    assert!(
        services.iter().any(|s| s == "meridian.v1.Admin"),
        "meridian.v1.Admin not in {services:?} (v1alpha)"
    );

    let (code, body) = http::get(cp.http, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("meridian_build_info{component=\"control\""),
        "{body}"
    );
    assert_eq!(http::get(cp.http, "/live").await.unwrap().0, 200);

    let exit = cp.process.terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "did not stop cleanly on SIGTERM: {exit:?}\n{}",
        cp.process.output()
    );
    assert!(
        http::get(cp.http, "/live").await.is_err(),
        "still listening after exit"
    );
}

#[tokio::test]
async fn meridianctl_reports_an_unreachable_control_plane_and_exits_non_zero() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let (status, _, stderr) = run_to_completion(
        "meridianctl",
        &["--control-plane", &url, "--timeout", "2", "status"],
    );
    assert!(!status.success());
    assert!(
        stderr.contains("cannot reach the control plane"),
        "{stderr}"
    );
}

#[test]
fn bad_configuration_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.toml");
    std::fs::write(&file, "[election]\nlease_ttl_seconds = 0\n").unwrap();
    let (status, _, stderr) =
        run_to_completion("meridian-control", &["--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("election.lease_ttl_seconds"), "{stderr}");

    std::fs::write(&file, "[listen]\ngrpc = 7700\n").unwrap();
    let (status, _, stderr) =
        run_to_completion("meridian-control", &["--config", file.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("listen.grpc"), "{stderr}");
}

#[tokio::test]
async fn a_taken_port_is_reported_with_its_address() {
    let cp = start_dev_control_plane().await;
    let (status, _, stderr) = run_to_completion(
        "meridian-control",
        &[
            "--dev",
            "--grpc-addr",
            &cp.grpc.to_string(),
            "--http-addr",
            "127.0.0.1:0",
        ],
    );
    assert!(!status.success());
    assert!(
        stderr.contains(&cp.grpc.to_string()) && stderr.contains("--grpc-addr"),
        "{stderr}"
    );
}

#[test]
fn help_explains_every_flag() {
    for binary in ["meridian-control", "meridian-proxy", "meridianctl"] {
        let (status, stdout, _) = run_to_completion(binary, &["--help"]);
        assert!(status.success(), "{binary} --help failed");
        let flags: Vec<&str> = stdout
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("--") || l.starts_with("-"))
            .collect();
        assert!(flags.len() >= 3, "{binary}: {stdout}");
        for (i, line) in stdout.lines().enumerate() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("--")
                && !trimmed.starts_with("--help")
                && !trimmed.starts_with("--version")
            {
                let explained = trimmed.contains("  ")
                    || stdout
                        .lines()
                        .nth(i + 1)
                        .is_some_and(|n| !n.trim().is_empty());
                assert!(explained, "{binary}: flag without explanation: {line}");
            }
        }
    }
}
