//! Autoscaling end to end, as an operator runs it: real etcd, a real control plane (two
//! for the leader test), demo nodes reporting ORCA utilisation (set by their
//! `DemoControl/SetUtilization` knob), a proxy carrying steady traffic so those reports
//! flow, and an exec actuator script that records what it was asked. Every test drives
//! utilisation through the knob, so the load on the shared cores stays light and the
//! figures the autoscaler sees are the ones the test set.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::demo_control_client::DemoControlClient;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized, channel,
};
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::{ProxyOptions, ProxyProcess};
use tokio::task::JoinHandle;

/// How often proxies report and the autoscaler ticks in these tests.
const REPORT_INTERVAL_MS: u32 = 500;
/// Longest a decision may take once its cause is in place: reports every 0.5 s, a tick
/// every 0.5 s, and room for a loaded machine.
const DECISION_DEADLINE: Duration = Duration::from_secs(20);

/// The actuator: appends "desired rule source" to `asked`, then exits with `exit`.
fn actuator_script(dir: &Path, exit: i32) -> (PathBuf, PathBuf) {
    let script = dir.join("scale.sh");
    let asked = dir.join("asked.txt");
    let text = format!(
        "#!/bin/sh\ncat > /dev/null\necho \"$MERIDIAN_SCALE_DESIRED $MERIDIAN_SCALE_RULE $MERIDIAN_SCALE_SOURCE\" >> '{}'\nexit {exit}\n",
        asked.display()
    );
    std::fs::write(&script, text).expect("writing the actuator script");
    let mut permissions = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).unwrap();
    (script, asked)
}

struct Scene {
    cluster: Cluster,
    /// A second replica on the same etcd, in the leader test.
    standby: Option<ControlPlaneProcess>,
    /// The service's nodes, in the order they were started (ids eu-1, eu-2, ...).
    nodes: Vec<(String, DemoNodeProcess)>,
    /// The utilisation every node reports.
    utilization: f64,
    _proxy: ProxyProcess,
    asked: PathBuf,
    traffic: JoinHandle<()>,
    /// Holds the actuator script and what it recorded.
    _scratch: tempfile::TempDir,
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.traffic.abort();
    }
}

impl Scene {
    /// Three nodes reporting `utilization`, a proxy, traffic, and Echo's policy with
    /// `scaling` plus the exec actuator.
    async fn start(scaling: pb::ScalingPolicy, utilization: f64, exit: i32) -> Scene {
        Self::start_replicas(scaling, utilization, exit, false).await
    }

    /// Like [`Scene::start`]; with `standby`, a second control plane `cp-b` follows
    /// `cp-a` (the leader) and the proxy knows both.
    async fn start_replicas(
        mut scaling: pb::ScalingPolicy,
        utilization: f64,
        exit: i32,
        standby: bool,
    ) -> Scene {
        let scratch = tempfile::tempdir().expect("temp dir");
        let (script, asked) = actuator_script(scratch.path(), exit);
        let extra = ExtraSettings {
            args: vec!["--scaling-exec-allow".into(), script.display().to_string()],
            ..Default::default()
        };
        let cluster = Cluster::start_with(&extra).await;
        cluster
            .cp
            .change_config(|c| c.load_report_interval_ms = REPORT_INTERVAL_MS)
            .await;
        let standby = match standby {
            false => None,
            true => Some(
                ControlPlaneProcess::start_with(
                    ControlPlaneOptions {
                        etcd_endpoints: &cluster.etcd.endpoints(),
                        prefix: "/meridian/",
                        replica: "cp-b",
                        election_ttl_seconds: 5,
                        dir: cluster.dir.path(),
                    },
                    &extra,
                )
                .await,
            ),
        };
        let mut nodes = Vec::new();
        for i in 1..=3 {
            nodes.push(start_node(&cluster, i, utilization).await);
        }
        scaling.actuator = Some(pb::ScalingActuator {
            kind: Some(pb::scaling_actuator::Kind::Exec(pb::ExecActuator {
                command: script.display().to_string(),
                args: Vec::new(),
                timeout_ms: 5_000,
            })),
        });
        cluster
            .set_policy(pb::ServicePolicy {
                name: ECHO.into(),
                federation: "prod".into(),
                scaling: Some(scaling),
                ..Default::default()
            })
            .await;
        let mut control_planes = vec![cluster.cp.url()];
        control_planes.extend(standby.iter().map(ControlPlaneProcess::url));
        let proxy = ProxyProcess::start(ProxyOptions {
            id: "proxy-eu",
            federation: "prod",
            region: "eu-west",
            zone: "eu-west-a",
            control_planes: &control_planes,
            dir: cluster.dir.path(),
            ports: None,
        })
        .await;
        proxy.wait_ready(Duration::from_secs(20)).await;
        wait_usable(&proxy, 3).await;
        let traffic = tokio::spawn(steady_traffic(proxy.url()));
        Scene {
            cluster,
            standby,
            nodes,
            utilization,
            _proxy: proxy,
            asked,
            traffic,
            _scratch: scratch,
        }
    }

