//! The run-time knobs of one node (health, latency, error rate, keep-alives, the
//! utilisation it reports, the workers that bound the calls it serves at once, a
//! scheduled degradation), shared by the services: the flags set them at start,
//! `DemoControl` changes them, and every Echo and MessageHandler call passes
//! [`NodeBehaviour::admit`] first so the knobs apply the same way to every call shape.
//! It also keeps what the node's ORCA reports say of it: its calls in flight, the
//! requests per second it served over the last second, its recent latency (an EWMA of
//! the calls' times in `admit`), and how many out-of-band ORCA streams are open.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Semaphore, watch};
use tonic::Status;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The grpc.health.v1 names whose status follows the node's health: the server as a whole
/// and the application services.
pub const HEALTH_NAMES: [&str; 3] = ["", "demo.v1.Echo", "meridian.v1.MessageHandler"];

/// The calls in flight that make a derived utilisation of 1, unless `--capacity` says.
pub const DEFAULT_CAPACITY: u32 = 100;

/// The response header holding [`NodeBehaviour::admitted`].
pub const ADMITTED_HEADER: &str = "x-node-admitted";
/// The response header holding [`NodeBehaviour::received_bytes`].
pub const RECEIVED_BYTES_HEADER: &str = "x-node-received-bytes";
/// The response header holding [`NodeBehaviour::orca_streams`].
pub const ORCA_STREAMS_HEADER: &str = "x-node-orca-streams";

/// Weight of the newest call in the recent-latency average.
const LATENCY_EWMA_WEIGHT: f64 = 0.1;

/// What a node is and how it currently behaves.
#[derive(Debug)]
pub struct NodeBehaviour {
    node_id: String,
    latency_ms: AtomicU32,
    /// The error rate's `f64` bits: atomics have no float type.
    error_rate_bits: AtomicU64,
    health: HealthReporter,
    keep_alive: watch::Sender<bool>,
    registers: bool,
    /// The fixed utilisation's `f64` bits; NaN when it is derived from the calls in flight.
    utilization_bits: AtomicU64,
    /// Calls in their latency wait in [`NodeBehaviour::admit`].
    in_flight: AtomicU32,
    /// Calls in flight that make a utilisation of 1.
    capacity: AtomicU32,
    /// The workers, when `--workers` bounds the calls served at once.
    workers: OnceLock<Semaphore>,
    /// Application calls that reached [`NodeBehaviour::admit`] since the start.
    admitted: AtomicU64,
    /// Payload bytes of the Echo messages received since the start.
    received_bytes: AtomicU64,
    /// From when the latency is multiplied, and by how much.
    degradation: OnceLock<(tokio::time::Instant, u32)>,
    /// `f64` bits of the recent latency, ms (EWMA of admitted calls' times).
    recent_latency_bits: AtomicU64,
    /// Calls finished in the current and the last whole second ([`RateWindow`]).
    rate: RateWindow,
    /// Out-of-band ORCA streams open now.
    orca_streams: AtomicU32,
}

impl NodeBehaviour {
    /// `registers` says whether a registration loop reads [`NodeBehaviour::keep_alive`].
    pub fn new(
        node_id: String,
        latency_ms: u32,
        error_rate: f64,
        health: HealthReporter,
        registers: bool,
    ) -> Self {
        NodeBehaviour {
            node_id,
            latency_ms: AtomicU32::new(latency_ms),
            error_rate_bits: AtomicU64::new(error_rate.to_bits()),
            health,
            keep_alive: watch::Sender::new(true),
            registers,
            utilization_bits: AtomicU64::new(f64::NAN.to_bits()),
            in_flight: AtomicU32::new(0),
            capacity: AtomicU32::new(DEFAULT_CAPACITY),
            workers: OnceLock::new(),
            admitted: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            degradation: OnceLock::new(),
            recent_latency_bits: AtomicU64::new(0f64.to_bits()),
            rate: RateWindow::default(),
            orca_streams: AtomicU32::new(0),
        }
    }

    /// Multiplies the latency by `factor` from `after` now on; set once, at start.
    pub fn degrade_after(&self, after: Duration, factor: u32) {
        let _ = self
            .degradation
            .set((tokio::time::Instant::now() + after, factor.max(1)));
    }

