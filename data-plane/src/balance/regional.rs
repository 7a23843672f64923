//! Locality for every algorithm: the service's endpoints grouped by region — the proxy's
//! own first, then the other regions nearest first by great-circle distance — with the
//! policy's algorithm picking inside a region. This is how forwarded calls (and
//! RouteMessage with `global_routing`) stay in the proxy's region by default, whatever the
//! algorithm, unless the service policy sets `global_routing`.
//!
//! A region keeps the traffic its usable capacity can take by the rule of the
//! `geographic` algorithm's locality tiers (Envoy's priority load): its ready share times
//! the overprovisioning factor (default 1.4), counted by warmth; the rest spills to the
//! next region. The share is of the region's members: its usable endpoints and the nodes
//! the control plane marked down but still lists ([`super::is_down_member`]), so a node
//! the health checker declared unhealthy weighs as one whose breaker opened. Losing one
//! node of five moves nothing; losing most of a region moves its traffic progressively;
//! losing all of it moves all. `geographic` keeps its own finer tiers (zone first) and is
//! not wrapped.
//!
//! Trade-off: a pick costs a pass over the endpoints of the regions it looks at (to count
//! ready ones; the members are counted when the table is built); a single-region service
//! pays nothing, as
//! [`build_for_locality`](super::build_for_locality) then returns the algorithm's own
//! balancer.

use std::sync::Arc;

use meridian_shared::domain::{AdaptivePolicy, Algorithm, FailoverPolicy};

use super::{Balancer, Locality, Pick, PickContext};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct RegionTiers {
    /// Every endpoint, region by region in tier order.
    endpoints: Vec<Arc<Endpoint>>,
    tiers: Vec<RegionTier>,
    /// Envoy's overprovisioning factor, in percent (140 = 1.4).
    overprovisioning_percent: f64,
}

/// The endpoints of one region and the algorithm's balancer over them.
#[derive(Debug)]
struct RegionTier {
    /// Where the tier's endpoints start in [`RegionTiers::endpoints`].
    offset: usize,
    balancer: Box<dyn Balancer>,
    /// Its members: its endpoints and its nodes that are down.
    members: usize,
}

impl RegionTiers {
    /// Tiers over `endpoints` by region as seen from `locality`, the algorithm's balancer
    /// in each; `down` (members that are down) count in their region's members.
    pub fn new(
        algorithm: Algorithm,
        endpoints: Vec<Arc<Endpoint>>,
        down: &[Arc<Endpoint>],
        locality: &Locality,
        failover: &FailoverPolicy,
        adaptive: &AdaptivePolicy,
    ) -> Self {
        let mut regions: Vec<&str> = endpoints.iter().map(|e| e.node.region.as_str()).collect();
        regions.sort_by(|a, b| {
            let distance = |r: &str| (r != locality.region, locality.distance(r));
            distance(a)
                .partial_cmp(&distance(b))
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| a.cmp(b))
        });
        regions.dedup();
        let regions: Vec<String> = regions.into_iter().map(str::to_owned).collect();
        let mut ordered = Vec::with_capacity(endpoints.len());
        let mut tiers = Vec::with_capacity(regions.len());
        for region in &regions {
            let members: Vec<Arc<Endpoint>> = endpoints
                .iter()
                .filter(|e| e.node.region == *region)
                .cloned()
                .collect();
            let region_down: Vec<Arc<Endpoint>> = down
                .iter()
                .filter(|e| e.node.region == *region)
                .cloned()
                .collect();
            tiers.push(RegionTier {
                offset: ordered.len(),
                members: members.len() + region_down.len(),
                balancer: super::build(
                    algorithm,
                    members.clone(),
                    &region_down,
                    locality,
                    failover,
                    adaptive,
                ),
            });
            ordered.extend(members);
        }
        RegionTiers {
            endpoints: ordered,
            tiers,
            overprovisioning_percent: f64::from(failover.effective_overprovisioning_percent()),
        }
    }

    /// The share of traffic (percent) `tier` keeps out of the `remaining`: its ready
    /// endpoints (by warmth) over its members, times the overprovisioning factor. What one
    /// call has tried does not count here: a retry stays in the region while it has an
    /// untried endpoint.
    fn tier_load(&self, tier: &RegionTier, remaining: f64) -> f64 {
        let ready: f64 = tier
            .balancer
            .endpoints()
            .iter()
            .filter(|e| e.is_ready())
            .map(|e| e.warmth())
            .sum();
        let load = ready * self.overprovisioning_percent / tier.members.max(1) as f64;
        load.min(100.0).min(remaining)
    }

    /// The pick of `tier`'s balancer, as an index into every endpoint.
    fn pick_in(
        &self,
        tier: &RegionTier,
        ctx: &PickContext<'_>,
        excluded: &dyn Fn(usize) -> bool,
    ) -> Option<Pick> {
        let offset = tier.offset;
        let pick = tier
            .balancer
            .pick_excluding(ctx, &|i| excluded(offset + i))?;
        Some(Pick {
            index: offset + pick.index,
            reason: pick.reason,
            compared_with: pick.compared_with.map(|i| offset + i),
        })
    }

    fn pick_unless(&self, ctx: &PickContext<'_>, excluded: &dyn Fn(usize) -> bool) -> Option<Pick> {
        let mut draw = rand::random::<f64>() * 100.0;
        let mut remaining = 100.0;
        for tier in &self.tiers {
            let load = self.tier_load(tier, remaining);
            remaining -= load;
            if draw >= load {
                draw -= load;
                continue;
            }
            if let Some(pick) = self.pick_in(tier, ctx, excluded) {
                return Some(pick);
            }
        }
        // Every region is degraded (the shares add up to less than 100 %), or readiness
        // changed since it was counted: the nearest region with a pick.
        self.tiers
            .iter()
            .find_map(|tier| self.pick_in(tier, ctx, excluded))
    }
}

