//! `meridianctl` commands run end to end against the scripted Admin server: what reaches
//! the server (token, requests built from flags) and how its answers and errors come back.

use clap::Parser;
use meridian_proto::v1 as pb;

use super::fake_admin::{FakeAdmin, stored_config};
use super::{CtlArgs, CtlError, run};

/// Runs `meridianctl` against `fake`; `command_line` is split on whitespace.
async fn meridianctl(fake: &FakeAdmin, command_line: &str) -> Result<(), CtlError> {
    let url = fake.url();
    let argv = ["meridianctl", "--control-plane", &url]
        .into_iter()
        .chain(command_line.split_whitespace());
    run(CtlArgs::try_parse_from(argv).expect("valid command line")).await
}

#[tokio::test]
async fn every_admin_call_carries_the_bearer_token() {
    let fake = FakeAdmin::start().await;
    meridianctl(&fake, "--token s3cret nodes list")
        .await
        .expect("nodes list");
    meridianctl(&fake, "--token s3cret config set flap_threshold=3")
        .await
        .expect("config set");
    assert_eq!(
        fake.methods(),
        ["list_nodes", "get_config", "update_config"]
    );
    for header in fake.authorizations() {
        assert_eq!(header.as_deref(), Some("Bearer s3cret"));
    }
}

#[tokio::test]
async fn a_noun_without_a_verb_lists() {
    let fake = FakeAdmin::start().await;
    let nouns = [
        "nodes",
        "federations",
        "regions",
        "services",
        "failover",
        "config",
        "scaling",
    ];
    for noun in nouns {
        // The fake answers some listings UNIMPLEMENTED: what counts is the call made.
        let _ = meridianctl(&fake, noun).await;
    }
    assert_eq!(
        fake.methods(),
        [
            "list_nodes",
            "list_federations",
            "list_regions",
            "list_services",
            "list_failovers",
            "get_config",
            "list_scaling"
        ]
    );
}

#[tokio::test]
async fn without_a_token_no_authorization_is_sent() {
    let fake = FakeAdmin::start().await;
    meridianctl(&fake, "proxies").await.expect("proxies");
    assert_eq!(fake.authorizations(), [None]);
}

#[tokio::test]
async fn node_filters_and_registrations_reach_the_server() {
    let fake = FakeAdmin::start().await;
    meridianctl(&fake, "nodes list --region eu-west --status quarantined")
        .await
        .expect("nodes list");
    let list: pb::ListNodesRequest = fake.request("list_nodes");
    assert_eq!(list.region, "eu-west");
    assert_eq!(list.status, pb::NodeStatus::Quarantined as i32);
    assert_eq!(list.federation, "", "filters not given are empty");

    // The fixture node is healthy; `unknown` must be filtered by the CLI, since the API
    // reads that wire value as "any status".
    meridianctl(&fake, "nodes list --status unknown")
        .await
        .expect("nodes list");
    let list: pb::ListNodesRequest = fake.request("list_nodes");
    assert_eq!(list.status, pb::NodeStatus::Unspecified as i32);

    meridianctl(
        &fake,
        "-o json nodes register n1 --address h:1 --federation prod --region eu-west \
         --zone eu-west-a --services a.v1.X,b.v1.Y --capacity 50 --label hw=arm64 --replace",
    )
    .await
    .expect("nodes register");
    let register: pb::RegisterNodeRequest = fake.request("register_node");
    assert!(register.replace);
    let node = register.node.expect("node sent");
    assert_eq!(node.services, ["a.v1.X", "b.v1.Y"]);
    assert_eq!((node.weight, node.capacity), (0, 50));
    assert_eq!(node.labels.get("hw").map(String::as_str), Some("arm64"));
}

#[tokio::test]
async fn rpc_errors_come_back_as_code_and_message() {
    let fake = FakeAdmin::start().await;
    let err = meridianctl(&fake, "nodes fail ghost --reason gone")
        .await
        .expect_err("unknown node");
    assert_eq!(
        err.to_string(),
        r#"NOT_FOUND: node "ghost" is not registered"#
    );
}

#[tokio::test]
async fn config_set_changes_the_read_config_at_the_read_revision() {
    let fake = FakeAdmin::start().await;
    meridianctl(
        &fake,
        "config set debounce_quiet_ms=200 default_health_check.interval_ms=1000",
    )
    .await
    .expect("config set");
    let update: pb::UpdateConfigRequest = fake.request("update_config");
    let config = update.config.expect("config sent");
    assert_eq!(config.debounce_quiet_ms, 200);
    assert_eq!(
        config.default_health_check.map(|h| h.interval_ms),
        Some(1000)
    );
    assert_eq!(
        config.flap_threshold, 9,
        "a key not named keeps its stored value"
    );
    assert_eq!(update.expected_revision, stored_config().revision);
    assert!(!update.dry_run);

    meridianctl(
        &fake,
        "config set flap_threshold=4 --dry-run --expected-revision 0",
    )
    .await
    .expect("dry run");
    let update: pb::UpdateConfigRequest = fake.request("update_config");
    assert!(update.dry_run);
    assert_eq!(update.expected_revision, 0);
}

