//! `meridianctl scaling list|set|scale|recommend`: services' scaling policies and
//! decision history, changing a policy, an operator's scaling decision, and what the
//! autoscaler would do now.
//!
//! `scaling set` edits rather than replaces, like `services set`: it reads the service's
//! scaling policy, changes the fields given on the command line and writes it back.

use clap::{ArgGroup, Args, Subcommand};
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, text_cell};
use super::{CtlError, Output};
use crate::scaling::record::decision_json;

#[derive(Debug, Subcommand)]
pub enum ScalingCommand {
    /// Scaling policy, last decision and cooldown of every service (or one).
    List {
        /// Only this service; its history is printed too.
        service: Option<String>,
    },
    /// Change fields of a service's scaling policy; fields not given keep their values.
    Set(Box<SetArgs>),
    /// Record an operator's decision for a service and run its actuator.
    Scale(ScaleArgs),
    /// What the autoscaler would decide for a service now, and why, without acting.
    Recommend {
        /// The gRPC service, e.g. demo.v1.Echo.
        service: String,
    },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("autoscaling").args(["autoscale", "no_autoscale"])))]
#[command(group(ArgGroup::new("forecast").args(["predictive", "no_predictive"])))]
#[command(group(ArgGroup::new("actuator").args(["exec", "webhook", "no_actuator"])))]
#[command(group(ArgGroup::new("actuator_kind").args(["exec", "webhook"]).multiple(false)))]
pub struct SetArgs {
    /// The gRPC service, e.g. demo.v1.Echo; its policy must exist.
    pub service: String,
    /// Fewest nodes (0: no lower bound).
    #[arg(long, value_name = "N")]
    pub min: Option<u32>,
    /// Most nodes (0: no upper bound).
    #[arg(long, value_name = "N")]
    pub max: Option<u32>,
    /// Target utilisation, percent (0: 70 unless another target is set).
    #[arg(long, value_name = "PERCENT")]
    pub target_utilization: Option<u32>,
    /// Target calls per second per node (0: not a target).
    #[arg(long, value_name = "RATE")]
    pub target_calls_per_node: Option<f64>,
    /// Target requests in flight per node (0: not a target).
    #[arg(long, value_name = "N")]
    pub target_in_flight_per_node: Option<f64>,
    /// Target latency p99, milliseconds (0: not a target).
    #[arg(long, value_name = "MS")]
    pub target_p99_ms: Option<u32>,
    /// Tolerance around the targets, percent (0: 10).
    #[arg(long, value_name = "PERCENT")]
    pub tolerance: Option<u32>,
    /// How long a higher recommendation must hold before scaling up, ms (0: none).
    #[arg(long, value_name = "MS")]
    pub scale_up_window_ms: Option<u32>,
    /// How long a lower recommendation must hold before scaling down, ms (0: 300000).
    #[arg(long, value_name = "MS")]
    pub scale_down_window_ms: Option<u32>,
    /// No automatic change for this long after a change, ms (0: 60000).
    #[arg(long, value_name = "MS")]
    pub cooldown_ms: Option<u32>,
    /// Most nodes one automatic decision adds or removes (0: no limit).
    #[arg(long, value_name = "N")]
    pub step: Option<u32>,
    /// Let the leader's autoscaler decide.
    #[arg(long)]
    pub autoscale: bool,
    /// Only manual decisions and recommendations.
    #[arg(long)]
    pub no_autoscale: bool,
    /// Scale up ahead of a forecast of the metrics.
    #[arg(long)]
    pub predictive: bool,
    /// No forecasting.
    #[arg(long)]
    pub no_predictive: bool,
    /// How far ahead to forecast, ms (0: 60000).
    #[arg(long, value_name = "MS")]
    pub horizon_ms: Option<u32>,
    /// A seasonal period for the forecast, ms, e.g. 86400000 (0: none).
    #[arg(long, value_name = "MS")]
    pub season_ms: Option<u32>,
    /// A window raising the minimum: name=N,start=CRON,end=CRON,min=N (cron with
    /// seconds, UTC, e.g. start=0 0 8 * * Mon-Fri; quote it). Repeat for more; replaces
    /// the current windows. `--schedule none` removes them all.
    #[arg(long = "schedule", value_name = "WINDOW", value_parser = parse_schedule)]
    pub schedules: Vec<Option<pb::ScheduledScaling>>,
    /// Carry decisions out by running this program (an absolute path the control plane
    /// allows with --scaling-exec-allow).
    #[arg(long, value_name = "COMMAND")]
    pub exec: Option<String>,
    /// An argument of --exec. Repeat for more.
    #[arg(
        long = "arg",
        value_name = "ARG",
        requires = "exec",
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
    /// Carry decisions out by POSTing them to this URL (under a prefix the control plane
    /// allows with --scaling-webhook-allow).
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// File holding the webhook's bearer token (read by the control plane at each call).
    #[arg(long, value_name = "FILE", requires = "webhook")]
    pub token_file: Option<String>,
    /// Webhook attempts before the actuation fails (0: 3).
    #[arg(long, value_name = "N", requires = "webhook")]
    pub attempts: Option<u32>,
    /// Kill the program, or give up on a webhook attempt, after this long, ms (0: 30000
    /// for a program, 10000 for a webhook).
    #[arg(long, value_name = "MS", requires = "actuator_kind")]
    pub actuator_timeout_ms: Option<u32>,
    /// Remove the actuator: decisions are only recorded.
    #[arg(long)]
    pub no_actuator: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["desired", "up", "down"])))]
