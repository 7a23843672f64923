//! What actuators this control plane may run: the programs of `--scaling-exec-allow`
//! (exact absolute paths) and the URL prefixes of `--scaling-webhook-allow`. A policy
//! naming anything else is refused when it is set, and its actuation fails when it runs
//! (the list may have changed since). An empty list allows nothing of its kind: holding an
//! operator token must not be enough to run a program or reach an address from the
//! control plane's host.

use std::path::{Path, PathBuf};

use meridian_shared::domain::ScalingActuator;

/// The allowed exec commands and webhook URL prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    exec: Vec<PathBuf>,
    webhook: Vec<String>,
}

/// Why an actuator may not run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    #[error(
        "exec actuator {command:?} is not allowed on this control plane: start every replica with --scaling-exec-allow {command} (scaling.exec_allow in its config file)"
    )]
    Exec { command: String },
    #[error(
        "webhook actuator {url:?} is not allowed on this control plane: start every replica with a --scaling-webhook-allow prefix of it (scaling.webhook_allow in its config file)"
    )]
    Webhook { url: String },
}

impl Allowlist {
    /// `exec`: absolute paths; `webhook`: `http://` or `https://` URL prefixes (both
    /// validated by the configuration).
    pub fn new(exec: Vec<PathBuf>, webhook: Vec<String>) -> Self {
        Allowlist { exec, webhook }
    }

    /// Whether `actuator` may run.
    pub fn check(&self, actuator: &ScalingActuator) -> Result<(), NotAllowed> {
        match actuator {
            ScalingActuator::Exec(exec) => {
                let command = Path::new(&exec.command);
                let allowed = command.is_absolute() && self.exec.iter().any(|p| p == command);
                if allowed {
                    Ok(())
                } else {
                    Err(NotAllowed::Exec {
                        command: exec.command.clone(),
                    })
                }
            }
            ScalingActuator::Webhook(webhook) => {
                if self
                    .webhook
                    .iter()
                    .any(|prefix| url_within(&webhook.url, prefix))
                {
                    Ok(())
                } else {
                    Err(NotAllowed::Webhook {
                        url: webhook.url.clone(),
                    })
                }
            }
        }
    }
}

/// Whether `url` starts with `prefix` at a boundary: `http://hooks.example` covers
/// `http://hooks.example/scale` but not `http://hooks.example.evil.net/` nor
/// `http://hooks.example@evil.net/`. Whitespace and control characters are never allowed.
fn url_within(url: &str, prefix: &str) -> bool {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some(rest) = url.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?'])
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::{ExecActuator, WebhookActuator};

    use super::*;

    fn exec(command: &str) -> ScalingActuator {
        ScalingActuator::Exec(ExecActuator {
            command: command.into(),
            ..Default::default()
        })
    }

    fn webhook(url: &str) -> ScalingActuator {
        ScalingActuator::Webhook(WebhookActuator {
            url: url.into(),
            ..Default::default()
        })
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        let none = Allowlist::default();
        assert!(none.check(&exec("/usr/local/bin/scale")).is_err());
        assert!(none.check(&webhook("http://hooks.example/scale")).is_err());
    }

    #[test]
    fn exec_needs_the_exact_absolute_path() {
        let list = Allowlist::new(vec!["/usr/local/bin/scale".into()], Vec::new());
        assert!(list.check(&exec("/usr/local/bin/scale")).is_ok());
        for refused in [
            "/usr/local/bin/scale2",
            "/usr/local/bin/../bin/scale",
            "scale",
            "/bin/sh",
        ] {
            let err = list.check(&exec(refused)).unwrap_err();
            assert!(
                err.to_string().contains("--scaling-exec-allow"),
                "{refused}: {err}"
            );
        }
        assert!(
            list.check(&webhook("http://hooks.example/")).is_err(),
            "an exec entry allows no webhook"
        );
    }

    #[test]
    fn webhooks_need_an_allowed_prefix_at_a_boundary() {
        let list = Allowlist::new(
            Vec::new(),
            vec![
                "http://hooks.example".into(),
                "https://k8s.local/scale/".into(),
            ],
        );
        for allowed in [
            "http://hooks.example",
            "http://hooks.example/scale",
            "http://hooks.example?x=1",
            "https://k8s.local/scale/echo",
        ] {
            assert!(list.check(&webhook(allowed)).is_ok(), "{allowed}");
        }
        for refused in [
            "http://hooks.example.evil.net/",
            "http://hooks.example@evil.net/",
            "http://hooks.example:8080/",
            "https://k8s.local/other",
            "http://hooks.example/a b",
            "http://other/",
        ] {
            let err = list.check(&webhook(refused)).unwrap_err();
            assert!(
                err.to_string().contains("--scaling-webhook-allow"),
                "{refused}: {err}"
            );
        }
    }
}