    async fn set_utilization(&mut self, utilization: f64) {
        self.utilization = utilization;
        // All at once, so that few load reports see some nodes switched and some not.
        let switches = self.nodes.iter().map(|(_, node)| async move {
            DemoControlClient::new(node.channel().await)
                .set_utilization(demo::SetUtilizationRequest {
                    utilization: Some(utilization),
                })
                .await
                .expect("setting a node's utilisation");
        });
        futures::future::join_all(switches).await;
    }

    /// Does what the platform behind the actuator would: starts or removes nodes until
    /// the service has `desired`.
    async fn follow_actuator(&mut self, desired: u32) {
        while self.nodes.len() < desired as usize {
            let node = start_node(&self.cluster, self.nodes.len() + 1, self.utilization).await;
            self.nodes.push(node);
        }
        while self.nodes.len() > desired as usize {
            let (id, _node) = self.nodes.pop().expect("a node");
            self.cluster.deregister(&id).await;
        }
    }

    /// Waits until the actuator has been run `runs` times.
    async fn wait_asked(&self, runs: usize) {
        let started = Instant::now();
        while self.asked().len() < runs {
            assert!(
                started.elapsed() < DECISION_DEADLINE,
                "the actuator ran {} times, not {runs}; history: {:#?}",
                self.asked().len(),
                self.history().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The lines the actuator wrote, oldest first.
    fn asked(&self) -> Vec<String> {
        std::fs::read_to_string(&self.asked)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Echo's decisions, newest first.
    async fn history(&self) -> Vec<pb::ScalingDecision> {
        history(&self.cluster.cp).await
    }

    /// Waits for a decision newer than `seen` decisions and returns it.
    async fn next_decision(&self, seen: usize, what: &str) -> pb::ScalingDecision {
        let started = Instant::now();
        loop {
            let history = self.history().await;
            if history.len() > seen {
                return history[history.len() - seen - 1].clone();
            }
            assert!(
                started.elapsed() < DECISION_DEADLINE,
                "no decision {what} within {DECISION_DEADLINE:?}; history: {history:#?}\ncontrol plane:\n{}",
                self.cluster.cp.process.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Starts demo node eu-`i` reporting `utilization` and registers it for Echo.
async fn start_node(cluster: &Cluster, i: usize, utilization: f64) -> (String, DemoNodeProcess) {
    let id = format!("eu-{i}");
    let utilization = utilization.to_string();
    let node = cluster
        .node(
            &id,
            "eu-west",
            "eu-west-a",
            100,
            &["--utilization", &utilization],
        )
        .await;
    (id, node)
}

/// About 40 Echo calls a second through the proxy until aborted: responses carry the
/// nodes' ORCA reports to the proxy, whose load reports carry them on.
async fn steady_traffic(proxy_url: String) {
    let mut echo = EchoClient::new(channel(&proxy_url).await);
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    loop {
        tick.tick().await;
        let _ = echo
            .say(demo::SayRequest {
                text: "load".into(),
                ..Default::default()
            })
            .await;
    }
}

async fn history(cp: &ControlPlaneProcess) -> Vec<pb::ScalingDecision> {
    cp.admin()
        .await
        .list_scaling(authorized(
            pb::ListScalingRequest {
                service: ECHO.into(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("listing scaling")
        .into_inner()
        .services
        .into_iter()
        .next()
        .map(|s| s.history)
        .unwrap_or_default()
}

async fn event_kinds(cp: &ControlPlaneProcess, kinds: &[&str]) -> Vec<pb::Event> {
    use futures::StreamExt;
    let mut stream = cp
        .admin()
        .await
        .watch_events(authorized(
            pb::WatchEventsRequest {
                since_seq: 0,
                follow: false,
                kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("reading events")
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.expect("an event"));
    }
    events
}

fn decided_at(decision: &pb::ScalingDecision) -> SystemTime {
    let at = decision.decided_at.expect("decided_at");
    SystemTime::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32)
}

fn metric(decision: &pb::ScalingDecision, name: &str) -> pb::ScalingMetric {
    decision
        .metrics
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("decision without {name}: {decision:#?}"))
}

fn utilisation_policy() -> pb::ScalingPolicy {
    pb::ScalingPolicy {
        autoscale: true,
        min_nodes: 2,
        max_nodes: 5,
        target_utilization_percent: 50,
        tolerance_percent: 10,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rising_load_scales_up_and_falling_load_scales_down_only_after_its_window() {
    let mut scene = Scene::start(
        pb::ScalingPolicy {
            scale_down_stabilization_ms: 6_000,
            cooldown_ms: 3_000,
            ..utilisation_policy()
        },
        0.5,
        0,
    )
    .await;
    assert!(
        scene.history().await.is_empty(),
        "at the target nothing is decided"
    );

    // 90 % against 50 %: 3 × 0.9 / 0.5 = 5.4 → 6 nodes, held at max 5.
    let raised = Instant::now();
    scene.set_utilization(0.9).await;
    let up = scene.next_decision(0, "after utilisation rose").await;
    println!(
        "scale-up decided {:?} after the rise: {up:#?}",
        raised.elapsed()
    );
    assert_eq!((up.current_nodes, up.desired_nodes), (3, 5), "{up:#?}");
    assert_eq!(up.rule, "max", "{up:#?}");
    assert_eq!(up.source, "auto");
    let utilization = metric(&up, "utilization_percent");
    assert!((utilization.current - 90.0).abs() < 1.0, "{utilization:?}");
    assert_eq!(utilization.recommended_nodes, 6, "{utilization:?}");
    scene.wait_asked(1).await;
    assert_eq!(scene.asked(), vec!["5 max auto".to_owned()]);
    scene.follow_actuator(5).await;

    // Utilisation falls at once: the scale-down waits for the 6 s window (and the 3 s
    // cooldown inside it), then goes to min 2 (5 × 0.1 / 0.5 = 1).
    let lowered = Instant::now();
    let lowered_at = SystemTime::now();
    scene.set_utilization(0.1).await;
    // A load report taken while the nodes were being switched one by one can mix 90 % and
    // 10 % nodes; such a reading recommends an intermediate count (3), which the window
    // then holds as its highest, so the way down may pass through it before reaching 2.
    let mut decisions = 1;
    let down = loop {
        let down = scene
            .next_decision(decisions, "after utilisation fell")
            .await;
        decisions += 1;
        println!(
            "scale-down decided {:?} after the fall: {down:#?}",
            lowered.elapsed()
        );
        let waited = decided_at(&down)
            .duration_since(lowered_at)
            .unwrap_or_default();
        assert!(
            waited >= Duration::from_millis(5_500),
            "scaled down {waited:?} after the fall, inside the 6 s window: {down:#?}"
        );
        let after_up = decided_at(&down)
            .duration_since(decided_at(&up))
            .unwrap_or_default();
        assert!(
            after_up >= Duration::from_secs(3),
            "inside the cooldown: {after_up:?}"
        );
        assert!(
            down.desired_nodes < down.current_nodes && down.desired_nodes >= 2,
            "{down:#?}"
        );
        scene.wait_asked(decisions).await;
        scene.follow_actuator(down.desired_nodes).await;
        if down.desired_nodes == 2 {
            break down;
        }
    };
    assert_eq!(down.rule, "min", "{down:#?}");

    // At min 2 and below target nothing more is decided; each decision was carried
    // out once, with its events.
    tokio::time::sleep(Duration::from_secs(3)).await; // six ticks
    let asked = scene.asked();
    assert_eq!(asked.len(), decisions, "{asked:?}");
    assert_eq!(asked.first().map(String::as_str), Some("5 max auto"));
    assert_eq!(asked.last().map(String::as_str), Some("2 min auto"));
    assert_eq!(scene.history().await.len(), decisions);
    let cp = &scene.cluster.cp;
    assert_eq!(event_kinds(cp, &["scalingDecided"]).await.len(), decisions);
    assert_eq!(event_kinds(cp, &["scalingExecuted"]).await.len(), decisions);
    assert!(event_kinds(cp, &["scalingFailed"]).await.is_empty());
}

/// Ramps the nodes' utilisation from 10 % by 2 points every 0.5 s until a decision comes;
/// returns it and the utilisation set when it was decided.
async fn ramp_until_decided(scene: &mut Scene) -> (pb::ScalingDecision, f64) {
    let mut utilization = 0.10;
    let started = Instant::now();
    loop {
        scene.set_utilization(utilization).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(decision) = scene.history().await.into_iter().next() {
            println!(
                "decided after {:?} of ramp at set utilisation {:.0} %: {decision:#?}",
                started.elapsed(),
                utilization * 100.0
            );
            return (decision, utilization);
        }
        utilization += 0.02;
        assert!(utilization < 1.5, "no decision on the whole ramp");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rising_ramp_scales_up_before_the_target_with_predictive_scaling_and_after_without() {
    let predictive = pb::ScalingPolicy {
        predictive: Some(pb::PredictiveScaling {
            enabled: true,
            horizon_ms: 5_000,
            season_ms: 0,
        }),
        max_nodes: 10,
        min_nodes: 3,
        ..utilisation_policy()
    };
    let mut ahead = Scene::start(predictive, 0.1, 0).await;
    let (decision, _) = ramp_until_decided(&mut ahead).await;
    assert_eq!(decision.rule, "predictive", "{decision:#?}");
    let measured = metric(&decision, "utilization_percent");
    assert!(
        measured.current <= 55.0,
        "with predictive scaling the decision comes before the measured utilisation crosses 50 % + 10 %: {measured:?}"
    );
    assert!(measured.forecast.is_some_and(|f| f > 55.0), "{measured:?}");
    assert!(decision.desired_nodes > 3, "{decision:#?}");
    drop(ahead);

    let mut reactive = Scene::start(
        pb::ScalingPolicy {
            max_nodes: 10,
            min_nodes: 3,
            ..utilisation_policy()
        },
        0.1,
        0,
    )
    .await;
    let (decision, _) = ramp_until_decided(&mut reactive).await;
    assert_eq!(decision.rule, "target", "{decision:#?}");
    let measured = metric(&decision, "utilization_percent");
    assert!(
        measured.current > 55.0,
        "without predictive scaling only after the crossing: {measured:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_window_raises_the_minimum_at_its_start_and_releases_it_at_its_end() {
    // Open for 10 s from every 20th second (UTC), closed the next 10 s. The nodes sit at
    // the target's lower edge (5 nodes × 0.3 / 0.5 = 3), so only the window raises them.
    let mut scene = Scene::start(
        pb::ScalingPolicy {
            scale_down_stabilization_ms: 1_000,
            cooldown_ms: 1_000,
            schedules: vec![pb::ScheduledScaling {
                name: "burst-hours".into(),
                start: "*/20 * * * * *".into(),
                end: "10-59/20 * * * * *".into(),
                min_nodes: 5,
            }],
            max_nodes: 8,
            ..utilisation_policy()
        },
        0.3,
        0,
    )
    .await;
    let second_of = |at: SystemTime| {
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            % 20.0
    };
    // The first decision may come from a window already open when the policy was set;
    // follow the actuator until one raises the minimum at a window's start.
    let mut seen = 0;
    let raised = loop {
        let decision = scene
            .next_decision(seen, "raising to the schedule's minimum")
            .await;
        seen += 1;
        scene.wait_asked(seen).await;
        scene.follow_actuator(decision.desired_nodes).await;
        if decision.desired_nodes == 5 && second_of(decided_at(&decision)) < 4.0 {
            break decision;
        }
        assert!(
            seen < 6,
            "no raise at a window's start: {:#?}",
            scene.history().await
        );
    };
    assert_eq!(raised.rule, "schedule", "{raised:#?}");
    assert!(raised.reason.contains("burst-hours"), "{raised:#?}");

    let released = scene
        .next_decision(seen, "releasing at the window's end")
        .await;
    let second = second_of(decided_at(&released));
    println!("raised {raised:#?}\nreleased at second {second:.1}: {released:#?}");
    assert_eq!(
        (released.current_nodes, released.desired_nodes),
        (5, 3),
        "{released:#?}"
    );
    assert!(
        (10.0..16.0).contains(&second),
        "released at second {second:.1} of the 20 s cycle, not just after the end at 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_actuator_is_retried_after_the_cooldown_and_not_in_a_loop() {
    let mut scene = Scene::start(
        pb::ScalingPolicy {
            cooldown_ms: 2_000,
            ..utilisation_policy()
        },
        0.5,
        3,
    )
    .await;
    scene.set_utilization(0.9).await;
    scene.next_decision(0, "after utilisation rose").await;
    let watched = Instant::now();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let runs = scene.asked().len();
    let failed = event_kinds(&scene.cluster.cp, &["scalingFailed"]).await;
    println!(
        "{runs} actuator runs and {} scalingFailed events in {:?}",
        failed.len(),
        watched.elapsed()
    );
    assert!(runs >= 3, "retried after each 2 s cooldown: {runs} runs");
    assert!(
        runs <= 7,
        "retried in a loop: {runs} runs in ~9 s with a 2 s cooldown"
    );
    assert_eq!(failed.len(), runs, "one scalingFailed per failed run");
    assert!(
        event_kinds(&scene.cluster.cp, &["scalingExecuted"])
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_the_cooldown_and_the_history() {
    let mut scene = Scene::start_replicas(
        pb::ScalingPolicy {
            cooldown_ms: 60_000,
            max_nodes: 10,
            ..utilisation_policy()
        },
        0.5,
        0,
        true,
    )
    .await;
    assert!(
        scene.cluster.cp.is_leader().await,
        "cp-a started first and leads"
    );
    let manual = scene
        .cluster
        .cp
        .admin()
        .await
        .scale_service(authorized(
            pb::ScaleServiceRequest {
                service: ECHO.into(),
                target: Some(pb::scale_service_request::Target::DesiredNodes(4)),
                reason: "pre-warming for a launch".into(),
                force: false,
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("scaling by hand")
        .into_inner();
    assert_eq!(
        (manual.desired_nodes, manual.source.as_str()),
        (4, "manual")
    );
    // The autoscaler would now want 6 nodes (3 × 0.9 / 0.5), but the cooldown holds.
    scene.set_utilization(0.9).await;

    scene.cluster.cp.process.kill();
    let standby = scene.standby.take().expect("the standby replica");
    let started = Instant::now();
    while !standby.is_leader().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "cp-b did not take over; its output:\n{}",
            standby.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("cp-b leads {:?} after cp-a was killed", started.elapsed());

    let listed = standby
        .admin()
        .await
        .list_scaling(authorized(
            pb::ListScalingRequest {
                service: ECHO.into(),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("listing scaling on the new leader")
        .into_inner()
        .services
        .remove(0);
    assert_eq!(listed.history.len(), 1, "{listed:#?}");
    assert_eq!(listed.history[0].reason, "pre-warming for a launch");
    let until = listed
        .cooldown_until
        .expect("the cooldown survives the leader");
    let until = SystemTime::UNIX_EPOCH + Duration::new(until.seconds as u64, until.nanos as u32);
    let expected = decided_at(&manual) + Duration::from_secs(60);
    assert!(
        until
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration())
            < Duration::from_secs(1),
        "cooldown until {until:?}, expected {expected:?}"
    );

    // Reports reach the new leader and it would act, but not inside the cooldown.
    let started = Instant::now();
    let recommendation = loop {
        let recommendation = standby
            .admin()
            .await
            .recommend_scaling(authorized(
                pb::RecommendScalingRequest {
                    service: ECHO.into(),
                },
                OPERATOR_TOKEN,
            ))
            .await
            .expect("a recommendation from the new leader")
            .into_inner();
        if recommendation.rule == "cooldown" {
            break recommendation;
        }
        assert!(
            started.elapsed() < DECISION_DEADLINE,
            "the new leader does not hold the cooldown: {recommendation:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        recommendation.desired_nodes, recommendation.current_nodes,
        "{recommendation:#?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // six ticks of the new leader
    assert_eq!(
        history(&standby).await.len(),
        1,
        "decided inside the cooldown"
    );
    assert_eq!(scene.asked(), vec!["4 manual manual".to_owned()]);
}
