//! The stream idle timeout of forwarded calls: a call (unary or stream) with no frame in
//! either direction for the service's `endpoint_limits.stream_idle_timeout_ms` (else the
//! proxy's `[upstream] stream_idle_timeout_ms`) ends with UNAVAILABLE, so a node that
//! hangs, or a client that opened a stream and went silent, does not hold a call (and its
//! slot under the node's `max_requests`) for ever. Envoy's `stream_idle_timeout` does the
//! same (5 minutes by default, as here).
//!
//! Each frame that passes, either way, stamps the call's [`Activity`]: one clock read and
//! one relaxed atomic store, no timer touched. The one timer a call has (its deadline's,
//! in the response body; [`within_idle`] while the response head is awaited) wakes at
//! the earlier of the deadline and the last frame plus the timeout, and when it finds a
//! frame passed since, sleeps again until the new idle time. The timer is only looked at
//! while the proxy waits on the node: a response waiting for a client that does not read
//! it is held to its HTTP/2 stream window instead (see `endpoint/connection.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// When a frame last passed on one call, either way.
#[derive(Debug)]
pub struct Activity {
    since: Instant,
    /// Nanoseconds from `since` to the last frame.
    last_frame_ns: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            since: Instant::now(),
            last_frame_ns: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// A frame passed now.
    pub fn touch(&self) {
        let elapsed = self.since.elapsed().as_nanos();
        self.last_frame_ns.store(
            u64::try_from(elapsed).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// When the call is idle for `timeout` unless a frame passes before.
    pub fn idle_at(&self, timeout: Duration) -> Instant {
        let last = Duration::from_nanos(self.last_frame_ns.load(Ordering::Relaxed));
        self.since + last + timeout
    }

    /// Whether no frame passed for `timeout` by now.
    pub fn is_idle(&self, timeout: Duration, now: Instant) -> bool {
        self.idle_at(timeout) <= now
    }
}

/// The call was idle for its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Idle;

/// Waits for `future` as long as frames keep passing on the call (`activity`) at most
/// `timeout` apart; `Err(Idle)` when none passed for `timeout`. No timeout: just waits.
/// A plain future (not an `async fn`), so `future` is held once, not twice.
pub fn within_idle<F: Future>(
    activity: &Activity,
    timeout: Option<Duration>,
    future: F,
) -> WithinIdle<'_, F> {
    WithinIdle {
        future,
        timer: None,
        activity,
        timeout,
    }
}

pin_project_lite::pin_project! {
    /// See [`within_idle`].
    pub struct WithinIdle<'a, F> {
        #[pin]
        future: F,
        // Set when the future first waits.
        #[pin]
        timer: Option<Sleep>,
        activity: &'a Activity,
        timeout: Option<Duration>,
    }
}

impl<F: Future> Future for WithinIdle<'_, F> {
    type Output = Result<F::Output, Idle>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        loop {
            let idle_at = this.activity.idle_at(timeout);
            match this.timer.as_mut().as_pin_mut() {
                None => this.timer.set(Some(tokio::time::sleep_until(idle_at))),
                Some(mut timer) => {
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if this.activity.is_idle(timeout, Instant::now()) {
                        return Poll::Ready(Err(Idle));
                    }
                    // A frame passed since the timer was set: sleep until the new idle time.
                    timer.reset(idle_at);
                }
            }
        }
    }
}

/// When a call's one timer should wake: the earlier of its deadline and its idle time.
pub fn next_wake(
    deadline: Option<Instant>,
    activity: &Activity,
    idle: Option<Duration>,
) -> Option<Instant> {
    let idle_at = idle.map(|timeout| activity.idle_at(timeout));
    match (deadline, idle_at) {
        (Some(d), Some(i)) => Some(d.min(i)),
        (d, i) => d.or(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_only_after_the_timeout_passes_without_a_frame() {
        let activity = std::sync::Arc::new(Activity::default());
        let timeout = Duration::from_millis(100);
        // Frames every 60 ms for 300 ms keep the call alive...
        let frames = {
            let activity = activity.clone();
            tokio::spawn(async move {
                for _ in 0..5 {
                    tokio::time::sleep(Duration::from_millis(60)).await;
                    activity.touch();
                }
            })
        };
        let started = Instant::now();
        let waited = within_idle(&activity, Some(timeout), std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Idle));
        // ...then it ends 100 ms after the last one (at 300 ms).
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        frames.await.unwrap();
        let answered = within_idle(&activity, Some(timeout), async { 7 }).await;
        assert_eq!(answered, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_wakes_at_the_earlier_of_deadline_and_idle_time() {
        let activity = Activity::default();
        let now = Instant::now();
        let idle = Some(Duration::from_secs(5));
        let deadline = Some(now + Duration::from_secs(1));
        assert_eq!(next_wake(deadline, &activity, idle), deadline);
        assert_eq!(
            next_wake(None, &activity, idle),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(next_wake(None, &activity, None), None);
    }
}
