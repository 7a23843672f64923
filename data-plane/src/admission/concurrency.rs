//! Per-service concurrency limits with a bounded queue, on each proxy.
//!
//! A [`ConcurrencyLimiter`] lets at most `limit` calls of its service through at once —
//! a static limit, or an adaptive one following measured latency ([`gradient`]). The
//! [`ConcurrencyPermit`] a call gets is held for the whole call: a RouteMessage until its
//! reply, a forwarded call until its response body ends (the permit rides in
//! [`crate::forward::body::Call`]). Calls over the limit wait in a first-in-first-out
//! queue, served in order, for at most the policy's wait (or the call's deadline, if
//! sooner); a call that cannot wait is refused with RESOURCE_EXHAUSTED, for one of the
//! [`RefusalReason`]s, counted in `meridian_proxy_refused_total{reason,service,priority}`.
//!
//! Priority shedding ([`Priority`]): when the queue is full, a queued call of lower
//! priority than the newcomer is dropped to make room (the newest of the lowest priority
//! with `reject_new`, the oldest with `drop_oldest`); while the oldest queued call has
//! waited longer than the target (the proxy is overloaded), a new call is refused if a
//! call of higher priority is waiting. Under overload, then, low priorities go first and
//! high ones still get the slots.
//!
//! The fast path — under the limit with nobody queued — is a compare-and-swap on the
//! in-flight count: no lock, no allocation. The queue is behind a mutex taken only by calls
//! that must queue and by releases while someone is queued. A release hands its slot
//! straight to the head of the queue, so a queued call is never overtaken by one that
//! arrives later while it waits. Gauges per service: `meridian_proxy_concurrency_limit`,
//! `meridian_proxy_concurrency_in_flight`, `meridian_proxy_concurrency_queued`.
//!
//! A limiter lives as long as its policy: a new table with the same concurrency policy
//! keeps it (and its adaptive state); a changed policy starts a fresh one, while the calls
//! admitted by the old one finish against it.

mod gradient;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use meridian_shared::domain::{ConcurrencyLimitKind, ConcurrencyPolicy, QueueDropStrategy};
use metrics::Gauge;
use serde_json::json;
use tokio::sync::oneshot;
use tokio::time::Instant;

use self::gradient::{GradientLimit, Window};
use super::priority::Priority;
use crate::table::ServiceRoute;

/// Fewest RTT samples that close an adaptive sample window.
const MIN_SAMPLES: u64 = 5;

/// Why a call was refused before any node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Over the limit, and the policy has no queue.
    ConcurrencyLimit,
    /// The queue was full of calls of the same or higher priority.
    QueueFull,
    /// The call waited its longest (or until its deadline) without a slot.
    QueueTimeout,
    /// Overloaded: a call of higher priority took its place, or was waiting.
    ShedPriority,
    /// A call going on to this service as a fallback found its limit reached (a fallback
    /// takes calls only while under its limit: they do not queue twice).
    FallbackLimit,
}

impl RefusalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::ConcurrencyLimit => "concurrency_limit",
            RefusalReason::QueueFull => "queue_full",
            RefusalReason::QueueTimeout => "queue_timeout",
            RefusalReason::ShedPriority => "shed_priority",
            RefusalReason::FallbackLimit => "fallback_limit",
        }
    }
}

/// A call the limiter refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "service {service} is overloaded on this proxy ({reason}: {what}); the call (priority {priority}) was not sent to any node. Retry with backoff, send it with a higher x-meridian-priority, or raise the service's concurrency limit (meridianctl services set --concurrency-limit / --queue-size)",
    reason = .reason.as_str(),
    what = .reason.explain(*.limit, *.max_queue, *.max_wait)
)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub service: String,
    pub priority: Priority,
    pub limit: u32,
    pub max_queue: usize,
    pub max_wait: Duration,
}

