//! Logging a control plane that stays unreachable without a line per reconnect attempt.
//! Reconnects back off from 100 ms, so a control plane that is down would otherwise fill
//! the log with several warnings a second at first and one every few seconds after.
//!
//! The first failure is a warning (what failed, why, what the proxy keeps doing); the
//! attempts after it are logged at debug level only and summarised in one warning every
//! [`SUMMARY_INTERVAL`] (attempts failed, for how long, the last error); the first success
//! after failures is logged at info with the outage's length. Each stream the proxy keeps
//! to the control planes (routing tables, load reports) has its own [`OutageLog`].

use std::time::Duration;

use tokio::time::Instant;

/// How often a continuing outage is summarised.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(30);

/// What [`OutageLog::failed`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// The warning that starts an outage.
    FirstWarning,
    /// The periodic summary of a continuing outage.
    Summary,
    /// A debug line only.
    Quiet,
}

/// The state of one stream's outage.
#[derive(Debug)]
pub struct OutageLog {
    /// Names the stream in every line, e.g. "routing stream".
    stream: &'static str,
    /// What the proxy does meanwhile, e.g. "keeping the current table".
    meanwhile: &'static str,
    started: Option<Instant>,
    failures: u64,
    last_warning: Option<Instant>,
}

impl OutageLog {
    pub fn new(stream: &'static str, meanwhile: &'static str) -> Self {
        OutageLog {
            stream,
            meanwhile,
            started: None,
            failures: 0,
            last_warning: None,
        }
    }

    /// An attempt to `control_plane` failed with `error`; the next comes in `retry_in`.
    pub fn failed(&mut self, control_plane: &str, error: &str, retry_in: Duration) -> Logged {
        let now = Instant::now();
        let started = *self.started.get_or_insert(now);
        self.failures += 1;
        let (stream, meanwhile) = (self.stream, self.meanwhile);
        match self.last_warning {
            None => {
                self.last_warning = Some(now);
                tracing::warn!(%control_plane, %error, ?retry_in, "{stream} lost; {meanwhile} and reconnecting with backoff (further attempts are summarised every {}s)", SUMMARY_INTERVAL.as_secs());
                Logged::FirstWarning
            }
            Some(last) if now.duration_since(last) >= SUMMARY_INTERVAL => {
                self.last_warning = Some(now);
                let down_for = now.duration_since(started);
                tracing::warn!(
                    failed_attempts = self.failures,
                    down_for = ?down_for,
                    last_control_plane = %control_plane,
                    last_error = %error,
                    "{stream} still down; {meanwhile} (is a control plane running and reachable? --control-planes)"
                );
                Logged::Summary
            }
            Some(_) => {
                tracing::debug!(%control_plane, %error, ?retry_in, attempt = self.failures, "{stream}: reconnect attempt failed");
                Logged::Quiet
            }
        }
    }

    /// The stream to `control_plane` is up; ends the outage, if there was one.
    pub fn recovered(&mut self, control_plane: &str) {
        if let Some(started) = self.started.take() {
            tracing::info!(
                %control_plane,
                failed_attempts = self.failures,
                down_for = ?started.elapsed(),
                "{} restored", self.stream
            );
        }
        self.failures = 0;
        self.last_warning = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_outage_warns_once_then_summarises_every_interval() {
        let mut log = OutageLog::new("routing stream", "keeping the current table");
        let mut warnings = 0;
        // Two minutes of failures every 100 ms.
        for _ in 0..1_200 {
            if log.failed(
                "http://cp:7700",
                "connection refused",
                Duration::from_millis(100),
            ) != Logged::Quiet
            {
                warnings += 1;
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        assert_eq!(warnings, 1 + 3, "a first warning, then one per 30 s");
        log.recovered("http://cp:7700");
        assert_eq!(
            log.failed("http://cp:7700", "reset", Duration::ZERO),
            Logged::FirstWarning,
            "a new outage warns at once"
        );
    }
}
