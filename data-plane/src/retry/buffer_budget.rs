//! The memory idempotent calls may hold to replay their request bodies on retries: a cap
//! per call and a cap for the whole proxy, both set by flags. A call reserves bytes as
//! its body arrives ([`Reservation::grow`]) and gives them back when its buffer is
//! dropped; a call that would go over either cap is not refused but forwarded as it
//! streams, without retries once a node has seen it (what Envoy does with its
//! `per_request_buffer_limit_bytes`). The proxy-wide count is one atomic, so reserving
//! takes no lock.
//!
//! `meridian_proxy_retry_buffer_bytes` shows the bytes held. It is raised after a
//! reservation succeeds and lowered before one is given back, so it never shows more
//! than the atomic count, which never exceeds the cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::Gauge;

/// Which cap a call would have gone over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverCap {
    /// The per-call cap (`--retry-buffer-call-bytes`).
    Call,
    /// The proxy-wide cap (`--retry-buffer-total-bytes`).
    Total,
}

impl OverCap {
    pub fn as_str(self) -> &'static str {
        match self {
            OverCap::Call => "over_call_cap",
            OverCap::Total => "over_total_cap",
        }
    }
}

/// The proxy-wide budget of bytes buffered for retries.
#[derive(Debug)]
pub struct BufferBudget {
    call_cap: u64,
    total_cap: u64,
    in_use: AtomicU64,
    gauge: Gauge,
}

impl BufferBudget {
    pub fn new(call_cap: u64, total_cap: u64) -> Arc<Self> {
        Arc::new(BufferBudget {
            call_cap,
            total_cap,
            in_use: AtomicU64::new(0),
            gauge: metrics::gauge!("meridian_proxy_retry_buffer_bytes"),
        })
    }

    /// An empty reservation for one call.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    /// Bytes reserved by all calls now.
    pub fn in_use(&self) -> u64 {
        self.in_use.load(Ordering::Acquire)
    }

    pub fn call_cap(&self) -> u64 {
        self.call_cap
    }

    pub fn total_cap(&self) -> u64 {
        self.total_cap
    }
}

/// The bytes one call holds; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BufferBudget>,
    bytes: u64,
}

impl Reservation {
    /// Reserves `more` bytes, unless that takes the call or the proxy over its cap (then
    /// nothing more is reserved).
    pub fn grow(&mut self, more: u64) -> Result<(), OverCap> {
        let budget = &*self.budget;
        if self.bytes.saturating_add(more) > budget.call_cap {
            return Err(OverCap::Call);
        }
        budget
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                in_use
                    .checked_add(more)
                    .filter(|total| *total <= budget.total_cap)
            })
            .map_err(|_| OverCap::Total)?;
        self.bytes += more;
        budget.gauge.increment(more as f64);
        Ok(())
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.gauge.decrement(self.bytes as f64);
            self.budget.in_use.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_reserves_up_to_its_cap_and_gives_back_on_drop() {
        let budget = BufferBudget::new(100, 1_000);
        let mut call = budget.reservation();
        call.grow(60).unwrap();
        call.grow(40).unwrap();
        assert_eq!(call.grow(1), Err(OverCap::Call));
        assert_eq!((call.bytes(), budget.in_use()), (100, 100));
        drop(call);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn the_proxy_wide_cap_holds_across_calls_and_frees_with_them() {
        let budget = BufferBudget::new(100, 250);
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        let mut c = budget.reservation();
        a.grow(100).unwrap();
        b.grow(100).unwrap();
        assert_eq!(c.grow(60), Err(OverCap::Total), "250 - 200 = 50 left");
        assert_eq!(c.bytes(), 0, "a refused reservation takes nothing");
        c.grow(50).unwrap();
        assert_eq!(budget.in_use(), 250);
        drop(a);
        assert_eq!(budget.in_use(), 150);
        c.grow(50).unwrap();
        drop((b, c));
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_cap() {
        // 8 calls of up to 64 bytes compete for 200.
        let budget = BufferBudget::new(64, 200);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || {
                    let mut most = 0;
                    for _ in 0..2_000 {
                        let mut call = budget.reservation();
                        while call.grow(16).is_ok() {
                            most = most.max(budget.in_use());
                        }
                    }
                    most
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap() <= 200);
        }
        assert_eq!(budget.in_use(), 0);
    }
}