impl RefusalReason {
    fn explain(self, limit: u32, max_queue: usize, max_wait: Duration) -> String {
        match self {
            RefusalReason::ConcurrencyLimit => {
                format!("{limit} calls in flight, the limit, and no queue")
            }
            RefusalReason::QueueFull => format!(
                "{limit} calls in flight, the limit, and all {max_queue} queue places taken"
            ),
            RefusalReason::QueueTimeout => format!(
                "no slot under the limit of {limit} within {} ms of queueing, or before the call's deadline",
                max_wait.as_millis()
            ),
            RefusalReason::ShedPriority => {
                "calls of higher priority took the queue while it was over its target wait"
                    .to_owned()
            }
            RefusalReason::FallbackLimit => format!(
                "{limit} calls in flight, the limit; a call falling back to this service does not queue"
            ),
        }
    }
}

/// What a queued call is told.
#[derive(Debug)]
enum Verdict {
    /// A slot is the call's (already counted in flight).
    Admitted,
    Refused(RefusalReason),
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    priority: Priority,
    since: Instant,
    verdict: oneshot::Sender<Verdict>,
}

#[derive(Debug)]
struct Gauges {
    limit: Gauge,
    in_flight: Gauge,
    queued: Gauge,
}

/// The adaptive limit and the RTT samples of its current window.
#[derive(Debug)]
struct Adaptive {
    window: Duration,
    /// When the limiter was made; window starts are nanoseconds since.
    epoch: Instant,
    window_start_nanos: AtomicU64,
    rtt_sum_micros: AtomicU64,
    samples: AtomicU64,
    peak_in_flight: AtomicU32,
    /// Taken with `try_lock` by the release that closes a window; nobody waits on it.
    limit: Mutex<GradientLimit>,
}

#[derive(Debug)]
pub struct ConcurrencyLimiter {
    service: String,
    kind: ConcurrencyLimitKind,
    max_queue: usize,
    max_wait: Duration,
    target_wait: Duration,
    drop_strategy: QueueDropStrategy,
    limit: AtomicU32,
    in_flight: AtomicU32,
    /// The queue's length, read without the lock by the fast path.
    queued: AtomicU32,
    queue: Mutex<VecDeque<Waiter>>,
    next_ticket: AtomicU64,
    adaptive: Option<Adaptive>,
    gauges: Gauges,
}

/// A slot under the limit, given back when dropped.
#[derive(Debug)]
pub struct ConcurrencyPermit {
    limiter: Arc<ConcurrencyLimiter>,
    /// When the call got its slot, for the adaptive limit's RTT samples.
    granted: Option<Instant>,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        let rtt = self.granted.map(|granted| granted.elapsed());
        self.limiter.release(rtt);
    }
}

/// The admission of `route`'s calls at `priority`: a permit to hold for the whole call,
/// none when the service has no limit, or the refusal. The wait in the queue ends at
/// `deadline` at the latest.
pub async fn admit(
    route: &ServiceRoute,
    priority: Priority,
    deadline: Option<Instant>,
) -> Result<Option<ConcurrencyPermit>, Refusal> {
    match &route.concurrency {
        None => Ok(None),
        Some(limiter) => match limiter.try_acquire_now() {
            Some(permit) => Ok(Some(permit)),
            // The wait in the queue is boxed: its state (timer, ticket) would otherwise
            // sit in every forwarded call's future, which is moved as it is built.
            None => Box::pin(limiter.acquire(priority, deadline))
                .await
                .map(Some),
        },
    }
}

/// The admission of a call going on to `route` as a fallback service: a slot now, none
/// when the service has no limit, or the refusal. No queueing: the call already waited
/// for the service it called, and its deadline runs.
pub fn admit_fallback(
    route: &ServiceRoute,
    priority: Priority,
) -> Result<Option<ConcurrencyPermit>, Refusal> {
    match &route.concurrency {
        None => Ok(None),
        Some(limiter) => match limiter.try_acquire_now() {
            Some(permit) => Ok(Some(permit)),
            None => Err(limiter.refuse(RefusalReason::FallbackLimit, priority)),
        },
    }
}

// === impl ConcurrencyLimiter ===

