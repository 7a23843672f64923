//! `meridianctl config get|set|validate`: the dynamic configuration every control-plane
//! replica follows.
//!
//! `set` and `validate` read the current configuration, apply the `KEY=VALUE`
//! assignments (see `config_keys`) and send the whole result, since the API takes whole
//! configurations. `set` passes the revision it read as `expected_revision`, so a change
//! made by someone else in between is refused instead of silently overwritten.

use clap::{Args, Subcommand};
use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::config_keys::{self, Assignment};
use super::{CtlError, Output, output};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the current configuration and its store revision.
    Get,
    /// Change configuration keys, e.g. `config set debounce_quiet_ms=200
    /// default_health_check.interval_ms=1000`; keys not named keep their values.
    Set(SetArgs),
    /// Check what `config set` with these assignments would do, without applying it;
    /// prints each problem and exits non-zero if the result is invalid.
    Validate {
        /// KEY=VALUE assignments; keys are the DynamicConfig field names.
        #[arg(value_name = "KEY=VALUE", required = true)]
        assignments: Vec<Assignment>,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// KEY=VALUE assignments; keys are the DynamicConfig field names, with nested
    /// health-check defaults as default_health_check.FIELD.
    #[arg(value_name = "KEY=VALUE", required = true)]
    assignments: Vec<Assignment>,
    /// Validate and show what would be applied, without applying it.
    #[arg(long)]
    dry_run: bool,
    /// Apply only if the stored configuration is still at this revision (default: the
    /// revision just read; 0 skips the check).
    #[arg(long, value_name = "N")]
    expected_revision: Option<u64>,
}

pub(super) async fn run(
    mut admin: Admin,
    command: ConfigCommand,
    format: Output,
) -> Result<(), CtlError> {
    let current = admin
        .get_config(pb::GetConfigRequest {})
        .await?
        .into_inner();
    match command {
        ConfigCommand::Get => print_config(&current, format),
        ConfigCommand::Set(args) => {
            let request = pb::UpdateConfigRequest {
                config: Some(assigned(&current, &args.assignments)),
                dry_run: args.dry_run,
                expected_revision: args.expected_revision.unwrap_or(current.revision),
            };
            let updated = admin.update_config(request).await?.into_inner();
            print_config(&updated, format)
        }
        ConfigCommand::Validate { assignments } => {
            let request = pb::ValidateConfigRequest {
                config: Some(assigned(&current, &assignments)),
            };
            let verdict = admin.validate_config(request).await?.into_inner();
            print_verdict(&verdict, format)?;
            if verdict.valid {
                Ok(())
            } else {
                Err(CtlError::InvalidConfig {
                    count: verdict.errors.len(),
                })
            }
        }
    }
}

fn assigned(current: &pb::ConfigResponse, assignments: &[Assignment]) -> pb::DynamicConfig {
    let mut config = current.config.clone().unwrap_or_default();
    for assignment in assignments {
        assignment.apply(&mut config);
    }
    config
}

fn print_config(response: &pb::ConfigResponse, format: Output) -> Result<(), CtlError> {
    let config = response.config.clone().unwrap_or_default();
    match format {
        Output::Table => {
            let mut text: String = config_keys::entries(&config)
                .into_iter()
                .map(|(key, value)| format!("{key} = {value}\n"))
                .collect();
            text.push_str(&format!("revision = {}\n", response.revision));
            if !response.applied {
                text.push_str("(dry run: not applied)\n");
            }
            output::emit(&text)
        }
        Output::Json => {
            let mut object = config_keys::to_json(&config);
            object.insert("revision".into(), json!(response.revision));
            object.insert("applied".into(), json!(response.applied));
            output::emit_json(&Value::Object(object))
        }
    }
}

fn print_verdict(verdict: &pb::ValidateConfigResponse, format: Output) -> Result<(), CtlError> {
    match format {
        Output::Table if verdict.valid => output::emit("valid\n"),
        Output::Table => output::emit(
            &verdict
                .errors
                .iter()
                .map(|e| format!("{}: {}\n", e.field, e.message))
                .collect::<String>(),
        ),
        Output::Json => {
            let errors: Vec<Value> = verdict
                .errors
                .iter()
                .map(|e| json!({ "field": e.field, "message": e.message }))
                .collect();
            output::emit_json(&json!({ "valid": verdict.valid, "errors": errors }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::tests::parse;
    use crate::ctl::{Command, Noun};

    #[test]
    fn set_parses_assignments_and_flags() {
        let args = parse(
            "config set debounce_quiet_ms=200 default_health_check.interval_ms=1000 \
             --dry-run --expected-revision 12",
        )
        .expect("parses");
        let Command::Config(Noun {
            verb: Some(ConfigCommand::Set(set)),
        }) = args.command
        else {
            panic!("parsed as {:?}", args.command);
        };
        assert!(set.dry_run);
        assert_eq!(set.expected_revision, Some(12));
        let current = pb::ConfigResponse {
            config: Some(pb::DynamicConfig {
                flap_threshold: 9,
                ..Default::default()
            }),
            revision: 12,
            applied: true,
        };
        let config = assigned(&current, &set.assignments);
        assert_eq!(config.debounce_quiet_ms, 200);
        assert_eq!(config.flap_threshold, 9, "keys not named keep their values");
        assert_eq!(
            config.default_health_check.map(|h| h.interval_ms),
            Some(1000)
        );
    }

    #[test]
    fn an_unknown_key_fails_while_parsing_the_command_line() {
        let err = parse("config set nope=1").expect_err("unknown key");
        let message = err.to_string();
        assert!(message.contains("unknown configuration key"), "{message}");
        assert!(message.contains("debounce_quiet_ms"), "{message}");
    }

    #[test]
    fn set_needs_an_assignment() {
        parse("config set").expect_err("no assignment");
    }
}
