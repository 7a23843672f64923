//! Manual scaling end to end: a control plane on real etcd started with
//! `--scaling-exec-allow` for two scripts; `ScaleService` records the operator's decision,
//! runs the service's exec actuator (which records the desired count and environment it
//! was given) and shows in `ListScaling` and the events; bounds hold without `force`; a
//! failing script becomes `scalingFailed`; a command outside the allowlist is refused.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use meridian_proto::v1 as pb;
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, VIEWER_TOKEN,
    authorized,
};
use meridian_tests::process::run_to_completion;

const ECHO: &str = "demo.v1.Echo";

/// An executable script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec_policy(command: &Path) -> pb::ScalingPolicy {
    pb::ScalingPolicy {
        min_nodes: 1,
        max_nodes: 5,
        cooldown_ms: 60_000,
        actuator: Some(pb::ScalingActuator {
            kind: Some(pb::scaling_actuator::Kind::Exec(pb::ExecActuator {
                command: command.to_str().unwrap().into(),
                args: vec!["--namespace=prod".into()],
                timeout_ms: 10_000,
            })),
        }),
        ..Default::default()
    }
}

fn scale(desired: u32, reason: &str, force: bool) -> pb::ScaleServiceRequest {
    pb::ScaleServiceRequest {
        service: ECHO.into(),
        target: Some(pb::scale_service_request::Target::DesiredNodes(desired)),
        reason: reason.into(),
        force,
    }
}

async fn events(cp: &ControlPlaneProcess, kind: &str) -> Vec<pb::Event> {
    let request = pb::WatchEventsRequest {
        since_seq: 0,
        follow: false,
        kinds: vec![kind.into()],
    };
    let mut stream = cp
        .admin()
        .await
        .watch_events(authorized(request, VIEWER_TOKEN))
        .await
        .expect("watching events")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.expect("event stream") {
        events.push(event);
    }
    events
}

