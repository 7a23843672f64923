//! Shutdown on SIGTERM or SIGINT (Ctrl-C). One [`Shutdown`] per process, cloned into every
//! task that must stop: servers pass [`Shutdown::wait`] to their graceful-shutdown hook,
//! loops `select!` on it. The signal can also be triggered in code (tests, fatal errors).

use tokio_util::sync::CancellationToken;

/// A process-wide stop signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A signal that also fires on SIGTERM or SIGINT. Call inside the tokio runtime.
    pub fn on_signals() -> Self {
        let shutdown = Shutdown::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            let name = wait_for_signal().await;
            tracing::info!(signal = name, "shutting down");
            trigger.trigger();
        });
        shutdown
    }

    /// Fires the signal.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal fired.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// A future that owns its signal, for APIs wanting `'static` (e.g. `serve_with_shutdown`).
    pub fn wait_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop the process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::Shutdown;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let shutdown = Shutdown::new();
        let waiter = shutdown.clone();
        let task = tokio::spawn(async move { waiter.wait().await });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        task.await.unwrap();
        assert!(shutdown.is_triggered());
        shutdown.wait_owned().await;
    }
}