    /// The latency now: the set one, multiplied once the degradation has begun.
    fn latency_ms(&self) -> u32 {
        let latency = self.latency_ms.load(Ordering::Relaxed);
        match self.degradation.get() {
            Some(&(from, factor)) if tokio::time::Instant::now() >= from => {
                latency.saturating_mul(factor)
            }
            _ => latency,
        }
    }

    /// Application calls that reached the node's handlers since it started (sent on every
    /// response as [`ADMITTED_HEADER`]), so tests can tell whether a call reached it.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Counts an Echo message's payload as received.
    pub fn received(&self, payload_bytes: usize) {
        self.received_bytes
            .fetch_add(payload_bytes as u64, Ordering::Relaxed);
    }

    /// Payload bytes of the Echo messages received since the start (sent on every response
    /// as [`RECEIVED_BYTES_HEADER`]).
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.load(Ordering::Relaxed)
    }

    /// Waits the node's latency plus `extra_delay_ms`, then fails with the node's error
    /// rate. Call at the start of every application call.
    pub async fn admit(&self, extra_delay_ms: u32) -> Result<(), Status> {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        let delay = self.latency_ms().saturating_add(extra_delay_ms);
        let started = tokio::time::Instant::now();
        if delay > 0 {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
            let _waiting = InFlight(&self.in_flight);
            let _worker = match self.workers.get() {
                Some(workers) => Some(workers.acquire().await.expect("never closed")),
                None => None,
            };
            tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
        }
        self.record_call(started.elapsed());
        let rate = f64::from_bits(self.error_rate_bits.load(Ordering::Relaxed));
        if rate > 0.0 && rand::rng().random::<f64>() < rate {
            return Err(Status::unavailable("injected failure"));
        }
        Ok(())
    }

    /// Counts a finished call of `took` in the rate and the recent latency.
    fn record_call(&self, took: Duration) {
        self.rate.count();
        let ms = took.as_secs_f64() * 1e3;
        let _ =
            self.recent_latency_bits
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                    let old = f64::from_bits(bits);
                    let new = if old == 0.0 {
                        ms
                    } else {
                        old + LATENCY_EWMA_WEIGHT * (ms - old)
                    };
                    Some(new.to_bits())
                });
    }

    /// The recent latency of the node's calls, ms (0 before the first).
    pub fn recent_latency_ms(&self) -> f64 {
        f64::from_bits(self.recent_latency_bits.load(Ordering::Relaxed))
    }

    /// Calls finished over the last whole second.
    pub fn rps(&self) -> f64 {
        self.rate.per_second()
    }

    /// Calls in their latency wait now (from every client).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts an out-of-band ORCA stream as open until the guard drops.
    pub fn open_orca_stream(self: &std::sync::Arc<Self>) -> OrcaStreamGuard {
        self.orca_streams.fetch_add(1, Ordering::Relaxed);
        OrcaStreamGuard(std::sync::Arc::clone(self))
    }

    /// Out-of-band ORCA streams open now (sent on every response as
    /// [`ORCA_STREAMS_HEADER`]), so tests can see a proxy open and end them.
    pub fn orca_streams(&self) -> u32 {
        self.orca_streams.load(Ordering::Relaxed)
    }

    /// Reports `utilization` from now on; `None` derives it from the calls in flight.
    /// Callers check it is a non-negative number.
    pub fn set_utilization(&self, utilization: Option<f64>) {
        let bits = utilization.unwrap_or(f64::NAN).to_bits();
        self.utilization_bits.store(bits, Ordering::Relaxed);
    }

    /// The calls in flight that make a derived utilisation of 1 (at least 1).
    pub fn set_capacity(&self, capacity: u32) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    /// The utilisation to report now: the fixed value, else the calls in their latency
    /// wait over the capacity.
    pub fn utilization(&self) -> f64 {
        let fixed = f64::from_bits(self.utilization_bits.load(Ordering::Relaxed));
        if !fixed.is_nan() {
            return fixed;
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        f64::from(in_flight) / f64::from(self.capacity.load(Ordering::Relaxed).max(1))
    }

    /// Serves at most `workers` calls at once from now on (0: no bound); set once, at
    /// start.
    pub fn set_workers(&self, workers: u32) {
        if workers > 0 {
            let _ = self.workers.set(Semaphore::new(workers as usize));
        }
    }

    pub fn set_latency_ms(&self, latency_ms: u32) {
        self.latency_ms.store(latency_ms, Ordering::Relaxed);
    }

    /// Callers check `rate` is within 0 and 1.
    pub fn set_error_rate(&self, rate: f64) {
        self.error_rate_bits
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Sets the status of every name in [`HEALTH_NAMES`].
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for name in HEALTH_NAMES {
            self.health.set_service_status(name, status).await;
        }
    }

    /// Whether a registration loop is there to obey [`NodeBehaviour::set_keep_alive`].
    pub fn registers(&self) -> bool {
        self.registers
    }

    pub fn set_keep_alive(&self, enabled: bool) {
        self.keep_alive.send_replace(enabled);
    }

    /// Follows whether keep-alives should be sent.
    pub fn keep_alive(&self) -> watch::Receiver<bool> {
        self.keep_alive.subscribe()
    }
}