pub struct ScaleArgs {
    /// The gRPC service, e.g. demo.v1.Echo.
    pub service: String,
    /// Scale to exactly this many nodes.
    #[arg(long, value_name = "N")]
    pub desired: Option<u32>,
    /// Scale up by this many nodes from the current count.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub up: Option<i32>,
    /// Scale down by this many nodes from the current count.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub down: Option<i32>,
    /// Why (shown in events and the scaling history).
    #[arg(long)]
    pub reason: String,
    /// Go outside the policy's min/max.
    #[arg(long)]
    pub force: bool,
}

impl ScaleArgs {
    fn request(self) -> pb::ScaleServiceRequest {
        use pb::scale_service_request::Target;
        let target = match (self.desired, self.up, self.down) {
            (Some(n), _, _) => Target::DesiredNodes(n),
            (_, Some(up), _) => Target::ChangeBy(up),
            (_, _, Some(down)) => Target::ChangeBy(-down),
            _ => unreachable!("clap requires one of --desired, --up, --down"),
        };
        pb::ScaleServiceRequest {
            service: self.service,
            target: Some(target),
            reason: self.reason,
            force: self.force,
        }
    }
}

/// `name=office,start=0 0 8 * * Mon-Fri,end=0 0 18 * * Mon-Fri,min=6`; a comma not
/// followed by a known key belongs to the value before it (cron lists: `Mon,Wed`).
fn parse_schedule(text: &str) -> Result<Option<pb::ScheduledScaling>, String> {
    if text == "none" {
        return Ok(None);
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in text.split(',') {
        match part.split_once('=') {
            Some((key, value)) if ["name", "start", "end", "min"].contains(&key.trim()) => {
                pairs.push((key.trim().to_owned(), value.trim().to_owned()));
            }
            _ => match pairs.last_mut() {
                Some((_, value)) => {
                    value.push(',');
                    value.push_str(part.trim());
                }
                None => return Err(format!("expected KEY=VALUE, got {part:?}")),
            },
        }
    }
    let mut window = pb::ScheduledScaling::default();
    for (key, value) in pairs {
        match key.as_str() {
            "name" => window.name = value,
            "start" => window.start = value,
            "end" => window.end = value,
            "min" => {
                window.min_nodes = value
                    .parse()
                    .map_err(|_| format!("min: {value:?} is not a node count"))?
            }
            _ => unreachable!("only known keys are collected"),
        }
    }
    if window.start.is_empty() || window.end.is_empty() || window.min_nodes == 0 {
        return Err("a window needs start=CRON, end=CRON and min=N (and a name=)".into());
    }
    Ok(Some(window))
}

impl SetArgs {
    /// Applies the flags given to `policy`, leaving every other field as it is.
    fn apply(mut self, policy: &mut pb::ScalingPolicy) {
        let set = |target: &mut u32, value: Option<u32>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut policy.min_nodes, self.min);
        set(&mut policy.max_nodes, self.max);
        set(
            &mut policy.target_utilization_percent,
            self.target_utilization,
        );
        set(&mut policy.target_latency_p99_ms, self.target_p99_ms);
        set(&mut policy.tolerance_percent, self.tolerance);
        set(
            &mut policy.scale_up_stabilization_ms,
            self.scale_up_window_ms,
        );
        set(
            &mut policy.scale_down_stabilization_ms,
            self.scale_down_window_ms,
        );
        set(&mut policy.cooldown_ms, self.cooldown_ms);
        set(&mut policy.max_step, self.step);
        if let Some(rate) = self.target_calls_per_node {
            policy.target_calls_per_second_per_node = rate;
        }
        if let Some(in_flight) = self.target_in_flight_per_node {
            policy.target_in_flight_per_node = in_flight;
        }
        if self.autoscale || self.no_autoscale {
            policy.autoscale = self.autoscale;
        }
        let predictive = policy.predictive.get_or_insert_default();
        if self.predictive || self.no_predictive {
            predictive.enabled = self.predictive;
        }
        set(&mut predictive.horizon_ms, self.horizon_ms);
        set(&mut predictive.season_ms, self.season_ms);
        if !self.schedules.is_empty() {
            policy.schedules = std::mem::take(&mut self.schedules)
                .into_iter()
                .flatten()
                .collect();
        }
        self.apply_actuator(policy)
    }

    fn apply_actuator(self, policy: &mut pb::ScalingPolicy) {
        use pb::scaling_actuator::Kind;
        let timeout = self.actuator_timeout_ms;
        if self.no_actuator {
            policy.actuator = None;
        } else if let Some(command) = self.exec {
            policy.actuator = Some(pb::ScalingActuator {
                kind: Some(Kind::Exec(pb::ExecActuator {
                    command,
                    args: self.args,
                    timeout_ms: timeout.unwrap_or(0),
                })),
            });
        } else if let Some(url) = self.webhook {
            policy.actuator = Some(pb::ScalingActuator {
                kind: Some(Kind::Webhook(pb::WebhookActuator {
                    url,
                    bearer_token_file: self.token_file.unwrap_or_default(),
                    timeout_ms: timeout.unwrap_or(0),
                    max_attempts: self.attempts.unwrap_or(0),
                })),
            });
        }
    }
}

