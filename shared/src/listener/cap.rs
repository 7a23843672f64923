//! The connection cap of a listener: one atomic count shared by every task and thread that
//! serves the listener's connections (the proxy's per-core workers included), so the cap
//! holds for the process, not per worker. A connection takes a [`ConnectionPermit`] when it
//! is accepted and gives it back when its socket is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most `max` connections at once.
#[derive(Debug, Clone)]
pub struct ConnectionCap {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Self {
        ConnectionCap {
            open: Arc::default(),
            max,
        }
    }

    /// A permit for one more connection, or `None` when `max` are open.
    pub fn try_acquire(&self) -> Option<ConnectionPermit> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionPermit {
            open: Arc::clone(&self.open),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One connection's place under the cap, given back on drop.
#[derive(Debug)]
pub struct ConnectionPermit {
    open: Arc<AtomicUsize>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_past_max_and_frees_a_place_on_drop() {
        let cap = ConnectionCap::new(2);
        let first = cap.try_acquire().unwrap();
        let _second = cap.try_acquire().unwrap();
        assert!(cap.try_acquire().is_none());
        assert_eq!(cap.open(), 2, "a refusal takes no place");
        drop(first);
        assert!(cap.try_acquire().is_some());
    }

    #[test]
    fn the_cap_holds_across_threads() {
        let cap = ConnectionCap::new(100);
        let taken: Vec<_> = (0..4)
            .map(|_| {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .filter_map(|_| cap.try_acquire())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let permits: Vec<Vec<ConnectionPermit>> =
            taken.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(permits.iter().map(Vec::len).sum::<usize>(), 100);
    }
}
