//! Reloading the control plane's configuration while it runs: on SIGHUP or when the
//! config file or the tokens file changes ([`ReloadTriggers`]), the configuration is read
//! again the way it was at start (file, then `MERIDIAN_*` variables and flags, then dev
//! mode's tokens) and validated whole, tokens file included, before anything is applied.
//!
//! | what | on reload |
//! | --- | --- |
//! | `[auth]`: `tokens_file` (its path and content), `tokens`, `certificates` | replaced at once: the next call is checked against the new set, and open streams (routing tables, load reports, keep-alives, events) whose credential it refuses end |
//! | `log.level` | applied at once (unless `RUST_LOG` is set, which wins) |
//! | everything else ([`ControlPlaneConfig::fixed_settings`]) | kept; a difference is logged, naming each key, until a restart |
//!
//! A file that does not parse or validate, or that would leave no credential at all where
//! some are in force (every call refused), changes nothing: the old configuration keeps
//! serving, the error (naming the field and, except for secrets, the value) is logged and
//! recorded as a `configReloadFailed` event, and `meridian_control_config_reloads_total
//! {result="refused"}` counts it. A reload that applies records `configReloaded`.

use std::path::PathBuf;
use std::sync::Arc;

use meridian_shared::Shutdown;
use meridian_shared::config::{ConfigError, ControlPlaneConfig};
use meridian_shared::domain::EventKind;
use meridian_shared::reload::{FixedSettings, ReloadTriggers, Trigger, fixed_changes};
use meridian_shared::telemetry::{self, LogLevelChange, TelemetryError};

use crate::auth::{AuthError, Authenticator, SharedAuthenticator};
use crate::events::EventLog;

/// Reads the configuration as at start: file, variables, flags, dev-mode tokens.
pub type LoadConfig = Box<dyn Fn() -> Result<ControlPlaneConfig, ConfigError> + Send + Sync>;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokens(#[from] AuthError),
    #[error(transparent)]
    LogLevel(#[from] TelemetryError),
    #[error(
        "the new configuration has no tokens and no client certificates, so every call would be refused \
         (a tokens file read mid-write?); the {tokens} tokens and {certificates} certificates in force stay; \
         fix the file and reload again"
    )]
    NoCredentials { tokens: usize, certificates: usize },
}

impl ReloadError {
    /// The configuration key at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            ReloadError::Config(e) | ReloadError::Tokens(AuthError::Invalid { source: e, .. }) => {
                e.field()
            }
            ReloadError::Tokens(_) => Some("auth.tokens_file"),
            ReloadError::LogLevel(_) => Some("log.level"),
            ReloadError::NoCredentials { .. } => Some("auth.tokens_file"),
        }
    }
}

/// What a reload applied.
#[derive(Debug)]
pub struct Applied {
    pub tokens: usize,
    pub certificates: usize,
    pub log_level: String,
    pub log_level_change: LogLevelChange,
    /// Fixed settings that differ from those in force, as `key: running → wanted`.
    pub needs_restart: Vec<String>,
}

/// Watches for reload triggers and applies what may change.
pub struct ConfigReloader {
    load: LoadConfig,
    config_file: Option<PathBuf>,
    triggers: ReloadTriggers,
    /// The fixed settings in force since start.
    running: FixedSettings,
    auth: SharedAuthenticator,
    replica: String,
}

impl ConfigReloader {
    /// Starts listening for SIGHUP and watching the files of `config` (the one in force).
    pub fn new(
        load: LoadConfig,
        config_file: Option<PathBuf>,
        config: &ControlPlaneConfig,
        auth: SharedAuthenticator,
    ) -> std::io::Result<Self> {
        let triggers = ReloadTriggers::new(watched(&config_file, config))?;
        Ok(ConfigReloader {
            load,
            config_file,
            triggers,
            running: config.fixed_settings(),
            auth,
            replica: config.replica_id.clone(),
        })
    }

    /// Reloads on every trigger until `shutdown`, recording each outcome in `events`.
    pub async fn run(mut self, events: EventLog, shutdown: Shutdown) {
        loop {
            let trigger = tokio::select! {
                _ = shutdown.wait() => return,
                trigger = self.triggers.next() => trigger,
            };
            let outcome = self.reload();
            self.report(trigger, outcome, &events).await;
        }
    }

    /// Reads, validates, then applies: nothing changes unless everything is valid.
    pub fn reload(&mut self) -> Result<Applied, ReloadError> {
        let config = (self.load)()?;
        let authenticator = Authenticator::load(&config.auth)?;
        let in_force = self.auth.load().counts();
        if authenticator.counts() == (0, 0) && in_force != (0, 0) {
            return Err(ReloadError::NoCredentials {
                tokens: in_force.0,
                certificates: in_force.1,
            });
        }
        let log_level_change = telemetry::set_log_level(&config.log)?;
        let (tokens, certificates) = authenticator.counts();
        self.auth.store(Arc::new(authenticator));
        self.triggers.watch(watched(&self.config_file, &config));
        Ok(Applied {
            tokens,
            certificates,
            log_level: config.log.level.clone(),
            log_level_change,
            needs_restart: fixed_changes(&self.running, &config.fixed_settings()),
        })
    }

