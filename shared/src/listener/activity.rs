//! What a connection is doing, for the two limits that look at its calls: the idle
//! timeout (no call open for N seconds) and the rapid-reset defence (too many calls
//! cancelled by the client before their answer began).
//!
//! hyper does not tell a server how many streams a connection has open, so the server
//! counts them itself: a [`StreamGuard`] is made when a call starts, told when the answer
//! began ([`StreamGuard::answered`]) and dropped when the call ends — with the response
//! body, so a long server-streaming call keeps its connection busy. A guard dropped before
//! its answer began is a call the client reset (or a connection that went away): a
//! *premature reset*. h2 itself only bounds resets of streams not yet handed to the server
//! (`max_pending_accept_reset_streams`, 20 by default), which a client sending one
//! HEADERS + RST_STREAM pair at a time never reaches while every pair still starts a call
//! here and upstream. Like Envoy (`overload.premature_reset_*`), a connection is closed once
//! its premature resets pass `max_premature_resets` and are at least half of its calls, so
//! a busy client whose deadlines sometimes expire is not cut off.
//!
//! Counting is a few relaxed atomic adds on the connection's own counters: no lock, no
//! allocation per call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The calls of one connection.
#[derive(Debug)]
pub struct ConnectionActivity {
    /// Calls in progress (until their response body ended).
    open: AtomicUsize,
    /// Calls ever started.
    started: AtomicU64,
    /// Calls dropped before their answer began.
    premature_resets: AtomicU64,
    max_premature_resets: u64,
    /// Signalled once when the resets pass the limit.
    abusive: Notify,
    /// Whether `abusive` was signalled.
    marked: AtomicBool,
}

/// Anything that carries a connection's activity (the activity itself, or a server's
/// per-connection state that holds one), so a guard can share its `Arc`.
pub trait Tracked: Send + Sync + 'static {
    fn activity(&self) -> &ConnectionActivity;
}

impl Tracked for ConnectionActivity {
    fn activity(&self) -> &ConnectionActivity {
        self
    }
}

impl ConnectionActivity {
    pub fn new(max_premature_resets: u32) -> Self {
        ConnectionActivity {
            open: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            premature_resets: AtomicU64::new(0),
            max_premature_resets: u64::from(max_premature_resets),
            abusive: Notify::new(),
            marked: AtomicBool::new(false),
        }
    }

    /// Calls the client cancelled before their answer began, so far.
    pub fn premature_resets(&self) -> u64 {
        self.premature_resets.load(Ordering::Relaxed)
    }

    /// Calls open now.
    pub fn open_calls(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves once the connection's premature resets passed the limit (at once if they
    /// already did).
    pub async fn too_many_resets(&self) {
        self.abusive.notified().await
    }

    /// Resolves once the connection had no call open for `timeout`. Checks four times per
    /// `timeout`, so it resolves between `timeout` and 1.25 × `timeout` after the last
    /// call ended (or the connection opened).
    pub async fn idle_for(&self, timeout: Duration) {
        let period = (timeout / 4).max(Duration::from_millis(10));
        let mut seen = self.started.load(Ordering::Relaxed);
        let mut idle_since = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            let started = self.started.load(Ordering::Relaxed);
            let now = Instant::now();
            if started != seen || self.open.load(Ordering::Relaxed) > 0 {
                seen = started;
                idle_since = now;
            } else if now.duration_since(idle_since) >= timeout {
                return;
            }
        }
    }

    fn call_started(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn call_ended(&self, answered: bool) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        if answered {
            return;
        }
        let resets = self.premature_resets.fetch_add(1, Ordering::Relaxed) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if resets > self.max_premature_resets
            && resets.saturating_mul(2) >= started
            && !self.marked.swap(true, Ordering::Relaxed)
        {
            self.abusive.notify_one();
        }
    }
}

/// One call of a connection, from its start to the end of its response body.
pub struct StreamGuard<T: Tracked> {
    connection: Arc<T>,
    answered: bool,
}

impl<T: Tracked> StreamGuard<T> {
    /// Counts a call starting on `connection`.
    pub fn start(connection: Arc<T>) -> Self {
        connection.activity().call_started();
        StreamGuard {
            connection,
            answered: false,
        }
    }

    /// The connection the call runs on.
    pub fn connection(&self) -> &T {
        &self.connection
    }

    /// The answer began (response headers are out): from now on, a reset is no longer
    /// premature.
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl<T: Tracked> Drop for StreamGuard<T> {
    fn drop(&mut self) {
        self.connection.activity().call_ended(self.answered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calls(activity: &Arc<ConnectionActivity>, answered: usize, reset: usize) {
        for _ in 0..answered {
            let mut call = StreamGuard::start(Arc::clone(activity));
            call.answered();
        }
        for _ in 0..reset {
            drop(StreamGuard::start(Arc::clone(activity)));
        }
    }

    async fn fired(activity: &ConnectionActivity) -> bool {
        tokio::time::timeout(Duration::from_millis(1), activity.too_many_resets())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn resets_past_the_limit_mark_the_connection() {
        let activity = Arc::new(ConnectionActivity::new(10));
        calls(&activity, 0, 10);
        assert!(!fired(&activity).await, "10 resets are allowed");
        calls(&activity, 0, 1);
        assert!(fired(&activity).await);
        assert_eq!(activity.premature_resets(), 11);
        assert_eq!(activity.open_calls(), 0);
    }

    #[tokio::test]
    async fn resets_among_mostly_answered_calls_are_tolerated() {
        let activity = Arc::new(ConnectionActivity::new(10));
        calls(&activity, 100, 40);
        assert!(!fired(&activity).await, "40 resets in 140 calls");
        calls(&activity, 0, 70);
        assert!(fired(&activity).await, "110 resets in 210 calls");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_call_keeps_the_connection_from_idling() {
        let activity = Arc::new(ConnectionActivity::new(10));
        let call = StreamGuard::start(Arc::clone(&activity));
        let idle = tokio::time::timeout(
            Duration::from_secs(10),
            activity.idle_for(Duration::from_secs(2)),
        );
        assert!(idle.await.is_err(), "busy for 10 s");
        drop(call);
        let started = Instant::now();
        activity.idle_for(Duration::from_secs(2)).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(2) && waited <= Duration::from_millis(2_500),
            "{waited:?}"
        );
    }
}