impl Balancer for RegionTiers {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<Pick> {
        self.pick_unless(ctx, &|_| false)
    }

    /// The region is drawn as for a first attempt; inside it, an endpoint the call has
    /// not tried; a region with none left passes the call to the next one.
    fn pick_excluding(
        &self,
        ctx: &PickContext<'_>,
        excluded: &dyn Fn(usize) -> bool,
    ) -> Option<Pick> {
        self.pick_unless(ctx, excluded)
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::GeoPoint;
    use meridian_shared::domain::Region;

    use super::super::test_support::{counts, endpoint, open_breaker};
    use super::*;

    fn locality() -> Locality {
        let region = |name: &str, latitude, longitude| Region {
            name: name.into(),
            location: GeoPoint {
                latitude,
                longitude,
            },
            ..Default::default()
        };
        Locality::new(
            "eu-west",
            "eu-west-a",
            &[
                region("eu-west", 53.35, -6.26),
                region("us-east", 38.9, -77.04),
                region("ap-south", 19.08, 72.88),
            ],
        )
    }

    /// Two nodes in each of eu-west (the proxy's), us-east and ap-south, listed far first.
    fn tiers(algorithm: Algorithm) -> RegionTiers {
        let endpoints = vec![
            endpoint("ap-1", "ap-south", "ap-south-a", 1),
            endpoint("us-1", "us-east", "us-east-a", 1),
            endpoint("eu-1", "eu-west", "eu-west-a", 1),
            endpoint("ap-2", "ap-south", "ap-south-a", 1),
            endpoint("us-2", "us-east", "us-east-a", 1),
            endpoint("eu-2", "eu-west", "eu-west-b", 1),
        ];
        RegionTiers::new(
            algorithm,
            endpoints,
            &[],
            &locality(),
            &Default::default(),
            &Default::default(),
        )
    }

    fn region_counts(balancer: &RegionTiers, picks: usize) -> [usize; 3] {
        let picked = counts(
            balancer.endpoints().len(),
            (0..picks).map(|_| balancer.pick(&PickContext::default()).unwrap().index),
        );
        let mut by_region = [0; 3];
        for (i, count) in picked.into_iter().enumerate() {
            let tier = match balancer.endpoints()[i].node.region.as_str() {
                "eu-west" => 0,
                "us-east" => 1,
                _ => 2,
            };
            by_region[tier] += count;
        }
        by_region
    }

    #[test]
    fn regions_are_ordered_home_first_then_by_distance() {
        let balancer = tiers(Algorithm::RoundRobin);
        let regions: Vec<&str> = balancer
            .endpoints()
            .iter()
            .map(|e| e.node.region.as_str())
            .collect();
        assert_eq!(
            regions,
            [
                "eu-west", "eu-west", "us-east", "us-east", "ap-south", "ap-south"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_algorithm_keeps_calls_home_while_the_region_is_healthy() {
        for algorithm in Algorithm::ALL
            .into_iter()
            .filter(|a| *a != Algorithm::Geographic)
        {
            let balancer = tiers(algorithm);
            for key in 0..200u32 {
                let key = key.to_be_bytes();
                let pick = balancer
                    .pick(&PickContext {
                        affinity: Some(&key),
                    })
                    .unwrap();
                assert_eq!(
                    balancer.endpoints()[pick.index].node.region,
                    "eu-west",
                    "{algorithm} left a healthy home region"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_region_short_of_capacity_spills_its_excess_to_the_nearest_region() {
        let balancer = tiers(Algorithm::LeastConnections);
        // One of two home endpoints ready: 50 % × 1.4 = 70 % stays home.
        open_breaker(&balancer.endpoints()[0]);
        let [home, near, far] = region_counts(&balancer, 4_000);
        assert!((2_550..=3_050).contains(&home), "home took {home} of 4000");
        assert!((950..=1_450).contains(&near), "us-east took {near} of 4000");
        assert_eq!(far, 0, "the nearer region had room");

        // The home region gone: all of it to us-east, none farther.
        open_breaker(&balancer.endpoints()[1]);
        assert_eq!(region_counts(&balancer, 500), [0, 500, 0]);
    }

    /// eu-west's three nodes, `down` of them marked down by the control plane (members the
    /// table lists but does not route to), and two nodes in each other region, as the
    /// table hands them over: the usable endpoints and the members that are down.
    fn home_with_down(algorithm: Algorithm, down: usize) -> RegionTiers {
        let home: Vec<Arc<Endpoint>> = (0..3)
            .map(|i| endpoint(&format!("eu-{i}"), "eu-west", "eu-west-a", 1))
            .collect();
        let (down, up) = home.split_at(down);
        let mut usable = up.to_vec();
        usable.extend([
            endpoint("us-1", "us-east", "us-east-a", 1),
            endpoint("us-2", "us-east", "us-east-a", 1),
            endpoint("ap-1", "ap-south", "ap-south-a", 1),
            endpoint("ap-2", "ap-south", "ap-south-a", 1),
        ]);
        RegionTiers::new(
            algorithm,
            usable,
            down,
            &locality(),
            &Default::default(),
            &Default::default(),
        )
    }

    #[test]
    fn nodes_the_control_plane_marked_down_still_count_in_their_regions_total() {
        const PICKS: usize = 20_000;
        for algorithm in [Algorithm::LeastConnections, Algorithm::RoundRobin] {
            // All three up: 1.4 × 3/3 ≥ 100 %, everything stays.
            assert_eq!(
                region_counts(&home_with_down(algorithm, 0), 2_000),
                [2_000, 0, 0]
            );
            // One of three down: 1.4 × 2/3 = 93.3 % stays, 6.7 % spills.
            let [home, near, far] = region_counts(&home_with_down(algorithm, 1), PICKS);
            assert!(
                (18_340..=18_990).contains(&home),
                "{algorithm}: home kept {home} of {PICKS}, the rule says 18,667"
            );
            assert_eq!((near + far, far), (PICKS - home, 0), "{algorithm}");
            // Two of three down: 1.4 × 1/3 = 46.7 % stays, 53.3 % spills to us-east.
            let [home, near, far] = region_counts(&home_with_down(algorithm, 2), PICKS);
            assert!(
                (8_930..=9_730).contains(&home),
                "{algorithm}: home kept {home} of {PICKS}, the rule says 9,333"
            );
            assert_eq!((near + far, far), (PICKS - home, 0), "{algorithm}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_leaves_the_region_only_when_it_has_no_untried_endpoint() {
        let balancer = tiers(Algorithm::RoundRobin);
        let tried_eu1 = |i: usize| i == 0;
        for _ in 0..50 {
            let pick = balancer
                .pick_excluding(&PickContext::default(), &tried_eu1)
                .unwrap();
            assert_eq!(balancer.endpoints()[pick.index].node.id, "eu-2");
        }
        let tried_home = |i: usize| i < 2;
        let pick = balancer
            .pick_excluding(&PickContext::default(), &tried_home)
            .unwrap();
        assert_eq!(balancer.endpoints()[pick.index].node.region, "us-east");
    }
}