pub(super) async fn run(
    mut admin: Admin,
    command: ScalingCommand,
    format: Output,
) -> Result<(), CtlError> {
    match command {
        ScalingCommand::List { service } => {
            let one = service.is_some();
            let request = pb::ListScalingRequest {
                service: service.unwrap_or_default(),
            };
            let services = admin.list_scaling(request).await?.into_inner().services;
            print_services(&services, one, format)
        }
        ScalingCommand::Set(args) => {
            let service = args.service.clone();
            let request = pb::ListScalingRequest {
                service: service.clone(),
            };
            let mut policy = admin
                .list_scaling(request)
                .await?
                .into_inner()
                .services
                .into_iter()
                .find(|s| s.service == service)
                .and_then(|s| s.policy)
                .unwrap_or_default();
            args.apply(&mut policy);
            let request = pb::SetScalingPolicyRequest {
                service: service.clone(),
                policy: Some(policy),
            };
            let stored = admin.set_scaling_policy(request).await?.into_inner();
            let listed = pb::ServiceScaling {
                service,
                policy: stored.scaling,
                ..Default::default()
            };
            print_services(std::slice::from_ref(&listed), false, format)
        }
        ScalingCommand::Scale(args) => {
            let decision = admin.scale_service(args.request()).await?.into_inner();
            print_decision(&decision, format)
        }
        ScalingCommand::Recommend { service } => {
            let request = pb::RecommendScalingRequest { service };
            let decision = admin.recommend_scaling(request).await?.into_inner();
            print_decision(&decision, format)
        }
    }
}

fn print_services(
    services: &[pb::ServiceScaling],
    with_history: bool,
    format: Output,
) -> Result<(), CtlError> {
    match format {
        Output::Json => {
            output::emit_json(&Value::Array(services.iter().map(service_json).collect()))
        }
        Output::Table => {
            let mut text = services_table(services).render();
            if with_history && let Some(service) = services.first() {
                text.push('\n');
                text.push_str(&history_table(&service.history).render());
            }
            output::emit(&text)
        }
    }
}