    async fn report(
        &self,
        trigger: Trigger,
        outcome: Result<Applied, ReloadError>,
        events: &EventLog,
    ) {
        let subject = format!("replica/{}", self.replica);
        let cause = trigger.as_str().to_owned();
        let (result, kind, message) = match outcome {
            Ok(applied) => {
                tracing::info!(
                    trigger = trigger.as_str(),
                    tokens = applied.tokens,
                    certificates = applied.certificates,
                    log_level = %applied.log_level,
                    log_level_change = ?applied.log_level_change,
                    "configuration reloaded: credentials and log level applied"
                );
                let mut message = format!(
                    "reloaded: {} tokens, {} certificate identities, log level {:?}",
                    applied.tokens, applied.certificates, applied.log_level
                );
                if !applied.needs_restart.is_empty() {
                    let changed = applied.needs_restart.join("; ");
                    tracing::warn!(
                        settings = %changed,
                        "these settings changed in the configuration but cannot change while running; they take effect after a restart"
                    );
                    message.push_str(&format!("; takes a restart: {changed}"));
                }
                (1.0, EventKind::ConfigReloaded, message)
            }
            Err(e) => {
                tracing::error!(
                    trigger = trigger.as_str(),
                    field = e.field().unwrap_or("-"),
                    error = %e,
                    "configuration reload refused; the previous configuration stays in force (fix the file, then send SIGHUP or save it again)"
                );
                (0.0, EventKind::ConfigReloadFailed, e.to_string())
            }
        };
        let label = if result == 1.0 { "applied" } else { "refused" };
        metrics::counter!("meridian_control_config_reloads_total", "result" => label).increment(1);
        metrics::gauge!("meridian_control_config_last_reload_successful").set(result);
        events.record(kind, subject, message, cause).await;
    }
}

/// The files whose change triggers a reload: the config file and the tokens file.
fn watched(config_file: &Option<PathBuf>, config: &ControlPlaneConfig) -> Vec<PathBuf> {
    config_file
        .iter()
        .chain(config.auth.tokens_file.iter())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use meridian_shared::config::{Validate, load_file};

    use super::*;

    const OLD: &str = "old-operator-token-0123456789";
    const NEW: &str = "new-operator-token-0123456789";

    fn token_entry(token: &str) -> String {
        format!("[[tokens]]\nname = \"op\"\ntoken = \"{token}\"\nrole = \"operator\"\n")
    }

    fn knows(auth: &SharedAuthenticator, token: &str) -> bool {
        auth.load()
            .authenticate(Some(format!("Bearer {token}").as_bytes()), &[])
            .is_ok()
    }

    #[tokio::test]
    async fn a_valid_reload_swaps_the_tokens_and_a_bad_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (config_path, tokens_path) = (dir.path().join("cp.toml"), dir.path().join("t.toml"));
        let config_text = format!(
            "[store]\nbackend = \"embedded\"\n[auth]\ntokens_file = \"{}\"\n",
            tokens_path.display()
        );
        std::fs::write(&config_path, &config_text).unwrap();
        std::fs::write(&tokens_path, token_entry(OLD)).unwrap();
        let path = config_path.clone();
        let load: LoadConfig = Box::new(move || {
            let mut config: ControlPlaneConfig = load_file(&path)?;
            config.replica_id = "cp-test".into();
            config.validate()?;
            Ok(config)
        });
        let config = load().unwrap();
        let auth = SharedAuthenticator::new(Authenticator::load(&config.auth).unwrap());
        let mut reloader =
            ConfigReloader::new(load, Some(config_path.clone()), &config, auth.clone()).unwrap();
        assert!(knows(&auth, OLD) && !knows(&auth, NEW));

        std::fs::write(
            &tokens_path,
            token_entry(OLD) + &token_entry(NEW).replace("\"op\"", "\"op2\""),
        )
        .unwrap();
        let applied = reloader.reload().unwrap();
        assert_eq!(applied.tokens, 2);
        assert!(knows(&auth, OLD) && knows(&auth, NEW));

        std::fs::write(&tokens_path, token_entry("short")).unwrap();
        let refused = reloader.reload().unwrap_err();
        assert_eq!(refused.field(), Some("auth.tokens[0].token"), "{refused}");
        assert!(knows(&auth, NEW), "a refused reload changed the tokens");

        std::fs::write(&tokens_path, "").unwrap();
        let refused = reloader.reload().unwrap_err();
        assert!(
            matches!(refused, ReloadError::NoCredentials { tokens: 2, .. }),
            "{refused}"
        );
        assert!(
            knows(&auth, NEW),
            "an empty tokens file locked every caller out"
        );

        std::fs::write(&tokens_path, token_entry(NEW)).unwrap();
        std::fs::write(
            &config_path,
            config_text.clone() + "[election]\nlease_ttl_seconds = 1\n",
        )
        .unwrap();
        let refused = reloader.reload().unwrap_err();
        assert_eq!(
            refused.field(),
            Some("election.lease_ttl_seconds"),
            "{refused}"
        );
        assert!(
            knows(&auth, OLD),
            "a refused config file let the tokens file through"
        );

        std::fs::write(
            &config_path,
            config_text + "[listen]\ngrpc = \"127.0.0.1:7710\"\nhttp = \"127.0.0.1:7711\"\n",
        )
        .unwrap();
        let applied = reloader.reload().unwrap();
        assert!(knows(&auth, NEW) && !knows(&auth, OLD));
        assert_eq!(
            applied.needs_restart.len(),
            2,
            "{:?}",
            applied.needs_restart
        );
        assert!(
            applied.needs_restart[0].starts_with("listen.grpc: 127.0.0.1:7700 → 127.0.0.1:7710")
        );
    }
}
