//! When to reload a process's configuration while it runs, and what a reload cannot
//! change: SIGHUP, or a change to one of the watched files (the config file, the tokens
//! file), looked at once a second by size and modification time as the TLS files are
//! ([`FileStamp`]: the same on every file system, and it follows a Kubernetes Secret's
//! symlink swap). Each binary decides what it re-reads and applies (its `reload` module);
//! this module only says when, and which settings differ that take a restart.
//!
//! A SIGHUP handler is installed when [`ReloadTriggers`] is made: from then on SIGHUP
//! reloads instead of ending the process (the default action of SIGHUP).

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Interval, MissedTickBehavior};

use crate::tls::FileStamp;

/// How often the watched files are looked at.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Why a reload happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Hangup,
    FilesChanged,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Hangup => "SIGHUP",
            Trigger::FilesChanged => "file change",
        }
    }
}

/// SIGHUP and changes to the watched files, as a stream of [`Trigger`]s.
pub struct ReloadTriggers {
    hangup: Signal,
    paths: Vec<PathBuf>,
    stamp: FileStamp,
    tick: Interval,
}

impl ReloadTriggers {
    /// Handles SIGHUP from now on and watches `paths`. Call inside the tokio runtime.
    pub fn new(paths: Vec<PathBuf>) -> std::io::Result<Self> {
        let hangup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(ReloadTriggers {
            hangup,
            stamp: FileStamp::of(&paths),
            paths,
            tick,
        })
    }

    /// Watches `paths` instead (a reload may name another tokens file), as they are now.
    pub fn watch(&mut self, paths: Vec<PathBuf>) {
        self.stamp = FileStamp::of(&paths);
        self.paths = paths;
    }

    /// The next reason to reload. The files are stamped anew each time, so a change
    /// already reloaded (by SIGHUP or by a previous poll) does not trigger again.
    pub async fn next(&mut self) -> Trigger {
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    self.stamp = FileStamp::of(&self.paths);
                    return Trigger::Hangup;
                }
                _ = self.tick.tick() => {
                    let stamp = FileStamp::of(&self.paths);
                    if stamp != self.stamp {
                        self.stamp = stamp;
                        return Trigger::FilesChanged;
                    }
                }
            }
        }
    }
}

/// The settings of a configuration that take a restart to change, each with its key (as
/// in the TOML file) and its value as text.
pub type FixedSettings = Vec<(&'static str, String)>;

/// The fixed settings whose value in `wanted` differs from the one `running`, each as
/// `key: running → wanted`.
pub fn fixed_changes(running: &FixedSettings, wanted: &FixedSettings) -> Vec<String> {
    running
        .iter()
        .zip(wanted)
        .filter(|((_, old), (_, new))| old != new)
        .map(|((key, old), (_, new))| format!("{key}: {old} → {new}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fixed_settings_that_differ_are_named() {
        let running: FixedSettings = vec![
            ("listen.grpc", "127.0.0.1:7700".into()),
            ("replica_id", "cp-1".into()),
        ];
        let wanted: FixedSettings = vec![
            ("listen.grpc", "127.0.0.1:7710".into()),
            ("replica_id", "cp-1".into()),
        ];
        assert_eq!(
            fixed_changes(&running, &wanted),
            ["listen.grpc: 127.0.0.1:7700 → 127.0.0.1:7710"]
        );
        assert!(fixed_changes(&running, &running).is_empty());
    }

    #[tokio::test]
    async fn a_changed_file_triggers_once_and_sighup_triggers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let mut triggers = ReloadTriggers::new(vec![path.clone()]).unwrap();
        std::fs::write(&path, "a = 22\n").unwrap();
        let first = tokio::time::timeout(Duration::from_secs(5), triggers.next()).await;
        assert_eq!(first.ok(), Some(Trigger::FilesChanged));
        let again = tokio::time::timeout(Duration::from_millis(2_500), triggers.next()).await;
        assert!(again.is_err(), "an unchanged file triggered a reload");

        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let hup = tokio::time::timeout(Duration::from_secs(5), triggers.next()).await;
        assert_eq!(hup.ok(), Some(Trigger::Hangup));
    }
}