fn services_table(services: &[pb::ServiceScaling]) -> Table {
    let mut table = Table::new(&[
        "SERVICE",
        "MIN",
        "MAX",
        "AUTOSCALE",
        "ACTUATOR",
        "LAST DECISION",
        "OUTCOME",
        "COOLDOWN UNTIL",
    ]);
    for s in services {
        let policy = s.policy.clone().unwrap_or_default();
        let last = s.history.first();
        table.push(vec![
            s.service.clone(),
            bound(policy.min_nodes),
            bound(policy.max_nodes),
            if policy.autoscale { "on" } else { "off" }.into(),
            actuator_cell(policy.actuator.as_ref()),
            last.map(|d| format!("{} -> {} ({})", d.current_nodes, d.desired_nodes, d.source))
                .unwrap_or_else(|| "-".into()),
            last.map(|d| d.outcome.clone())
                .unwrap_or_else(|| "-".into()),
            output::timestamp_cell(s.cooldown_until.as_ref()),
        ]);
    }
    table
}

fn history_table(history: &[pb::ScalingDecision]) -> Table {
    let mut table = Table::new(&[
        "DECIDED", "BY", "NODES", "RULE", "OUTCOME", "REASON", "DETAIL",
    ]);
    for d in history {
        table.push(vec![
            output::timestamp_cell(d.decided_at.as_ref()),
            text_cell(&d.decided_by),
            format!("{} -> {}", d.current_nodes, d.desired_nodes),
            d.rule.clone(),
            d.outcome.clone(),
            text_cell(&d.reason),
            text_cell(&d.outcome_detail),
        ]);
    }
    table
}

fn bound(n: u32) -> String {
    match n {
        0 => "-".into(),
        n => n.to_string(),
    }
}

fn actuator_cell(actuator: Option<&pb::ScalingActuator>) -> String {
    use pb::scaling_actuator::Kind;
    match actuator.and_then(|a| a.kind.as_ref()) {
        Some(Kind::Exec(e)) => text_cell(&format!("exec {}", e.command)),
        Some(Kind::Webhook(w)) => text_cell(&format!("webhook {}", w.url)),
        None => "-".into(),
    }
}

fn print_decision(decision: &pb::ScalingDecision, format: Output) -> Result<(), CtlError> {
    match format {
        Output::Json => output::emit_json(&decision_json(decision)),
        Output::Table => {
            let mut text = format!(
                "{}: {} -> {} nodes (rule {}, by {}): {}\noutcome: {}",
                decision.service,
                decision.current_nodes,
                decision.desired_nodes,
                decision.rule,
                text_cell(&decision.decided_by),
                text_cell(&decision.reason),
                decision.outcome,
            );
            if !decision.outcome_detail.is_empty() {
                text.push_str(&format!(" ({})", text_cell(&decision.outcome_detail)));
            }
            text.push('\n');
            if !decision.metrics.is_empty() {
                let mut table = Table::new(&["METRIC", "CURRENT", "TARGET", "FORECAST", "NODES"]);
                for m in &decision.metrics {
                    table.push(vec![
                        m.name.clone(),
                        format!("{:.2}", m.current),
                        format!("{:.2}", m.target),
                        m.forecast
                            .map(|f| format!("{f:.2}"))
                            .unwrap_or_else(|| "-".into()),
                        m.recommended_nodes.to_string(),
                    ]);
                }
                text.push('\n');
                text.push_str(&table.render());
            }
            output::emit(&text)
        }
    }
}

pub(crate) fn service_json(s: &pb::ServiceScaling) -> Value {
    json!({
        "service": s.service,
        "policy": policy_json(&s.policy.clone().unwrap_or_default()),
        "history": s.history.iter().map(decision_json).collect::<Vec<_>>(),
        "cooldown_until": output::timestamp_json(s.cooldown_until.as_ref()),
    })
}

