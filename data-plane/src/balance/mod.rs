//! Balancers: how a proxy picks an endpoint of a service, one algorithm per file. A
//! balancer is built once per table version for one service, from the service's usable
//! endpoints and the proxy's locality, so that anything costly (hash rings, weighted
//! schedules, locality tiers) is computed then and not per request; `pick` only reads
//! atomics and the prebuilt structure.

pub mod adaptive;
pub mod consistent_hash;
pub mod geographic;
pub mod least_connections;
pub mod locality;
pub mod random;
pub mod round_robin;
pub mod weighted;

use std::sync::Arc;

use meridian_shared::domain::Algorithm;

pub use self::locality::Locality;
use crate::endpoint::Endpoint;

/// What a pick may depend on besides the endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// The affinity key for consistent hashing (message key, request header, or the
    /// client's address); `None` when there is none.
    pub affinity: Option<&'a [u8]>,
}

/// A chosen endpoint and why, for routing decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// Index into the balancer's endpoints.
    pub index: usize,
    /// Why, in a few words, e.g. "fewer in-flight requests of 2 sampled".
    pub reason: &'static str,
    /// The other endpoint considered (power of two choices), if any.
    pub compared_with: Option<usize>,
}

/// Picks an endpoint; built per table version and service.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// One of the endpoints the balancer was built with, or `None` when it has none.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<Pick>;

    /// The endpoints, in the order `Pick::index` refers to.
    fn endpoints(&self) -> &[Arc<Endpoint>];
}

/// Builds the balancer of `algorithm` over `endpoints` (all usable), as seen from
/// `locality`.
pub fn build(
    algorithm: Algorithm,
    endpoints: Vec<Arc<Endpoint>>,
    locality: &Locality,
) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(endpoints)),
        Algorithm::Weighted => Box::new(weighted::Weighted::new(endpoints)),
        Algorithm::Random => Box::new(random::Random::new(endpoints)),
        Algorithm::LeastConnections => {
            Box::new(least_connections::LeastConnections::new(endpoints))
        }
        Algorithm::Adaptive => Box::new(adaptive::Adaptive::new(endpoints)),
        Algorithm::Geographic => Box::new(geographic::Geographic::new(endpoints, locality)),
        Algorithm::ConsistentHash => Box::new(consistent_hash::ConsistentHash::new(endpoints)),
    }
}

/// Power of two choices over `len` candidates: samples two distinct candidates uniformly
/// at random and keeps the one with the lower `load` (the first sampled on a tie, itself
/// random). Returns the kept candidate and the other one; with a single candidate, that one
/// and `None`; with none, `None`.
///
/// Why two and not the least loaded of all: comparing two random candidates avoids the
/// herd effect of every proxy sending to the same least-loaded endpoint on stale counters,
/// costs O(1) per pick, and still keeps the load spread exponentially tighter than random.
pub(crate) fn power_of_two_choices<L: PartialOrd>(
    len: usize,
    load: impl Fn(usize) -> L,
) -> Option<(usize, Option<usize>)> {
    match len {
        0 => None,
        1 => Some((0, None)),
        _ => {
            let first = rand::random_range(0..len);
            // Drawing the second from the other `len - 1` keeps the pair distinct without
            // retrying.
            let mut second = rand::random_range(0..len - 1);
            if second >= first {
                second += 1;
            }
            if load(second) < load(first) {
                Some((second, Some(first)))
            } else {
                Some((first, Some(second)))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Endpoints for the balancers' tests.

    use std::sync::Arc;

    use meridian_shared::domain::Node;

    use crate::endpoint::Endpoint;

    /// An endpoint for node `id` in `region`/`zone` with `weight`.
    pub fn endpoint(id: &str, region: &str, zone: &str, weight: u32) -> Arc<Endpoint> {
        Arc::new(Endpoint::new(Node {
            id: id.to_owned(),
            address: format!("{id}:50051"),
            region: region.to_owned(),
            zone: zone.to_owned(),
            weight,
            ..Default::default()
        }))
    }

    /// `n` endpoints `node-0`.. in one zone, weight 1.
    pub fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| endpoint(&format!("node-{i}"), "eu-west", "eu-west-a", 1))
            .collect()
    }

    /// How many of `picks` picks went to each endpoint index.
    pub fn counts(len: usize, picks: impl IntoIterator<Item = usize>) -> Vec<usize> {
        let mut counts = vec![0; len];
        for index in picks {
            counts[index] += 1;
        }
        counts
    }
}
