//! Balancers: how a proxy picks an endpoint of a service, one algorithm per file. A
//! balancer is built once per table version for one service, from the service's usable
//! endpoints, its members that are down ([`is_down_member`]: counted in a locality tier's
//! total by the spill rule, never picked) and the proxy's locality, so that anything
//! costly (hash rings, weighted schedules, locality tiers and their member counts) is
//! computed then and not per request; `pick` only reads atomics and the prebuilt
//! structure.

pub mod adaptive;
pub mod consistent_hash;
pub mod geographic;
pub mod least_connections;
pub mod locality;
pub mod prober;
pub mod random;
pub mod regional;
pub mod round_robin;
pub mod weighted;

use std::sync::Arc;

use meridian_shared::domain::{AdaptivePolicy, Algorithm, FailoverPolicy, NodeStatus};

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

    /// Like [`Balancer::pick`], but never an endpoint `excluded` rejects (those this call
    /// already failed on, whose breakers may not have opened yet), so a retry goes to
    /// another node; `None` when every ready endpoint is excluded. Resamples a few times,
    /// then takes the next ready endpoint (consistent hashing would keep answering the
    /// same one); balancers with a preference order among endpoints override this.
    fn pick_excluding(
        &self,
        ctx: &PickContext<'_>,
        excluded: &dyn Fn(usize) -> bool,
    ) -> Option<Pick> {
        let first = self.pick(ctx)?;
        if !excluded(first.index) {
            return Some(first);
        }
        if let Some(pick) = (0..3)
            .filter_map(|_| self.pick(ctx))
            .find(|p| !excluded(p.index))
        {
            return Some(pick);
        }
        let endpoints = self.endpoints();
        let index = (1..endpoints.len())
            .map(|k| (first.index + k) % endpoints.len())
            .find(|&i| !excluded(i) && endpoints[i].is_ready())?;
        Some(Pick {
            index,
            reason: "next ready endpoint this call has not tried",
            compared_with: None,
        })
    }

    /// The endpoints, in the order `Pick::index` refers to.
    fn endpoints(&self) -> &[Arc<Endpoint>];
}

/// Whether a node in `status` is a member of its service that is down: counted in its
/// locality tier's total by the overprovisioning rule (so its tier spills its share), never
/// picked. As Envoy counts a priority's hosts, which EDS marks UNHEALTHY or DRAINING
/// without removing them: the health checker's verdicts (unhealthy, quarantined) and an
/// operator's (draining, failed) are capacity the tier was built with and has lost for
/// now. A lost node (its lease lapsed) leaves the table like a host EDS removes and counts
/// nowhere; unknown and healthy nodes are usable.
pub fn is_down_member(status: NodeStatus) -> bool {
    matches!(
        status,
        NodeStatus::Unhealthy | NodeStatus::Quarantined | NodeStatus::Draining | NodeStatus::Failed
    )
}

/// Builds the balancer of `algorithm` over `endpoints` (all usable), as seen from
/// `locality`; `down` are the service's members that are down ([`is_down_member`]), which
/// only the locality tiers of `geographic` count; `adaptive` tunes the adaptive algorithm.
pub fn build(
    algorithm: Algorithm,
    endpoints: Vec<Arc<Endpoint>>,
    down: &[Arc<Endpoint>],
    locality: &Locality,
    failover: &FailoverPolicy,
    adaptive: &AdaptivePolicy,
) -> Box<dyn Balancer> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(round_robin::RoundRobin::new(endpoints)),
        Algorithm::Weighted => Box::new(weighted::Weighted::new(endpoints)),
        Algorithm::Random => Box::new(random::Random::new(endpoints)),
        Algorithm::LeastConnections => {
            Box::new(least_connections::LeastConnections::new(endpoints))
        }
        Algorithm::Adaptive => Box::new(adaptive::Adaptive::new(endpoints, adaptive)),
        Algorithm::Geographic => Box::new(geographic::Geographic::new(
            endpoints, down, locality, failover,
        )),
        Algorithm::ConsistentHash => Box::new(consistent_hash::ConsistentHash::new(endpoints)),
    }
}

