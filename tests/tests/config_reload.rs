//! Configuration reload on real processes, as an operator does it: edit the tokens file
//! or the config file (or send SIGHUP) and the running control plane or proxy applies it
//! without a restart; a broken file leaves the old configuration serving and says which
//! field is wrong; a removed token ends the streams it had open.

use std::path::Path;
use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized, channel,
    tokens_file_text,
};
use meridian_tests::http;
use meridian_tests::process::{ChildProcess, run_to_completion};

/// A viewer token the control plane does not know at start.
const ADDED_TOKEN: &str = "test-added-viewer-token-0123456789";
/// Long enough for a 1 s file poll on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(20);

fn added_token_entry() -> String {
    format!("[[tokens]]\nname = \"added\"\ntoken = \"{ADDED_TOKEN}\"\nrole = \"viewer\"\n")
}

/// Whether a ListNodes call with `token` is accepted (`Ok`) or its status code.
async fn list_nodes(cp: &ControlPlaneProcess, token: &str) -> Result<(), tonic::Code> {
    cp.admin()
        .await
        .list_nodes(authorized(pb::ListNodesRequest::default(), token))
        .await
        .map(drop)
        .map_err(|status| status.code())
}

/// Polls `list_nodes(token)` until it gives `wanted`.
async fn wait_for_answer(cp: &ControlPlaneProcess, token: &str, wanted: Result<(), tonic::Code>) {
    let started = tokio::time::Instant::now();
    loop {
        let got = list_nodes(cp, token).await;
        if got == wanted {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "ListNodes answered {got:?}, not {wanted:?}, within {DEADLINE:?}; log:\n{}",
            cp.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An open WatchEvents stream with `token`.
async fn watch_events(cp: &ControlPlaneProcess, token: &str) -> tonic::Streaming<pb::Event> {
    cp.admin()
        .await
        .watch_events(authorized(
            pb::WatchEventsRequest {
                follow: true,
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("opening WatchEvents")
        .into_inner()
}

/// Reads `stream` until it ends; the status code it ended with (`None`: it ended OK).
async fn stream_end(stream: &mut tonic::Streaming<pb::Event>) -> Option<tonic::Code> {
    let read_to_end = async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read_to_end)
        .await
        .expect("the stream did not end within the deadline")
}

/// Lines of the process's log containing every one of `parts`.
fn log_lines(process: &ChildProcess, parts: &[&str]) -> usize {
    process
        .output()
        .lines()
        .filter(|line| parts.iter().all(|part| line.contains(part)))
        .count()
}

/// Waits until the log has at least `count` lines containing every one of `parts`.
async fn wait_for_log(process: &ChildProcess, parts: &[&str], count: usize) {
    let started = tokio::time::Instant::now();
    while log_lines(process, parts) < count {
        assert!(
            started.elapsed() < DEADLINE,
            "no {count} log line(s) with {parts:?} within {DEADLINE:?}; log:\n{}",
            process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sighup(process: &ChildProcess) {
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &process.pid().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "could not send SIGHUP");
}

async fn dev_control_plane(dir: &Path, config: &Path) -> ControlPlaneProcess {
    let options = ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-reload",
        election_ttl_seconds: 5,
        dir,
    };
    let extra = ExtraSettings {
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    };
    ControlPlaneProcess::start_with(options, &extra).await
}

#[tokio::test]
async fn a_token_added_to_the_tokens_file_works_without_a_restart_and_a_removed_one_stops() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(&config, "[store]\ndial_timeout_ms = 2000\n").unwrap();
    let cp = dev_control_plane(dir.path(), &config).await;
    let tokens = dir.path().join("tokens.toml");
    assert_eq!(
        list_nodes(&cp, ADDED_TOKEN).await,
        Err(tonic::Code::Unauthenticated)
    );

    std::fs::write(&tokens, tokens_file_text() + &added_token_entry()).unwrap();
    wait_for_answer(&cp, ADDED_TOKEN, Ok(())).await;
    assert_eq!(list_nodes(&cp, OPERATOR_TOKEN).await, Ok(()));
    // A stream opened with the added token, and one with a token that stays.
    let mut revoked = watch_events(&cp, ADDED_TOKEN).await;
    let mut kept = watch_events(&cp, OPERATOR_TOKEN).await;

    std::fs::write(&tokens, tokens_file_text()).unwrap();
    wait_for_answer(&cp, ADDED_TOKEN, Err(tonic::Code::Unauthenticated)).await;
    assert_eq!(list_nodes(&cp, OPERATOR_TOKEN).await, Ok(()));
    assert_eq!(
        stream_end(&mut revoked).await,
        Some(tonic::Code::Unauthenticated),
        "a stream whose token was removed ends"
    );
    let still_open = tokio::time::timeout(Duration::from_millis(500), kept.message()).await;
    assert!(
        still_open.is_err() || matches!(still_open, Ok(Ok(Some(_)))),
        "the operator's stream stays open: {still_open:?}"
    );

    // SIGHUP reloads too, with nothing changed.
    sighup(&cp.process);
    wait_for_log(&cp.process, &["configuration reloaded", "SIGHUP"], 1).await;
    assert_eq!(list_nodes(&cp, OPERATOR_TOKEN).await, Ok(()));
}

#[tokio::test]
async fn a_broken_control_plane_config_leaves_the_old_one_serving_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("control.toml");
    std::fs::write(&config, "[store]\ndial_timeout_ms = 2000\n").unwrap();
    let cp = dev_control_plane(dir.path(), &config).await;
    let tokens = dir.path().join("tokens.toml");

    std::fs::write(&config, "[store]\ndial_timeout_ms = 5\n").unwrap();
    let refused = ["configuration reload refused", "store.dial_timeout_ms"];
    wait_for_log(&cp.process, &refused, 1).await;
    assert!(
        cp.process.output().contains("= 5"),
        "the bad value is not named: {}",
        cp.process.output()
    );
    // The tokens file changes too, but the reload stays refused as a whole.
    std::fs::write(&tokens, tokens_file_text() + &added_token_entry()).unwrap();
    wait_for_log(&cp.process, &refused, 2).await;
    assert_eq!(
        list_nodes(&cp, ADDED_TOKEN).await,
        Err(tonic::Code::Unauthenticated),
        "a refused reload applied the tokens file"
    );
    assert_eq!(
        list_nodes(&cp, OPERATOR_TOKEN).await,
        Ok(()),
        "the old tokens stopped working"
    );
    assert_eq!(
        cp.metric("meridian_control_config_last_reload_successful")
            .await,
        0.0
    );
    // The event is stored right after the log line: poll for it.
    let started = tokio::time::Instant::now();
    loop {
        let (status, stdout, stderr) = run_to_completion(
            "meridianctl",
            &[
                "--control-plane",
                &cp.url(),
                "--token",
                OPERATOR_TOKEN,
                "-o",
                "json",
                "events",
                "--kind",
                "configReloadFailed",
            ],
        );
        assert!(status.success(), "{stderr}");
        if stdout.contains("store.dial_timeout_ms") && stdout.contains("replica/cp-reload") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no configReloadFailed event naming the field: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Fixed: applies, and a setting that takes a restart is named.
    std::fs::write(&config, "[store]\ndial_timeout_ms = 3000\n").unwrap();
    wait_for_answer(&cp, ADDED_TOKEN, Ok(())).await;
    wait_for_log(
        &cp.process,
        &[
            "take effect after a restart",
            "store.dial_timeout_ms: 2000 → 3000",
        ],
        1,
    )
    .await;
    assert_eq!(
        cp.metric("meridian_control_config_last_reload_successful")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_broken_proxy_config_leaves_the_proxy_serving_and_names_the_field() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 100, &[]).await;
    let config = cluster.dir.path().join("proxy.toml");
    std::fs::write(&config, "max_message_bytes = 4194304\n").unwrap();
    let config_arg = config.display().to_string();
    let proxy = cluster
        .proxy_with_args(
            "proxy-reload",
            "eu-west",
            "eu-west-a",
            &["--config", &config_arg],
        )
        .await;
    wait_usable(&proxy, 1).await;
    let mut echo = EchoClient::new(channel(&proxy.url()).await);
    let say = || demo::SayRequest {
        text: "still here".into(),
        ..Default::default()
    };
    echo.say(say()).await.expect("a call through the proxy");

    std::fs::write(&config, "max_message_bytes = 10\n").unwrap();
    wait_for_log(
        &proxy.process,
        &["configuration reload refused", "max_message_bytes", "10"],
        1,
    )
    .await;
    echo.say(say())
        .await
        .expect("the proxy stopped serving after a refused reload");
    assert_eq!(http::get(proxy.admin, "/ready").await.unwrap().0, 200);
    assert_eq!(
        proxy
            .metric("meridian_proxy_config_reloads_total{result=\"refused\"}")
            .await,
        1.0
    );
    assert_eq!(
        proxy
            .metric("meridian_proxy_config_last_reload_successful")
            .await,
        0.0
    );

    std::fs::write(
        &config,
        "max_message_bytes = 4194304\nretry_buffer_call_bytes = 1048576\n",
    )
    .unwrap();
    wait_for_log(
        &proxy.process,
        &["take effect after a restart", "retry_buffer_call_bytes"],
        1,
    )
    .await;
    assert_eq!(
        proxy
            .metric("meridian_proxy_config_last_reload_successful")
            .await,
        1.0
    );
    echo.say(say()).await.expect("a call after the reload");
}