/// An open out-of-band ORCA stream; uncounted when dropped.
#[derive(Debug)]
pub struct OrcaStreamGuard(std::sync::Arc<NodeBehaviour>);

impl Drop for OrcaStreamGuard {
    fn drop(&mut self) {
        self.0.orca_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Calls finished per whole second: the count of the current second and the last one,
/// turned over lazily by the next call or read.
#[derive(Debug)]
struct RateWindow {
    epoch: std::time::Instant,
    /// The current second, counted from `epoch`, and calls in it: `second << 32 | calls`.
    current: AtomicU64,
    /// Calls in the last whole second, and which second it was: `second << 32 | calls`.
    last: AtomicU64,
}

impl Default for RateWindow {
    fn default() -> Self {
        RateWindow {
            epoch: std::time::Instant::now(),
            current: AtomicU64::new(0),
            last: AtomicU64::new(0),
        }
    }
}

impl RateWindow {
    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    fn count(&self) {
        let now = self.second();
        let _ = self
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let (second, calls) = (packed >> 32, packed & 0xffff_ffff);
                if second == now {
                    Some(packed + 1)
                } else {
                    self.last.store(second << 32 | calls, Ordering::Relaxed);
                    Some(now << 32 | 1)
                }
            });
    }

    fn per_second(&self) -> f64 {
        let now = self.second();
        let current = self.current.load(Ordering::Relaxed);
        let (second, calls) = (current >> 32, current & 0xffff_ffff);
        if second + 1 == now {
            return calls as f64;
        }
        if second == now {
            let last = self.last.load(Ordering::Relaxed);
            if (last >> 32) + 1 == now {
                return (last & 0xffff_ffff) as f64;
            }
        }
        0.0
    }
}

/// One call in its latency wait; uncounted when dropped (also when the call is cancelled).
struct InFlight<'a>(&'a AtomicU32);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_scheduled_degradation_multiplies_the_latency_from_its_time_on() {
        let node = |after: Duration| {
            let behaviour = NodeBehaviour::new("eu-1".into(), 2, 0.0, HealthReporter::new(), false);
            behaviour.degrade_after(after, 5);
            behaviour.latency_ms()
        };
        assert_eq!(node(Duration::from_secs(3_600)), 2, "not yet degraded");
        assert_eq!(node(Duration::ZERO), 10, "degraded: 5 × 2 ms");
    }

    /// Polls until the behaviour reports `expected`, for at most 5 s.
    async fn reports(behaviour: &NodeBehaviour, expected: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while behaviour.utilization() != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "utilisation {} never became {expected}",
                behaviour.utilization()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn utilisation_is_calls_waiting_over_capacity_unless_fixed() {
        let behaviour = Arc::new(NodeBehaviour::new(
            "eu-1".into(),
            60_000,
            0.0,
            HealthReporter::new(),
            false,
        ));
        behaviour.set_capacity(4);
        assert_eq!(behaviour.utilization(), 0.0);
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let behaviour = Arc::clone(&behaviour);
                tokio::spawn(async move { behaviour.admit(0).await })
            })
            .collect();
        reports(&behaviour, 0.5).await;

        behaviour.set_utilization(Some(1.5));
        assert_eq!(
            behaviour.utilization(),
            1.5,
            "a fixed value wins, above 1 too"
        );
        behaviour.set_utilization(None);
        assert_eq!(behaviour.utilization(), 0.5);

        // Cancelled calls (the client went away) stop counting.
        for call in waiting {
            call.abort();
        }
        reports(&behaviour, 0.0).await;
    }
}
