//! The request path's clock. Each pass of a client connection's task (one read and the
//! calls it wakes) reads tokio's clock once, and every call served in that pass takes
//! its times from that reading: its start, deadline, latencies, activity stamps and load
//! figures. A call read the clock a dozen times otherwise. Envoy's dispatcher does the
//! same with its approximate time per event-loop iteration. Outside a pass (a body
//! streamed from a task of its own, RouteMessage, the tests), [`now`] reads the clock.
//!
//! A pass's reading is at most one read-and-handle behind the clock: microseconds, well
//! under the millisecond resolution of deadlines, timers and the latency buckets.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

thread_local! {
    static PASS_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// When this thread's pass began, else the clock's time.
pub fn now() -> Instant {
    PASS_STARTED.get().unwrap_or_else(Instant::now)
}

/// The time from `earlier` to [`now`], zero if `earlier` is later.
pub fn since(earlier: Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

/// One pass: while it lives, [`now`] on this thread is the time it began.
#[must_use = "the pass ends when dropped"]
pub struct Pass {
    outer: Option<Instant>,
}

impl Pass {
    pub fn begin() -> Pass {
        Pass {
            outer: PASS_STARTED.replace(Some(Instant::now())),
        }
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        PASS_STARTED.set(self.outer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pass_holds_its_start_and_the_clock_goes_on_after_it() {
        let before = now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(
            since(before),
            Duration::from_millis(5),
            "no pass: the clock"
        );
        let pass = Pass::begin();
        let started = now();
        tokio::time::advance(Duration::from_millis(3)).await;
        assert_eq!(now(), started, "in a pass: its start");
        {
            let inner = Pass::begin();
            assert_eq!(
                since(started),
                Duration::from_millis(3),
                "an inner pass reads anew"
            );
            drop(inner);
        }
        assert_eq!(now(), started, "the outer pass again");
        drop(pass);
        assert_eq!(since(started), Duration::from_millis(3));
    }
}