impl ConcurrencyLimiter {
    /// The limiter `policy` asks for; `None` when it sets no limit.
    pub fn new(service: &str, policy: &ConcurrencyPolicy) -> Option<Arc<Self>> {
        if !policy.is_enabled() {
            return None;
        }
        let adaptive = (policy.kind == ConcurrencyLimitKind::Adaptive).then(|| {
            let limit = GradientLimit::new(
                policy.effective_initial_limit(),
                policy.effective_min_limit(),
                policy.effective_max_limit(),
                policy.effective_min_rtt_interval(),
            );
            Adaptive {
                window: policy.effective_sample_window(),
                epoch: Instant::now(),
                window_start_nanos: AtomicU64::new(0),
                rtt_sum_micros: AtomicU64::new(0),
                samples: AtomicU64::new(0),
                peak_in_flight: AtomicU32::new(0),
                limit: Mutex::new(limit),
            }
        });
        let limit = match &adaptive {
            Some(adaptive) => lock(&adaptive.limit).limit(),
            None => policy.effective_initial_limit(),
        };
        let gauge = |name: &'static str| metrics::gauge!(name, "service" => service.to_owned());
        let gauges = Gauges {
            limit: gauge("meridian_proxy_concurrency_limit"),
            in_flight: gauge("meridian_proxy_concurrency_in_flight"),
            queued: gauge("meridian_proxy_concurrency_queued"),
        };
        gauges.limit.set(f64::from(limit));
        gauges.in_flight.set(0.0);
        gauges.queued.set(0.0);
        Some(Arc::new(ConcurrencyLimiter {
            service: service.to_owned(),
            kind: policy.kind,
            max_queue: policy.max_queue as usize,
            max_wait: policy.effective_max_queue_wait(),
            target_wait: policy.effective_target_queue_wait(),
            drop_strategy: policy.drop_strategy,
            limit: AtomicU32::new(limit),
            in_flight: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            queue: Mutex::new(VecDeque::new()),
            next_ticket: AtomicU64::new(0),
            adaptive,
            gauges,
        }))
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> u32 {
        self.queued.load(Ordering::Relaxed)
    }

    /// A slot at once if one is free and nobody waits for one.
    pub fn try_acquire_now(self: &Arc<Self>) -> Option<ConcurrencyPermit> {
        (self.queued.load(Ordering::SeqCst) == 0 && self.try_take_slot()).then(|| self.permit())
    }

    /// A slot now, or a place in the queue and a slot later, or the refusal.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Option<Instant>,
    ) -> Result<ConcurrencyPermit, Refusal> {
        if self.queued.load(Ordering::SeqCst) == 0 && self.try_take_slot() {
            return Ok(self.permit());
        }
        let now = Instant::now();
        let (ticket, verdict) = match self.enqueue(priority, now) {
            Enqueued::Admitted => return Ok(self.permit()),
            Enqueued::Refused(reason) => return Err(self.refuse(reason, priority)),
            Enqueued::Waiting(ticket, verdict) => (ticket, verdict),
        };
        let mut queued = QueuedCall {
            limiter: self,
            ticket,
            verdict,
            settled: false,
        };
        let give_up = deadline.map_or(now + self.max_wait, |d| d.min(now + self.max_wait));
        let verdict = match tokio::time::timeout_at(give_up, &mut queued.verdict).await {
            Ok(Ok(verdict)) => verdict,
            // The limiter never drops a waiter without a verdict; count it as a timeout.
            Ok(Err(_)) => Verdict::Refused(RefusalReason::QueueTimeout),
            Err(_elapsed) => queued.leave(),
        };
        queued.settled = true;
        match verdict {
            Verdict::Admitted => Ok(self.permit()),
            Verdict::Refused(reason) => Err(self.refuse(reason, priority)),
        }
    }

    /// The limit and its state, for `/debug/table`.
    pub fn debug_json(&self) -> serde_json::Value {
        let min_rtt = self
            .adaptive
            .as_ref()
            .and_then(|a| lock(&a.limit).min_rtt())
            .map(|rtt| rtt.as_secs_f64() * 1e3);
        json!({
            "kind": self.kind.as_str(),
            "limit": self.limit(),
            "in_flight": self.in_flight(),
            "queued": self.queued(),
            "max_queue": self.max_queue,
            "max_queue_wait_ms": self.max_wait.as_millis() as u64,
            "target_queue_wait_ms": self.target_wait.as_millis() as u64,
            "drop_strategy": self.drop_strategy.as_str(),
            "min_rtt_ms": min_rtt,
        })
    }

