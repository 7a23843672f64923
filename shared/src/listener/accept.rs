//! Accepting TCP connections without spinning when `accept` fails. Out of file descriptors
//! (EMFILE, ENFILE), buffers (ENOBUFS) or memory, `accept` fails at once and keeps failing
//! until something closes; a loop that retries at once burns a core and starves the
//! connections that would free the descriptors. So each failure waits, 5 ms doubling to
//! 1 s, back to 5 ms after the next success; the warning is logged at most every 10 s with
//! the count of failures in between. Errors of one aborted connection (ECONNABORTED,
//! ECONNRESET) are skipped without waiting: they say nothing about the listener.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::ListenerMetrics;

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_secs(1);
const WARNING_EVERY: Duration = Duration::from_secs(10);

/// A listener whose `accept` backs off after failures.
pub struct BackoffAcceptor {
    listener: TcpListener,
    /// The listener's name in logs, e.g. `listen.grpc`.
    what: &'static str,
    pause: Duration,
    last_warning: Option<Instant>,
    unreported: u64,
    metrics: ListenerMetrics,
}

impl BackoffAcceptor {
    pub fn new(listener: TcpListener, what: &'static str, metrics: ListenerMetrics) -> Self {
        BackoffAcceptor {
            listener,
            what,
            pause: FIRST_PAUSE,
            last_warning: None,
            unreported: 0,
            metrics,
        }
    }

    /// The next connection. Cancel-safe: dropping the future loses no connection.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => {
                    self.pause = FIRST_PAUSE;
                    return accepted;
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(listener = self.what, error = %e, "a client left before its connection was accepted");
                }
                Err(e) => {
                    self.metrics.accept_errors.increment(1);
                    self.warn(&e);
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }

    fn warn(&mut self, error: &io::Error) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < WARNING_EVERY)
        {
            self.unreported += 1;
            return;
        }
        tracing::warn!(
            listener = self.what,
            error = %error,
            failures_since_last_warning = self.unreported,
            pause = ?self.pause,
            "cannot accept connections; pausing before the next try (out of file descriptors? raise `ulimit -n` or lower listener_limits.max_connections)"
        );
        self.last_warning = Some(now);
        self.unreported = 0;
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_errors_are_not_listener_failures() {
        assert!(is_connection_error(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24))); // EMFILE
    }
}
