//! Reloading the proxy's configuration while it runs: on SIGHUP or when the config file
//! or the token file changes ([`ReloadTriggers`]), the configuration is read again the
//! way it was at start (file, then `MERIDIAN_*` variables and flags) and validated, and
//! the token file read, before anything is applied.
//!
//! | what | on reload |
//! | --- | --- |
//! | `token_file` (its path and the token in it) | presented from the next connection to a control plane (streams open keep the old one) |
//! | `log.level` | applied at once (unless `RUST_LOG` is set, which wins) |
//! | everything else ([`ProxyConfig::fixed_settings`]) | kept; a difference is logged, naming each key, until a restart |
//!
//! A file that does not parse or validate changes nothing: the proxy keeps serving with
//! the old configuration, logs the error (naming the field and the value) and counts it
//! in `meridian_proxy_config_reloads_total{result="refused"}`;
//! `meridian_proxy_config_last_reload_successful` is 0 until a reload succeeds.

use std::path::PathBuf;

use meridian_shared::Shutdown;
use meridian_shared::config::{ConfigError, ProxyConfig};
use meridian_shared::credentials::{BearerAuth, CredentialError};
use meridian_shared::reload::{FixedSettings, ReloadTriggers, fixed_changes};
use meridian_shared::telemetry::{self, LogLevelChange, TelemetryError};

/// Reads the configuration as at start: file, variables, flags.
pub type LoadConfig = Box<dyn Fn() -> Result<ProxyConfig, ConfigError> + Send + Sync>;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("token_file: {0}")]
    Token(#[from] CredentialError),
    #[error(transparent)]
    LogLevel(#[from] TelemetryError),
}

impl ReloadError {
    /// The configuration key at fault, when one is.
    pub fn field(&self) -> Option<&str> {
        match self {
            ReloadError::Config(e) => e.field(),
            ReloadError::Token(_) => Some("token_file"),
            ReloadError::LogLevel(_) => Some("log.level"),
        }
    }
}

/// What a reload applied.
#[derive(Debug)]
pub struct Applied {
    pub token_changed: bool,
    pub log_level: String,
    pub log_level_change: LogLevelChange,
    /// Fixed settings that differ from those in force, as `key: running → wanted`.
    pub needs_restart: Vec<String>,
}

/// Watches for reload triggers and applies what may change.
pub struct ProxyReloader {
    load: LoadConfig,
    config_file: Option<PathBuf>,
    triggers: ReloadTriggers,
    /// The fixed settings in force since start.
    running: FixedSettings,
    /// The credential the subscription and the load reporter present.
    auth: BearerAuth,
}

impl ProxyReloader {
    /// Starts listening for SIGHUP and watching the files of `config` (the one in force).
    pub fn new(
        load: LoadConfig,
        config_file: Option<PathBuf>,
        config: &ProxyConfig,
        auth: BearerAuth,
    ) -> std::io::Result<Self> {
        let triggers = ReloadTriggers::new(watched(&config_file, config))?;
        Ok(ProxyReloader {
            load,
            config_file,
            triggers,
            running: config.fixed_settings(),
            auth,
        })
    }

    /// Reloads on every trigger until `shutdown`.
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            let trigger = tokio::select! {
                _ = shutdown.wait() => return,
                trigger = self.triggers.next() => trigger,
            };
            let succeeded = match self.reload() {
                Ok(applied) => {
                    tracing::info!(
                        trigger = trigger.as_str(),
                        token_changed = applied.token_changed,
                        log_level = %applied.log_level,
                        log_level_change = ?applied.log_level_change,
                        "configuration reloaded: token and log level applied"
                    );
                    if !applied.needs_restart.is_empty() {
                        tracing::warn!(
                            settings = %applied.needs_restart.join("; "),
                            "these settings changed in the configuration but cannot change while running; they take effect after a restart"
                        );
                    }
                    true
                }
                Err(e) => {
                    tracing::error!(
                        trigger = trigger.as_str(),
                        field = e.field().unwrap_or("-"),
                        error = %e,
                        "configuration reload refused; the previous configuration stays in force (fix the file, then send SIGHUP or save it again)"
                    );
                    false
                }
            };
            let result = if succeeded { "applied" } else { "refused" };
            metrics::counter!("meridian_proxy_config_reloads_total", "result" => result)
                .increment(1);
            metrics::gauge!("meridian_proxy_config_last_reload_successful").set(if succeeded {
                1.0
            } else {
                0.0
            });
        }
    }

    /// Reads, validates, then applies: nothing changes unless everything is valid.
    pub fn reload(&mut self) -> Result<Applied, ReloadError> {
        let config = (self.load)()?;
        let auth = BearerAuth::from_file_or_env(config.token_file.as_deref())?;
        let log_level_change = telemetry::set_log_level(&config.log)?;
        let token_changed = !self.auth.same_token(&auth);
        if token_changed {
            self.auth.replace_with(&auth);
        }
        self.triggers.watch(watched(&self.config_file, &config));
        Ok(Applied {
            token_changed,
            log_level: config.log.level.clone(),
            log_level_change,
            needs_restart: fixed_changes(&self.running, &config.fixed_settings()),
        })
    }
}

/// The files whose change triggers a reload: the config file and the token file.
fn watched(config_file: &Option<PathBuf>, config: &ProxyConfig) -> Vec<PathBuf> {
    config_file
        .iter()
        .chain(config.token_file.iter())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use meridian_shared::config::{Validate, load_file};

    use super::*;

    #[tokio::test]
    async fn a_new_token_file_is_swapped_in_and_a_bad_config_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (config_path, token_path) = (dir.path().join("p.toml"), dir.path().join("token"));
        let config_text = format!(
            "id = \"p1\"\nregion = \"eu\"\ntoken_file = \"{}\"\n",
            token_path.display()
        );
        std::fs::write(&config_path, &config_text).unwrap();
        std::fs::write(&token_path, "first-token-0123456789\n").unwrap();
        let path = config_path.clone();
        let load: LoadConfig = Box::new(move || {
            let config: ProxyConfig = load_file(&path)?;
            config.validate()?;
            Ok(config)
        });
        let config = load().unwrap();
        let auth = BearerAuth::from_file_or_env(config.token_file.as_deref()).unwrap();
        let client = auth.clone();
        let mut reloader =
            ProxyReloader::new(load, Some(config_path.clone()), &config, auth).unwrap();
        let second = BearerAuth::new("second-token-0123456789", "test").unwrap();

        std::fs::write(&token_path, "second-token-0123456789\n").unwrap();
        assert!(reloader.reload().unwrap().token_changed);
        assert!(
            client.same_token(&second),
            "the clients still hold the old token"
        );
        assert!(!reloader.reload().unwrap().token_changed);

        std::fs::write(&token_path, "third-token-0123456789\n").unwrap();
        std::fs::write(
            &config_path,
            config_text.clone() + "drain_grace_seconds = 0\n",
        )
        .unwrap();
        let refused = reloader.reload().unwrap_err();
        assert_eq!(refused.field(), Some("drain_grace_seconds"), "{refused}");
        assert!(refused.to_string().contains('0'), "{refused}");
        assert!(
            client.same_token(&second),
            "a refused reload changed the token"
        );

        std::fs::write(
            &config_path,
            config_text + "[listen]\nadmin = \"127.0.0.1:9901\"\n",
        )
        .unwrap();
        let applied = reloader.reload().unwrap();
        assert!(applied.token_changed);
        assert_eq!(
            applied.needs_restart,
            ["listen.admin: 127.0.0.1:7801 → 127.0.0.1:9901"]
        );
    }
}