    fn permit(self: &Arc<Self>) -> ConcurrencyPermit {
        ConcurrencyPermit {
            limiter: Arc::clone(self),
            granted: self.adaptive.as_ref().map(|_| Instant::now()),
        }
    }

    /// Counts the refusal and says why.
    fn refuse(&self, reason: RefusalReason, priority: Priority) -> Refusal {
        count_refusal(&self.service, reason, priority);
        Refusal {
            reason,
            service: self.service.clone(),
            priority,
            limit: self.limit(),
            max_queue: self.max_queue,
            max_wait: self.max_wait,
        }
    }

    /// One more call in flight if that stays within the limit.
    fn try_take_slot(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.gauges.in_flight.set(f64::from(current + 1));
                    if let Some(adaptive) = &self.adaptive {
                        adaptive
                            .peak_in_flight
                            .fetch_max(current + 1, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Gives a slot back (`rtt`: how long the call held it, for an adaptive limit), and
    /// hands it on to the head of the queue if anyone waits.
    fn release(&self, rtt: Option<Duration>) {
        let before = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.gauges.in_flight.set(f64::from(before - 1));
        if let Some(rtt) = rtt {
            self.sample(rtt);
        }
        if self.queued.load(Ordering::SeqCst) > 0 {
            self.dispatch(&mut lock(&self.queue));
        }
    }

    /// Places in the queue go to its head while slots are free; calls that left already
    /// (cancelled) give theirs back.
    fn dispatch(&self, queue: &mut VecDeque<Waiter>) {
        while !queue.is_empty() && self.try_take_slot() {
            let waiter = queue.pop_front().expect("not empty");
            if waiter.verdict.send(Verdict::Admitted).is_err() {
                self.release_unused_slot();
            }
        }
        self.set_queued(queue.len());
    }

    fn release_unused_slot(&self) {
        let before = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.gauges.in_flight.set(f64::from(before - 1));
    }

    fn set_queued(&self, length: usize) {
        self.queued.store(length as u32, Ordering::SeqCst);
        self.gauges.queued.set(length as f64);
    }

    /// The slow path, under the queue's lock: a slot after all, a place in the queue
    /// (perhaps another call's), or the refusal.
    fn enqueue(&self, priority: Priority, now: Instant) -> Enqueued {
        let mut queue = lock(&self.queue);
        if queue.is_empty() && self.try_take_slot() {
            return Enqueued::Admitted;
        }
        if self.max_queue == 0 {
            return Enqueued::Refused(RefusalReason::ConcurrencyLimit);
        }
        let overloaded = queue
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > self.target_wait);
        if overloaded && queue.iter().any(|w| w.priority > priority) {
            return Enqueued::Refused(RefusalReason::ShedPriority);
        }
        if queue.len() >= self.max_queue {
            match self.make_room(&mut queue, priority) {
                Some((victim, reason)) => {
                    count_refusal(&self.service, reason, victim.priority);
                    // The victim may have given up already; then nobody hears it.
                    let _ = victim.verdict.send(Verdict::Refused(reason));
                }
                None => {
                    // Below everyone waiting, it would not have got in with drop_oldest
                    // either: its priority is why.
                    let reason = if queue.iter().all(|w| w.priority > priority) {
                        RefusalReason::ShedPriority
                    } else {
                        RefusalReason::QueueFull
                    };
                    return Enqueued::Refused(reason);
                }
            }
        }
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        let (sender, verdict) = oneshot::channel();
        queue.push_back(Waiter {
            ticket,
            priority,
            since: now,
            verdict: sender,
        });
        self.set_queued(queue.len());
        // A slot freed between the fast path and the lock would otherwise wait for the
        // next release (there may be none).
        self.dispatch(&mut queue);
        Enqueued::Waiting(ticket, verdict)
    }

    /// The queued call that makes room for a newcomer of `priority` in a full queue, and
    /// why it goes; `None` when the newcomer is refused instead.
    fn make_room(
        &self,
        queue: &mut VecDeque<Waiter>,
        priority: Priority,
    ) -> Option<(Waiter, RefusalReason)> {
        let lowest = queue.iter().map(|w| w.priority).min()?;
        let (reason, oldest) = if lowest < priority {
            let oldest = self.drop_strategy == QueueDropStrategy::DropOldest;
            (RefusalReason::ShedPriority, oldest)
        } else if lowest == priority && self.drop_strategy == QueueDropStrategy::DropOldest {
            (RefusalReason::QueueFull, true)
        } else {
            return None;
        };
        let index = if oldest {
            queue.iter().position(|w| w.priority == lowest)
        } else {
            queue.iter().rposition(|w| w.priority == lowest)
        }?;
        queue.remove(index).map(|victim| (victim, reason))
    }

    /// Records one RTT sample; the release that closes a sample window updates the limit.
    fn sample(&self, rtt: Duration) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        adaptive
            .rtt_sum_micros
            .fetch_add(rtt.as_micros() as u64, Ordering::Relaxed);
        let samples = adaptive.samples.fetch_add(1, Ordering::Relaxed) + 1;
        let now_nanos = adaptive.epoch.elapsed().as_nanos() as u64;
        let started = adaptive.window_start_nanos.load(Ordering::Relaxed);
        if samples < MIN_SAMPLES
            || now_nanos.saturating_sub(started) < adaptive.window.as_nanos() as u64
        {
            return;
        }
        let Ok(mut limit) = adaptive.limit.try_lock() else {
            return; // another release is closing this window
        };
        if adaptive
            .window_start_nanos
            .compare_exchange(started, now_nanos, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let samples = adaptive.samples.swap(0, Ordering::Relaxed).max(1);
        let sum = adaptive.rtt_sum_micros.swap(0, Ordering::Relaxed);
        let window = Window {
            mean_rtt: Duration::from_micros(sum / samples),
            peak_in_flight: adaptive
                .peak_in_flight
                .swap(self.in_flight(), Ordering::Relaxed),
        };
        let next = limit.update(Instant::now(), window);
        drop(limit);
        let before = self.limit.swap(next, Ordering::SeqCst);
        self.gauges.limit.set(f64::from(next));
        if next > before && self.queued.load(Ordering::SeqCst) > 0 {
            self.dispatch(&mut lock(&self.queue));
        }
    }
}

enum Enqueued {
    Admitted,
    Refused(RefusalReason),
    Waiting(u64, oneshot::Receiver<Verdict>),
}

/// A call in the queue. Dropped unsettled (the caller went away), it leaves the queue, or
/// gives back the slot it was handed meanwhile.
struct QueuedCall<'a> {
    limiter: &'a ConcurrencyLimiter,
    ticket: u64,
    verdict: oneshot::Receiver<Verdict>,
    settled: bool,
}

impl QueuedCall<'_> {
    /// Gives up waiting: out of the queue with a timeout, unless a verdict came first
    /// (verdicts are sent under the queue's lock, so by now it is in the channel).
    fn leave(&mut self) -> Verdict {
        let mut queue = lock(&self.limiter.queue);
        if let Some(index) = queue.iter().position(|w| w.ticket == self.ticket) {
            queue.remove(index);
            self.limiter.set_queued(queue.len());
            return Verdict::Refused(RefusalReason::QueueTimeout);
        }
        drop(queue);
        self.verdict
            .try_recv()
            .unwrap_or(Verdict::Refused(RefusalReason::QueueTimeout))
    }
}

impl Drop for QueuedCall<'_> {
    fn drop(&mut self) {
        if !self.settled
            && let Verdict::Admitted = self.leave()
        {
            self.limiter.release(None);
        }
    }
}

fn count_refusal(service: &str, reason: RefusalReason, priority: Priority) {
    metrics::counter!(
        "meridian_proxy_refused_total",
        "reason" => reason.as_str(),
        "service" => service.to_owned(),
        "priority" => priority.label()
    )
    .increment(1);
}

/// The lock, also after a panic elsewhere: the queue stays consistent under it (every
/// change is one `VecDeque` call).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