/// The balancer of `algorithm` over `endpoints` (all usable) for calls that may leave the
/// proxy's region: locality first ([`regional`]: the proxy's region while it has usable
/// capacity, then the nearest others) unless `global_routing` asks for the algorithm over
/// every region. `geographic` has its own tiers; endpoints all in one region need none.
/// `down` (the service's members that are down) count in their region's total, so a
/// region whose nodes the control plane marked down spills as one whose breakers opened.
pub fn build_for_locality(
    algorithm: Algorithm,
    endpoints: Vec<Arc<Endpoint>>,
    down: &[Arc<Endpoint>],
    locality: &Locality,
    failover: &FailoverPolicy,
    adaptive: &AdaptivePolicy,
    global_routing: bool,
) -> Box<dyn Balancer> {
    let one_region = endpoints.iter().all(|e| {
        endpoints
            .first()
            .is_some_and(|f| f.node.region == e.node.region)
    });
    if global_routing || one_region || algorithm == Algorithm::Geographic {
        return build(algorithm, endpoints, down, locality, failover, adaptive);
    }
    Box::new(regional::RegionTiers::new(
        algorithm, endpoints, down, locality, failover, adaptive,
    ))
}

/// Power of two choices among the ready endpoints: sample two distinct endpoints and
/// take the one with the lower `load`. An unready sample loses to a ready one; a warming
/// sample (slow start) takes part with probability `warmth`, so its share ramps up; when
/// neither sample takes part, the first ready endpoint from a random start is taken;
/// `None` when no endpoint is ready.
pub(crate) fn power_of_two_choices<L: PartialOrd>(
    len: usize,
    ready: impl Fn(usize) -> bool,
    warmth: impl Fn(usize) -> f64,
    load: impl Fn(usize) -> L,
) -> Option<(usize, Option<usize>)> {
    let admitted = |i: usize| {
        ready(i) && {
            let w = warmth(i);
            w >= 1.0 || rand::random::<f64>() < w
        }
    };
    match len {
        0 => None,
        1 => ready(0).then_some((0, None)),
        _ => {
            let first = rand::random_range(0..len);
            // Drawing the second from the other `len - 1` keeps the pair distinct without
            // retrying.
            let mut second = rand::random_range(0..len - 1);
            if second >= first {
                second += 1;
            }
            match (admitted(first), admitted(second)) {
                (true, true) if load(second) < load(first) => Some((second, Some(first))),
                (true, true) => Some((first, Some(second))),
                (true, false) => Some((first, None)),
                (false, true) => Some((second, None)),
                (false, false) => first_ready(len, first, ready).map(|i| (i, None)),
            }
        }
    }
}

