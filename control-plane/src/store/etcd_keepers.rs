//! Open etcd lease keep-alive streams, reused. Opening etcd's `LeaseKeepAlive` stream
//! costs a gRPC stream set-up and a round trip of its own; a node renewing its lease
//! every few seconds would pay that on every renewal. Here each lease renewed through
//! this replica keeps one stream open and each renewal is one message on it. Streams
//! unused for [`IDLE`] are closed (their node went away or renews through another
//! replica); a stream that fails is dropped and the next renewal opens a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use super::LeaseId;

/// How long an unused keep-alive stream stays open.
const IDLE: Duration = Duration::from_secs(60);

/// One lease's open stream: the sending half and its answers.
pub struct Keeper {
    pub keeper: LeaseKeeper,
    pub responses: LeaseKeepAliveStream,
}

/// A keeper shared by the renewals of one lease; renewals of a lease take turns.
pub type SharedKeeper = Arc<tokio::sync::Mutex<Keeper>>;

#[derive(Default)]
pub struct Keepers {
    open: Mutex<HashMap<LeaseId, (SharedKeeper, Instant)>>,
}

impl Keepers {
    /// The open stream of `lease`, if there is one.
    pub fn get(&self, lease: LeaseId) -> Option<SharedKeeper> {
        let mut open = self.lock();
        let (keeper, used) = open.get_mut(&lease)?;
        *used = Instant::now();
        Some(Arc::clone(keeper))
    }

    /// Keeps `keeper` open for the next renewals of `lease`; closes idle streams.
    pub fn insert(&self, lease: LeaseId, keeper: Keeper) {
        let now = Instant::now();
        let mut open = self.lock();
        open.retain(|_, (_, used)| now.duration_since(*used) < IDLE);
        open.insert(lease, (Arc::new(tokio::sync::Mutex::new(keeper)), now));
    }

    /// Closes the stream of `lease` (it failed, or the lease is gone).
    pub fn remove(&self, lease: LeaseId) {
        self.lock().remove(&lease);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LeaseId, (SharedKeeper, Instant)>> {
        self.open.lock().expect("lease keepers lock poisoned")
    }
}
