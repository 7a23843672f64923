//! Retries, only when safe: a call the node never received (connection refused, stream
//! refused, connection closed before sending) may go to another node; RouteMessage, which
//! is idempotent by contract, and methods the policy marks idempotent may also be retried
//! when a node answers UNAVAILABLE. One [`RetryDriver`] runs the attempts of every call;
//! every retry is paid from a [`RetryBudget`], so a failing federation sees a bounded
//! share of extra traffic instead of a retry storm. The bodies kept to replay idempotent
//! calls are bounded per call and proxy-wide by a [`BufferBudget`]. A call whose service
//! has no usable node, or still fails retryably after its attempts, goes on to the
//! service's fallback services in order ([`FallbackChain`]), within the same budget and
//! deadline.

pub mod budget;
pub mod buffer_budget;
pub mod driver;

pub use self::budget::RetryBudget;
pub use self::buffer_budget::{BufferBudget, OverCap, Reservation};
pub use self::driver::{Attempt, Candidates, Delivered, Failure, FallbackChain, RetryDriver};

/// The endpoints (indices into one balancer's endpoints) a call has already tried, so its
/// retries go elsewhere. Kept inline: the request path allocates nothing for it. Holds up
/// to [`TriedEndpoints::CAPACITY`] indices, more than the attempts a policy may ask for
/// (at most 10, checked by the control plane); past that, further ones are not remembered.
#[derive(Debug, Clone, Copy, Default)]
pub struct TriedEndpoints {
    indices: [usize; TriedEndpoints::CAPACITY],
    len: usize,
}

impl TriedEndpoints {
    pub const CAPACITY: usize = 16;

    /// Remembers that the call tried endpoint `index`.
    pub fn insert(&mut self, index: usize) {
        if self.len < Self::CAPACITY && !self.contains(index) {
            self.indices[self.len] = index;
            self.len += 1;
        }
    }

    /// Whether the call already tried endpoint `index`.
    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&index)
    }
}

#[cfg(test)]
mod tests {
    use super::TriedEndpoints;

    #[test]
    fn tried_endpoints_remember_each_index_once_up_to_the_capacity() {
        let mut tried = TriedEndpoints::default();
        assert!(!tried.contains(0));
        tried.insert(3);
        tried.insert(3);
        tried.insert(0);
        assert!(tried.contains(3) && tried.contains(0) && !tried.contains(1));
        for i in 100..100 + TriedEndpoints::CAPACITY {
            tried.insert(i);
        }
        // Full: the first ones stay, the overflow is not remembered.
        assert!(tried.contains(3) && tried.contains(100));
        assert!(!tried.contains(100 + TriedEndpoints::CAPACITY - 1));
    }
}
