//! The exec actuator: runs a program (no shell) with the policy's arguments, the
//! decision as JSON on stdin and in `MERIDIAN_SCALE_*` environment variables, and kills it
//! when it outlives its timeout. Exit status 0 is success; otherwise the outcome names the
//! status and ends with the last bytes of what the program wrote to stderr.
//!
//! The program inherits the control plane's environment except its `MERIDIAN_*`
//! variables, which may hold credentials (an etcd password, say) the program has no use
//! for.

use std::process::Stdio;

use meridian_shared::domain::ExecActuator;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{Actuation, payload};
use crate::scaling::record::Decision;

/// How much of the program's stderr the outcome keeps (its end).
const STDERR_TAIL: usize = 512;

pub async fn run(exec: &ExecActuator, decision: &Decision) -> Actuation {
    let timeout = exec.effective_timeout();
    let mut command = Command::new(&exec.command);
    command
        .args(&exec.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MERIDIAN_") {
            command.env_remove(name);
        }
    }
    command
        .env("MERIDIAN_SCALE_SERVICE", &decision.service)
        .env("MERIDIAN_SCALE_CURRENT", decision.current_nodes.to_string())
        .env("MERIDIAN_SCALE_DESIRED", decision.desired_nodes.to_string())
        .env("MERIDIAN_SCALE_REASON", &decision.reason)
        .env("MERIDIAN_SCALE_SOURCE", decision.source.as_str())
        .env("MERIDIAN_SCALE_RULE", &decision.rule);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Actuation::Failed(format!("could not start {}: {e}", exec.command));
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let body = payload(decision);
        // A program that does not read its stdin is fine: the write fails or is
        // abandoned, the status decides.
        tokio::spawn(async move {
            let _ = stdin.write_all(&body).await;
        });
    }
    // Dropping the child on timeout kills it (kill_on_drop).
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Actuation::Failed(format!(
            "{} did not finish within {} ms and was killed",
            exec.command,
            timeout.as_millis()
        )),
        Ok(Err(e)) => Actuation::Failed(format!("waiting for {} failed: {e}", exec.command)),
        Ok(Ok(output)) if output.status.success() => {
            Actuation::Executed(format!("{} exited with {}", exec.command, output.status))
        }
        Ok(Ok(output)) => {
            let tail = stderr_tail(&output.stderr);
            let mut detail = format!("{} exited with {}", exec.command, output.status);
            if !tail.is_empty() {
                detail.push_str(": ");
                detail.push_str(&tail);
            }
            Actuation::Failed(detail)
        }
    }
}

/// The last [`STDERR_TAIL`] bytes of `stderr` (on a character boundary), trimmed.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    let mut start = text.len().saturating_sub(STDERR_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant, SystemTime};

    use super::*;
    use crate::scaling::record::{Outcome, Source};

    fn decision() -> Decision {
        Decision {
            seq: 3,
            service: "demo.v1.Echo".into(),
            current_nodes: 2,
            desired_nodes: 5,
            utilization_percent: Some(91.0),
            reason: "utilisation 91% > 70%".into(),
            source: Source::Auto,
            decided_by: "autoscaler".into(),
            decided_at: SystemTime::now(),
            rule: "target".into(),
            metrics: Vec::new(),
            outcome: Outcome::Pending,
            outcome_detail: String::new(),
        }
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("scale.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn exec(command: &Path, args: &[&str], timeout_ms: u32) -> ExecActuator {
        ExecActuator {
            command: command.to_str().unwrap().into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            timeout_ms,
        }
    }

    #[tokio::test]
    async fn the_program_gets_the_decision_on_stdin_in_its_environment_and_its_arguments() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = script(
            dir.path(),
            &format!(
                "cat > {out}.json\n\
                 echo \"$MERIDIAN_SCALE_SERVICE $MERIDIAN_SCALE_CURRENT $MERIDIAN_SCALE_DESIRED \
                 $MERIDIAN_SCALE_SOURCE $MERIDIAN_SCALE_RULE $1\" > {out}.env\n\
                 echo \"$MERIDIAN_SCALE_REASON\" >> {out}.env",
                out = out.display()
            ),
        );
        let result = run(&exec(&script, &["--namespace=prod"], 5_000), &decision()).await;
        assert!(matches!(result, Actuation::Executed(_)), "{result:?}");
        let env = std::fs::read_to_string(out.with_extension("env")).unwrap();
        assert_eq!(
            env,
            "demo.v1.Echo 2 5 auto target --namespace=prod\nutilisation 91% > 70%\n"
        );
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.with_extension("json")).unwrap()).unwrap();
        assert_eq!(json["desired_nodes"], 5);
        assert_eq!(json["service"], "demo.v1.Echo");
        assert_eq!(json["source"], "auto");
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_with_the_end_of_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let script = script(
            dir.path(),
            "i=0; while [ $i -lt 100 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done\n\
             echo 'deployment \"echo\" not found' >&2; exit 3",
        );
        let Actuation::Failed(detail) = run(&exec(&script, &[], 5_000), &decision()).await else {
            panic!("a failing program must fail the actuation");
        };
        assert!(detail.contains("exit status: 3"), "{detail}");
        assert!(
            detail.ends_with("deployment \"echo\" not found"),
            "{detail}"
        );
        assert!(detail.len() < STDERR_TAIL + 200, "only the tail: {detail}");
    }

    #[tokio::test]
    async fn a_program_over_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("still-running");
        let script = script(dir.path(), &format!("sleep 2; touch {}", marker.display()));
        let started = Instant::now();
        let Actuation::Failed(detail) = run(&exec(&script, &[], 200), &decision()).await else {
            panic!("a program over its timeout must fail the actuation");
        };
        assert!(started.elapsed() < Duration::from_millis(900));
        assert!(detail.contains("within 200 ms"), "{detail}");
        // Past the moment the script would have touched the marker.
        tokio::time::sleep(Duration::from_millis(1_300)).await;
        assert!(!marker.exists(), "the program was not killed");
    }

    #[tokio::test]
    async fn a_missing_program_fails_naming_it() {
        let Actuation::Failed(detail) = run(
            &exec(Path::new("/nonexistent/scale"), &[], 1_000),
            &decision(),
        )
        .await
        else {
            panic!("a missing program must fail the actuation");
        };
        assert!(detail.contains("/nonexistent/scale"), "{detail}");
    }
}