/// The first ready index at or after `start`, wrapping around; `None` when none is.
pub(crate) fn first_ready(
    len: usize,
    start: usize,
    ready: impl Fn(usize) -> bool,
) -> Option<usize> {
    (0..len).map(|k| (start + k) % len).find(|&i| ready(i))
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Endpoints for the balancers' tests.

    use std::sync::Arc;

    use meridian_shared::domain::Node;

    use crate::endpoint::Endpoint;

    /// Opens `e`'s breaker. It half-opens after 1 s, so tests that pick behind it run in
    /// paused time, where a slow machine cannot get them there.
    pub fn open_breaker(e: &Endpoint) {
        for _ in 0..crate::endpoint::BreakerSettings::default().threshold {
            e.breaker.record_failure();
        }
    }

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

#[cfg(test)]
mod readiness_tests {
    //! Every algorithm picks only ready endpoints: an endpoint whose breaker is open gets
    //! no calls, and with no ready endpoint there is no pick (the proxy fails fast).

    use meridian_shared::domain::Algorithm;

    use super::test_support::{endpoint, endpoints, open_breaker};
    use super::{Locality, PickContext, build};

    #[tokio::test(start_paused = true)]
    async fn no_algorithm_picks_an_endpoint_whose_breaker_is_open() {
        let locality = Locality::new("eu-west", "eu-west-a", &[]);
        for algorithm in Algorithm::ALL {
            let mut eps = endpoints(3);
            eps.push(endpoint("far", "us-east", "us-east-a", 1));
            open_breaker(&eps[0]);
            let balancer = build(
                algorithm,
                eps.clone(),
                &[],
                &locality,
                &Default::default(),
                &Default::default(),
            );
            for key in 0..300u32 {
                let key = key.to_be_bytes();
                let pick = balancer
                    .pick(&PickContext {
                        affinity: Some(&key),
                    })
                    .unwrap_or_else(|| panic!("{algorithm}: no pick with 3 ready endpoints"));
                assert_ne!(
                    balancer.endpoints()[pick.index].node.id,
                    "node-0",
                    "{algorithm} picked a broken endpoint"
                );
            }
            for e in &eps {
                open_breaker(e);
            }
            assert!(
                balancer.pick(&PickContext::default()).is_none(),
                "{algorithm}: picked although no endpoint is ready"
            );
        }
    }
}

#[cfg(test)]
mod retry_pick_tests {
    //! Every algorithm's retry pick (`pick_excluding`) skips the endpoints the call has
    //! tried while an untried ready one exists, and gives up only when none is left.

    use meridian_shared::domain::Algorithm;

    use super::test_support::{endpoint, endpoints, open_breaker};
    use super::{Locality, PickContext, build};

    #[tokio::test(start_paused = true)]
    async fn no_algorithm_retries_on_a_tried_endpoint_while_an_untried_one_is_ready() {
        let locality = Locality::new("eu-west", "eu-west-a", &[]);
        for algorithm in Algorithm::ALL {
            let mut eps = endpoints(3);
            eps.push(endpoint("far", "us-east", "us-east-a", 1));
            let balancer = build(
                algorithm,
                eps,
                &[],
                &locality,
                &Default::default(),
                &Default::default(),
            );
            let len = balancer.endpoints().len();
            // Every set of tried endpoints but the full one, as a bit mask.
            for mask in 0..(1u32 << len) - 1 {
                let tried = |i: usize| mask & (1 << i) != 0;
                for key in 0..50u32 {
                    let key = key.to_be_bytes();
                    let ctx = PickContext {
                        affinity: Some(&key),
                    };
                    let pick = balancer.pick_excluding(&ctx, &tried).unwrap_or_else(|| {
                        panic!("{algorithm}: no retry pick with tried mask {mask:#b}")
                    });
                    assert!(
                        !tried(pick.index),
                        "{algorithm} retried on tried endpoint {} (tried mask {mask:#b})",
                        balancer.endpoints()[pick.index].node.id
                    );
                }
            }
            assert!(
                balancer
                    .pick_excluding(&PickContext::default(), &|_| true)
                    .is_none(),
                "{algorithm}: a retry pick although every endpoint was tried"
            );
        }
    }

    #[tokio::test]
    async fn an_untried_endpoint_whose_breaker_is_open_is_no_retry_target() {
        let locality = Locality::new("eu-west", "eu-west-a", &[]);
        for algorithm in Algorithm::ALL {
            let eps = endpoints(3);
            open_breaker(&eps[2]);
            let balancer = build(
                algorithm,
                eps,
                &[],
                &locality,
                &Default::default(),
                &Default::default(),
            );
            let id = |i: usize| balancer.endpoints()[i].node.id.as_str();
            let tried_0 = |i: usize| id(i) == "node-0";
            for key in 0..100u32 {
                let key = key.to_be_bytes();
                let ctx = PickContext {
                    affinity: Some(&key),
                };
                let pick = balancer.pick_excluding(&ctx, &tried_0);
                assert_eq!(
                    pick.map(|p| id(p.index)),
                    Some("node-1"),
                    "{algorithm}: node-1 is the only untried ready endpoint"
                );
            }
            let tried_0_and_1 = |i: usize| id(i) != "node-2";
            assert!(
                balancer
                    .pick_excluding(&PickContext::default(), &tried_0_and_1)
                    .is_none(),
                "{algorithm}: a retry pick although only a broken endpoint is untried"
            );
        }
    }
}