fn policy_json(p: &pb::ScalingPolicy) -> Value {
    use pb::scaling_actuator::Kind;
    let predictive = p.predictive.unwrap_or_default();
    let actuator = match p.actuator.as_ref().and_then(|a| a.kind.as_ref()) {
        Some(Kind::Exec(e)) => json!({
            "exec": { "command": e.command, "args": e.args, "timeout_ms": e.timeout_ms }
        }),
        Some(Kind::Webhook(w)) => json!({
            "webhook": {
                "url": w.url,
                "bearer_token_file": w.bearer_token_file,
                "timeout_ms": w.timeout_ms,
                "max_attempts": w.max_attempts,
            }
        }),
        None => Value::Null,
    };
    let schedules: Vec<Value> = p
        .schedules
        .iter()
        .map(
            |w| json!({ "name": w.name, "start": w.start, "end": w.end, "min_nodes": w.min_nodes }),
        )
        .collect();
    json!({
        "min_nodes": p.min_nodes,
        "max_nodes": p.max_nodes,
        "target_utilization_percent": p.target_utilization_percent,
        "target_calls_per_second_per_node": p.target_calls_per_second_per_node,
        "target_in_flight_per_node": p.target_in_flight_per_node,
        "target_latency_p99_ms": p.target_latency_p99_ms,
        "tolerance_percent": p.tolerance_percent,
        "scale_up_stabilization_ms": p.scale_up_stabilization_ms,
        "scale_down_stabilization_ms": p.scale_down_stabilization_ms,
        "cooldown_ms": p.cooldown_ms,
        "max_step": p.max_step,
        "autoscale": p.autoscale,
        "predictive": {
            "enabled": predictive.enabled,
            "horizon_ms": predictive.horizon_ms,
            "season_ms": predictive.season_ms,
        },
        "schedules": schedules,
        "actuator": actuator,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Command, CtlArgs, Noun};
    use super::*;

    fn parse(argv: &[&str]) -> Result<ScalingCommand, clap::Error> {
        let args = CtlArgs::try_parse_from(["meridianctl", "scaling"].iter().chain(argv.iter()))?;
        match args.command {
            Command::Scaling(Noun {
                verb: Some(command),
            }) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn scale_needs_exactly_one_target_and_a_reason() {
        let ScalingCommand::Scale(scale) =
            parse(&["scale", "demo.v1.Echo", "--down", "2", "--reason", "night"]).unwrap()
        else {
            panic!("not scale");
        };
        let request = scale.request();
        assert_eq!(
            request.target,
            Some(pb::scale_service_request::Target::ChangeBy(-2))
        );
        assert!(parse(&["scale", "demo.v1.Echo", "--reason", "x"]).is_err());
        assert!(
            parse(&[
                "scale",
                "demo.v1.Echo",
                "--up",
                "1",
                "--desired",
                "3",
                "--reason",
                "x"
            ])
            .is_err()
        );
        assert!(parse(&["scale", "demo.v1.Echo", "--desired", "3"]).is_err());
        assert!(parse(&["scale", "demo.v1.Echo", "--up", "0", "--reason", "x"]).is_err());
    }

    #[test]
    fn schedules_keep_commas_inside_cron_fields() {
        let window =
            parse_schedule("name=office,start=0 0 8 * * Mon,Wed,end=0 0 18 * * Mon,Wed,min=6")
                .unwrap()
                .unwrap();
        assert_eq!(window.name, "office");
        assert_eq!(window.start, "0 0 8 * * Mon,Wed");
        assert_eq!(window.end, "0 0 18 * * Mon,Wed");
        assert_eq!(window.min_nodes, 6);
        assert_eq!(parse_schedule("none").unwrap(), None);
        assert!(parse_schedule("start=0 0 8 * * *,min=2").is_err(), "no end");
        assert!(parse_schedule("name=x,start=a,end=b,min=lots").is_err());
    }

    #[test]
    fn set_changes_only_the_fields_given() {
        let ScalingCommand::Set(set) = parse(&[
            "set",
            "demo.v1.Echo",
            "--max",
            "12",
            "--autoscale",
            "--exec",
            "/usr/local/bin/scale",
            "--arg",
            "--namespace=prod",
        ])
        .unwrap() else {
            panic!("not set");
        };
        let mut policy = pb::ScalingPolicy {
            min_nodes: 2,
            max_nodes: 4,
            cooldown_ms: 9_000,
            ..Default::default()
        };
        set.apply(&mut policy);
        assert_eq!((policy.min_nodes, policy.max_nodes), (2, 12));
        assert_eq!(policy.cooldown_ms, 9_000, "kept");
        assert!(policy.autoscale);
        let Some(pb::scaling_actuator::Kind::Exec(exec)) = policy.actuator.and_then(|a| a.kind)
        else {
            panic!("exec actuator expected");
        };
        assert_eq!(exec.command, "/usr/local/bin/scale");
        assert_eq!(exec.args, ["--namespace=prod"]);
        assert!(
            parse(&[
                "set",
                "demo.v1.Echo",
                "--exec",
                "/a",
                "--webhook",
                "http://h/"
            ])
            .is_err(),
            "one actuator"
        );
        assert!(parse(&["set", "demo.v1.Echo", "--token-file", "/t"]).is_err());
        assert!(
            parse(&["set", "demo.v1.Echo", "--actuator-timeout-ms", "5"]).is_err(),
            "a timeout belongs to --exec or --webhook"
        );
    }
}
