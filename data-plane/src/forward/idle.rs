//! The stream idle timeout of forwarded calls: a call (unary or stream) with no frame in
//! either direction for the service's `endpoint_limits.stream_idle_timeout_ms` (else the
//! proxy's `[upstream] stream_idle_timeout_ms`) ends with UNAVAILABLE, so a node that
//! hangs, or a client that opened a stream and went silent, does not hold a call (and its
//! slot under the node's `max_requests`) for ever. Envoy's `stream_idle_timeout` does the
//! same (5 minutes by default, as here).
//!
//! Each frame that passes, either way, stamps the call's [`Activity`]: one clock read and
//! one relaxed atomic store, no timer touched. The one timer a call has (its deadline's,
//! [`CallTimer`], shared by the wait for the response head and the response body) wakes at
//! the earlier of the deadline and the last frame plus the timeout, and when it finds a
//! frame passed since, sleeps again until the new idle time; while the head is awaited it
//! also ends the attempt at the deadline (the retry driver sets no timer of its own for
//! forwarded calls). The timer is only looked at
//! while the proxy waits on the node: a response waiting for a client that does not read
//! it is held to its HTTP/2 stream window instead (see `endpoint/connection.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::clock;

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
            since: clock::now(),
            last_frame_ns: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// A frame passed now.
    pub fn touch(&self) {
        let elapsed = clock::since(self.since).as_nanos();
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

/// Why a call's timer ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// Its deadline passed.
    Deadline,
    /// No frame passed either way for this long.
    Idle(Duration),
}

/// A call's one timer, from its first attempt's wait for the response head to the end of
/// the response body: it wakes at the earlier of the call's deadline and its idle time,
/// and when it finds a frame passed since, it is pushed back (tokio only moves a timer in
/// its wheel when it fires early, so that is an atomic store). Allocated once per call, so
/// the wait for the head and the body share it instead of registering one each.
pub struct CallTimer {
    sleep: Pin<Box<Sleep>>,
    deadline: Option<Instant>,
    idle: Option<Duration>,
}

impl CallTimer {
    /// The timer of a call ending at `deadline` or after `idle` without a frame; `None`
    /// when it has neither.
    pub fn new(
        deadline: Option<Instant>,
        idle: Option<Duration>,
        activity: &Activity,
    ) -> Option<Self> {
        let at = next_wake(deadline, activity, idle)?;
        Some(CallTimer {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            deadline,
            idle,
        })
    }

    /// The idle timeout it watches.
    pub fn idle(&self) -> Option<Duration> {
        self.idle
    }

    /// Whether frames must stamp the call's activity for this timer.
    pub fn watches_idle(&self) -> bool {
        self.idle.is_some()
    }

    /// Ready when the call's deadline passed or it was idle for its timeout.
    pub fn poll_expired(&mut self, activity: &Activity, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if self.deadline.is_some_and(|d| d <= now) {
                return Poll::Ready(Expired::Deadline);
            }
            if let Some(idle) = self.idle
                && activity.is_idle(idle, now)
            {
                return Poll::Ready(Expired::Idle(idle));
            }
            // A frame passed since the timer was set: sleep until the new idle time.
            match next_wake(self.deadline, activity, self.idle) {
                Some(at) => self.sleep.as_mut().reset(at),
                None => unreachable!("a call timer has a deadline or an idle timeout"),
            }
        }
    }
}

/// Waits for `future` until `timer` (if any) expires: the deadline passes, or no frame
/// passes on the call (`activity`) for its idle timeout.
pub fn within_time<'a, F: Future>(
    timer: Option<&'a mut CallTimer>,
    activity: &'a Activity,
    future: F,
) -> WithinTime<'a, F> {
    WithinTime {
        future,
        timer,
        activity,
    }
}

pin_project_lite::pin_project! {
    /// See [`within_time`].
    pub struct WithinTime<'a, F> {
        #[pin]
        future: F,
        timer: Option<&'a mut CallTimer>,
        activity: &'a Activity,
    }
}

impl<F: Future> Future for WithinTime<'_, F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.timer {
            Some(timer) => timer.poll_expired(this.activity, cx).map(Err),
            None => Poll::Pending,
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
        let mut timer = CallTimer::new(None, Some(timeout), &activity);
        let waited = within_time(timer.as_mut(), &activity, std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Expired::Idle(timeout)));
        // ...then it ends 100 ms after the last one (at 300 ms).
        assert_eq!(started.elapsed(), Duration::from_millis(400));
        frames.await.unwrap();
        let answered = within_time(timer.as_mut(), &activity, async { 7 }).await;
        assert_eq!(answered, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_wait_even_while_frames_pass() {
        let activity = Activity::default();
        let started = Instant::now();
        let deadline = Some(started + Duration::from_millis(250));
        let mut timer = CallTimer::new(deadline, Some(Duration::from_secs(5)), &activity);
        let waited = within_time(timer.as_mut(), &activity, std::future::pending::<()>()).await;
        assert_eq!(waited, Err(Expired::Deadline));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert!(
            CallTimer::new(None, None, &activity).is_none(),
            "nothing to time"
        );
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