#[tokio::test]
async fn scale_service_runs_the_allowed_actuator_and_records_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("actuated");
    let ok = script(
        dir.path(),
        "scale-ok.sh",
        &format!(
            "cat > {out}.json\n\
             echo \"$MERIDIAN_SCALE_SERVICE $MERIDIAN_SCALE_CURRENT $MERIDIAN_SCALE_DESIRED \
             $MERIDIAN_SCALE_SOURCE $MERIDIAN_SCALE_RULE $1\" >> {out}.env",
            out = out.display()
        ),
    );
    let failing = script(
        dir.path(),
        "scale-fail.sh",
        "echo 'deployments.apps \"echo\" is forbidden' >&2\nexit 2",
    );
    let etcd = EtcdCluster::single().await.expect("starting etcd");
    let extra = ExtraSettings {
        args: vec![
            "--scaling-exec-allow".into(),
            ok.to_str().unwrap().into(),
            "--scaling-exec-allow".into(),
            failing.to_str().unwrap().into(),
        ],
        ..Default::default()
    };
    let cp = ControlPlaneProcess::start_with(
        ControlPlaneOptions {
            etcd_endpoints: &etcd.endpoints(),
            prefix: "/meridian/",
            replica: "cp-a",
            election_ttl_seconds: 5,
            dir: dir.path(),
        },
        &extra,
    )
    .await;
    cp.create_region("prod", "eu-west", (53.35, -6.26), &["eu-west-a"])
        .await;
    // The nodes' addresses have nothing listening: keep them unchecked (usable).
    cp.slow_health_checks().await;
    let mut admin = cp.admin().await;
    for id in ["eu-1", "eu-2"] {
        let node = pb::Node {
            id: id.into(),
            address: "127.0.0.1:1".into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            services: vec![ECHO.into()],
            ..Default::default()
        };
        let request = pb::RegisterNodeRequest {
            node: Some(node),
            replace: true,
        };
        admin
            .register_node(authorized(request, OPERATOR_TOKEN))
            .await
            .expect("registering a node");
    }
    let request = pb::UpsertServicePolicyRequest {
        policy: Some(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            ..Default::default()
        }),
    };
    admin
        .upsert_service_policy(authorized(request, OPERATOR_TOKEN))
        .await
        .expect("creating the service policy");

    // A command outside the allowlist is refused, by both ways of setting a policy.
    let refused = admin
        .set_scaling_policy(authorized(
            pb::SetScalingPolicyRequest {
                service: ECHO.into(),
                policy: Some(exec_policy(Path::new("/bin/sh"))),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect_err("/bin/sh is not allowed");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("--scaling-exec-allow"),
        "{}",
        refused.message()
    );
    let refused = admin
        .upsert_service_policy(authorized(
            pb::UpsertServicePolicyRequest {
                policy: Some(pb::ServicePolicy {
                    name: ECHO.into(),
                    federation: "prod".into(),
                    scaling: Some(exec_policy(Path::new("/bin/sh"))),
                    ..Default::default()
                }),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect_err("/bin/sh is not allowed");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    admin
        .set_scaling_policy(authorized(
            pb::SetScalingPolicyRequest {
                service: ECHO.into(),
                policy: Some(exec_policy(&ok)),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("an allowed exec actuator");

    // An operator decision runs the actuator with the desired count.
    let decision = admin
        .scale_service(authorized(scale(4, "load test", false), OPERATOR_TOKEN))
        .await
        .expect("scaling to 4")
        .into_inner();
    assert_eq!(
        (decision.current_nodes, decision.desired_nodes),
        (2, 4),
        "{decision:?}"
    );
    assert_eq!(
        (decision.source.as_str(), decision.rule.as_str()),
        ("manual", "manual")
    );
    assert_eq!(decision.decided_by, "tester");
    assert_eq!(decision.outcome, "executed", "{decision:?}");
    let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
    assert_eq!(env, "demo.v1.Echo 2 4 manual manual --namespace=prod\n");
    let stdin: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
    assert_eq!(stdin["desired_nodes"], 4);
    assert_eq!(stdin["reason"], "load test");

    // Outside the bounds only with force.
    let refused = admin
        .scale_service(authorized(scale(9, "too many", false), OPERATOR_TOKEN))
        .await
        .expect_err("9 is above max_nodes 5");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("max_nodes 5"),
        "{}",
        refused.message()
    );
    let refused = admin
        .scale_service(authorized(scale(3, "no target", false), VIEWER_TOKEN))
        .await
        .expect_err("a viewer may not scale");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let forced = admin
        .scale_service(authorized(scale(9, "burst", true), OPERATOR_TOKEN))
        .await
        .expect("forced above max")
        .into_inner();
    assert_eq!(forced.desired_nodes, 9);

    // ListScaling: newest first, with the cooldown the last change started.
    let listed = admin
        .list_scaling(authorized(
            pb::ListScalingRequest {
                service: ECHO.into(),
            },
            VIEWER_TOKEN,
        ))
        .await
        .expect("listing scaling")
        .into_inner();
    let service = &listed.services[0];
    let desired: Vec<u32> = service.history.iter().map(|d| d.desired_nodes).collect();
    assert_eq!(desired, [9, 4]);
    assert!(
        service.history.iter().all(|d| d.outcome == "executed"),
        "{:?}",
        service.history
    );
    assert!(
        service.cooldown_until.is_some(),
        "a change starts the cooldown"
    );

    let decided = events(&cp, "scalingDecided").await;
    let executed = events(&cp, "scalingExecuted").await;
    assert_eq!((decided.len(), executed.len()), (2, 2));
    assert!(
        decided
            .iter()
            .all(|e| e.subject == "service/demo.v1.Echo" && e.cause == "operator:tester"),
        "{decided:?}"
    );

    // A failing actuator: the decision stands, its outcome is failed with the script's
    // words, and scalingFailed is recorded.
    admin
        .set_scaling_policy(authorized(
            pb::SetScalingPolicyRequest {
                service: ECHO.into(),
                policy: Some(exec_policy(&failing)),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("another allowed exec actuator");
    let failed = admin
        .scale_service(authorized(scale(3, "shrink", false), OPERATOR_TOKEN))
        .await
        .expect("the decision is recorded even if the actuator fails")
        .into_inner();
    assert_eq!(failed.outcome, "failed", "{failed:?}");
    assert!(
        failed.outcome_detail.contains("is forbidden") && failed.outcome_detail.contains('2'),
        "{}",
        failed.outcome_detail
    );
    let failures = events(&cp, "scalingFailed").await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].message.contains("retried"), "{failures:?}");

    // meridianctl shows the same history.
    let url = cp.url();
    let (status, stdout, stderr) = run_to_completion(
        "meridianctl",
        &[
            "--control-plane",
            &url,
            "--token",
            VIEWER_TOKEN,
            "-o",
            "json",
            "scaling",
            "list",
            ECHO,
        ],
    );
    assert!(status.success(), "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let history = listed[0]["history"].as_array().unwrap();
    let outcomes: Vec<&str> = history
        .iter()
        .map(|d| d["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["failed", "executed", "executed"]);
}