#[tokio::test]
async fn config_validate_fails_when_the_server_finds_errors() {
    let fake = FakeAdmin::start().await;
    meridianctl(&fake, "config validate flap_threshold=5")
        .await
        .expect("valid");
    let err = meridianctl(&fake, "config validate flap_threshold=500")
        .await
        .expect_err("invalid");
    assert!(matches!(err, CtlError::InvalidConfig { count: 1 }), "{err}");
}

#[tokio::test]
async fn services_set_keeps_what_it_has_no_flag_for() {
    let fake = FakeAdmin::start().await;
    meridianctl(
        &fake,
        "services set demo.v1.Echo --federation prod --max-attempts 2 \
         --default-timeout-ms 1500",
    )
    .await
    .expect("services set");
    let policy = fake
        .request::<pb::UpsertServicePolicyRequest>("upsert_service_policy")
        .policy
        .expect("policy sent");
    assert_eq!(policy.algorithm, pb::Algorithm::Geographic as i32, "kept");
    let retry = policy.retry.expect("retry");
    assert_eq!((retry.max_attempts, retry.budget_percent), (2, 30));
    assert_eq!(policy.timeout.map(|t| t.default_timeout_ms), Some(1500));
}

#[tokio::test]
async fn events_print_until_the_stream_ends() {
    let fake = FakeAdmin::start().await;
    meridianctl(&fake, "-o json events --since 5 --kind nodeFailed")
        .await
        .expect("events");
    let watch: pb::WatchEventsRequest = fake.request("watch_events");
    assert_eq!(watch.since_seq, 5);
    assert!(!watch.follow);
    assert_eq!(watch.kinds, ["nodeFailed"]);
}

#[tokio::test]
async fn read_commands_print_in_both_formats() {
    let fake = FakeAdmin::start().await;
    for output in ["table", "json"] {
        for command in ["topology", "proxies", "config get"] {
            let command_line = format!("-o {output} {command}");
            meridianctl(&fake, &command_line).await.expect("prints");
        }
    }
    let topology: pb::GetTopologyRequest = fake.request("get_topology");
    assert_eq!(topology.federation, "");
}

#[tokio::test]
async fn metrics_sends_the_federation_filter_and_reports_an_unknown_one() {
    let fake = FakeAdmin::start().await;
    meridianctl(&fake, "metrics --federation prod")
        .await
        .expect("metrics");
    let request: pb::GetGlobalMetricsRequest = fake.request("get_global_metrics");
    assert_eq!(request.federation, "prod");
    meridianctl(&fake, "-o json metrics")
        .await
        .expect("metrics as json");
    let request: pb::GetGlobalMetricsRequest = fake.request("get_global_metrics");
    assert_eq!(request.federation, "", "no filter means every federation");

    let err = meridianctl(&fake, "metrics --federation nowhere")
        .await
        .expect_err("an unknown federation is an error");
    let CtlError::Rpc(status) = err else {
        panic!("expected the server's status, got {err:?}");
    };
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn scaling_commands_send_what_the_flags_say() {
    let fake = FakeAdmin::start().await;
    meridianctl(
        &fake,
        "scaling set demo.v1.Echo --max 10 --autoscale --webhook http://hooks.internal/scale \
         --token-file /etc/meridian/hook-token --attempts 5",
    )
    .await
    .expect("scaling set");
    let set: pb::SetScalingPolicyRequest = fake.request("set_scaling_policy");
    let policy = set.policy.expect("policy sent");
    assert_eq!(
        (policy.min_nodes, policy.max_nodes, policy.cooldown_ms),
        (2, 10, 30_000),
        "fields without a flag keep the listed values"
    );
    assert!(policy.autoscale);
    let Some(pb::scaling_actuator::Kind::Webhook(hook)) = policy.actuator.and_then(|a| a.kind)
    else {
        panic!("a webhook actuator was expected");
    };
    assert_eq!(hook.url, "http://hooks.internal/scale");
    assert_eq!(hook.bearer_token_file, "/etc/meridian/hook-token");
    assert_eq!(hook.max_attempts, 5);

    meridianctl(
        &fake,
        "-o json scaling scale demo.v1.Echo --up 2 --reason spike --force",
    )
    .await
    .expect("scaling scale");
    let scale: pb::ScaleServiceRequest = fake.request("scale_service");
    assert_eq!(
        scale.target,
        Some(pb::scale_service_request::Target::ChangeBy(2))
    );
    assert!(scale.force);
    assert_eq!(scale.reason, "spike");

    for output in ["table", "json"] {
        meridianctl(
            &fake,
            &format!("-o {output} scaling recommend demo.v1.Echo"),
        )
        .await
        .expect("recommend");
        meridianctl(&fake, &format!("-o {output} scaling list demo.v1.Echo"))
            .await
            .expect("list");
    }
    let recommend: pb::RecommendScalingRequest = fake.request("recommend_scaling");
    assert_eq!(recommend.service, "demo.v1.Echo");
}
