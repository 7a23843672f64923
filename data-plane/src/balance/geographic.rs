//! Geographic: prefer the endpoints nearest the proxy, in locality tiers: the proxy's zone,
//! then the rest of its region, then each other region by great-circle distance — or, when
//! the service policy lists explicit failover tiers (backup groups), those, in order.
//! Inside a tier, power of two choices over in-flight requests.
//!
//! Spill-over follows Envoy's priority load: a tier whose ready share times the
//! overprovisioning factor (default 1.4) is below 100 % keeps only that share of the
//! traffic and spills the rest to the next tier, so losing a few endpoints moves nothing
//! while losing most of a tier moves its traffic progressively. A tier's share is of its
//! members: its usable endpoints and the nodes the control plane marked down but still
//! lists ([`super::is_down_member`]), as Envoy counts a priority's unhealthy hosts. Below
//! the panic threshold (default 50 % of all members healthy, down ones counted as Envoy's
//! healthy / total over all hosts) the balancer routes to every usable endpoint, breaker
//! open or not, rather than overload the few left; with none healthy at all it fails fast
//! (the breakers' half-open probes bring endpoints back).
//!
//! Trade-off: keeps traffic local, which saves cross-zone and cross-region latency and
//! transfer cost and keeps a region's failure from spreading, at the price of uneven load
//! across tiers: the nearest tier takes everything while it has endpoints. Choose it for
//! services deployed in several zones or regions where locality matters more than spreading.
//!
//! Tiers are computed once per table version in [`Geographic::new`]; [`Geographic::tiers`]
//! exposes them for spill-over (moving to the next tier when a tier lacks healthy capacity),
//! which builds on this ordering.

use std::sync::Arc;

use meridian_shared::domain::{FailoverPolicy, Node};

use super::{Balancer, Locality, Pick, PickContext, power_of_two_choices};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct Geographic {
    endpoints: Vec<Arc<Endpoint>>,
    /// Nearest first; only tiers with endpoints.
    tiers: Vec<LocalityTier>,
    /// Every member: the endpoints and the nodes that are down.
    members: usize,
    /// Envoy's overprovisioning factor, in percent (140 = 1.4).
    overprovisioning_percent: u64,
    /// Below this share of ready endpoints (percent), route to all of them.
    panic_threshold_percent: u64,
}

/// Endpoints at one distance from the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityTier {
    pub kind: TierKind,
    /// The region the tier's endpoints are in.
    pub region: String,
    /// Indices into the balancer's endpoints.
    pub endpoints: Vec<usize>,
    /// Its members that are down (not among the endpoints), counted in its total.
    pub down: usize,
}

/// Where a tier is, relative to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierKind {
    /// The proxy's own zone (same region and zone).
    Zone,
    /// The proxy's region, other zones (or no zone).
    Region,
    /// Another region; `rank` 0 is the nearest.
    OtherRegion { rank: usize },
    /// An explicit tier (backup group) of the service policy; `rank` 0 is the primary.
    Explicit { rank: usize },
}

// === impl Geographic ===

impl Geographic {
    /// Tiers over `endpoints` (usable) as seen from `locality`, or by the policy's explicit
    /// tiers; `down` (members that are down) count in the total of the tier they are in.
    pub fn new(
        endpoints: Vec<Arc<Endpoint>>,
        down: &[Arc<Endpoint>],
        locality: &Locality,
        failover: &FailoverPolicy,
    ) -> Self {
        let mut tiers = if failover.tiers.is_empty() {
            tiers(&endpoints, locality)
        } else {
            explicit_tiers(&endpoints, failover)
        };
        for tier in &mut tiers {
            tier.down = down
                .iter()
                .filter(|e| tier.holds(&e.node, locality, failover))
                .count();
        }
        Geographic {
            members: endpoints.len() + down.len(),
            endpoints,
            tiers,
            overprovisioning_percent: u64::from(failover.effective_overprovisioning_percent()),
            panic_threshold_percent: u64::from(failover.effective_panic_threshold_percent()),
        }
    }

    /// How much traffic (out of 100 × the number of tiers, to keep integers) each tier
    /// takes, in tier order, given how many of its endpoints are `usable`; the sum may be
    /// under 100 when every tier is degraded (then picks are spread over what there is).
    fn tier_load(
        &self,
        tier: &LocalityTier,
        remaining: u64,
        usable: &dyn Fn(usize) -> bool,
    ) -> u64 {
        let total = (tier.endpoints.len() + tier.down) as u64;
        // Usable endpoints count by their warmth, so a recovering tier takes its traffic
        // back gradually (slow start) instead of all at once.
        let ready: f64 = tier
            .endpoints
            .iter()
            .filter(|&&i| usable(i))
            .map(|&i| self.endpoints[i].warmth())
            .sum();
        let health = ((ready * self.overprovisioning_percent as f64) / total.max(1) as f64) as u64;
        let health = health.min(100);
        health.min(remaining)
    }

    /// The locality tiers, nearest first; empty tiers are left out.
    pub fn tiers(&self) -> &[LocalityTier] {
        &self.tiers
    }

    /// A pick among the endpoints `excluded` does not reject. Panic routing is decided by
    /// the service's health (breakers) alone, not by what one call has tried or by how
    /// many endpoints are full; a full endpoint (its calls in flight at the per-node
    /// limit) is never picked, in panic or not.
    fn pick_unless(&self, excluded: &dyn Fn(usize) -> bool) -> Option<Pick> {
        if self.endpoints.is_empty() {
            return None;
        }
        let usable = |i: usize| !excluded(i) && self.endpoints[i].is_ready();
        let healthy = self
            .endpoints
            .iter()
            .filter(|e| e.breaker.is_ready())
            .count();
        if healthy == 0 {
            // Nothing is healthy: fail fast; the breakers' probes readmit endpoints.
            return None;
        }
        if (healthy as u64) * 100 < self.panic_threshold_percent * self.members as u64 {
            // Panic: too few healthy endpoints; use every one with room rather than none.
            let load = |i: usize| self.endpoints[i].in_flight();
            let has_room = |i: usize| !excluded(i) && !self.endpoints[i].is_full();
            let (index, other) =
                power_of_two_choices(self.endpoints.len(), has_room, |_| 1.0, load)?;
            return Some(Pick {
                index,
                reason: "panic routing: too few healthy endpoints, using all",
                compared_with: other,
            });
        }
        // Priority load: each tier takes its healthy share, the rest spills onward.
        let mut remaining = 100;
        let mut total = 0;
        for tier in &self.tiers {
            let load = self.tier_load(tier, remaining, &usable);
            remaining -= load;
            total += load;
        }
        // When no tier has a share (its usable endpoints are few and still warming), every
        // tier is skipped and the fallback below still finds one.
        let mut draw = rand::random_range(0..total.max(1));
        let mut remaining = 100;
        for tier in &self.tiers {
            let load = self.tier_load(tier, remaining, &usable);
            remaining -= load;
            if draw >= load {
                draw -= load;
                continue;
            }
            let ready = |position: usize| usable(tier.endpoints[position]);
            let load = |position: usize| self.endpoints[tier.endpoints[position]].in_flight();
            let warmth = |position: usize| self.endpoints[tier.endpoints[position]].warmth();
            if let Some((chosen, other)) =
                power_of_two_choices(tier.endpoints.len(), ready, warmth, load)
            {
                return Some(Pick {
                    index: tier.endpoints[chosen],
                    reason: tier.kind.reason(),
                    compared_with: other.map(|position| tier.endpoints[position]),
                });
            }
        }
        // Readiness changed between the passes, or no tier had a share: the nearest tier
        // with a usable endpoint.
        self.tiers.iter().find_map(|tier| {
            let ready = |position: usize| usable(tier.endpoints[position]);
            let load = |position: usize| self.endpoints[tier.endpoints[position]].in_flight();
            let warmth = |position: usize| self.endpoints[tier.endpoints[position]].warmth();
            let (chosen, other) = power_of_two_choices(tier.endpoints.len(), ready, warmth, load)?;
            Some(Pick {
                index: tier.endpoints[chosen],
                reason: tier.kind.reason(),
                compared_with: other.map(|position| tier.endpoints[position]),
            })
        })
    }
}

impl Balancer for Geographic {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        self.pick_unless(&|_| false)
    }

    /// Endpoints this call has tried count as not ready for it: their tier's share
    /// spills to the next tier as if their breakers were open, so a retry goes to the
    /// nearest endpoint not yet tried.
    fn pick_excluding(
        &self,
        _ctx: &PickContext<'_>,
        excluded: &dyn Fn(usize) -> bool,
    ) -> Option<Pick> {
        self.pick_unless(excluded)
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

// === impl LocalityTier ===

impl LocalityTier {
    /// Whether `node` belongs in this tier by the rule that formed it: where a member that
    /// is down counts.
    fn holds(&self, node: &Node, locality: &Locality, failover: &FailoverPolicy) -> bool {
        let home = node.region == locality.region;
        let in_zone = home && !locality.zone.is_empty() && node.zone == locality.zone;
        match self.kind {
            TierKind::Explicit { rank } => explicit_rank(node, failover) == rank,
            TierKind::Zone => in_zone,
            TierKind::Region => home && !in_zone,
            TierKind::OtherRegion { .. } => node.region == self.region,
        }
    }
}

// === impl TierKind ===

impl TierKind {
    /// Why a pick from this tier, for routing decisions. The region's name is the picked
    /// endpoint's `node.region` (a `&'static str` cannot carry it).
    pub fn reason(self) -> &'static str {
        match self {
            TierKind::Zone => "proxy's zone",
            TierKind::Region => "proxy's region",
            TierKind::OtherRegion { rank: 0 } => "nearest other region",
            TierKind::OtherRegion { .. } => "farther region",
            TierKind::Explicit { rank: 0 } => "primary failover tier",
            TierKind::Explicit { .. } => "backup failover tier",
        }
    }
}

/// Groups endpoints by the policy's explicit tiers, in order; endpoints in none of them
/// form a last tier.
fn explicit_tiers(endpoints: &[Arc<Endpoint>], failover: &FailoverPolicy) -> Vec<LocalityTier> {
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); failover.tiers.len() + 1];
    for (index, endpoint) in endpoints.iter().enumerate() {
        groups[explicit_rank(&endpoint.node, failover)].push(index);
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, members)| !members.is_empty())
        .map(|(rank, endpoints)| LocalityTier {
            kind: TierKind::Explicit { rank },
            region: failover
                .tiers
                .get(rank)
                .map(|t| t.name.clone())
                .unwrap_or_default(),
            endpoints,
            down: 0,
        })
        .collect()
}

/// The rank of the policy's first explicit tier that names `node` (its region, zone or
/// id); one past the last when none does.
fn explicit_rank(node: &Node, failover: &FailoverPolicy) -> usize {
    failover
        .tiers
        .iter()
        .position(|t| {
            t.regions.contains(&node.region)
                || t.zones.contains(&node.zone)
                || t.nodes.contains(&node.id)
        })
        .unwrap_or(failover.tiers.len())
}

/// Groups endpoints into tiers, nearest first: zone, region, then other regions by distance
/// (ties, such as regions of unknown location, by name).
fn tiers(endpoints: &[Arc<Endpoint>], locality: &Locality) -> Vec<LocalityTier> {
    let mut zone = Vec::new();
    let mut region = Vec::new();
    let mut others: Vec<(&str, Vec<usize>)> = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let node_region = endpoint.node.region.as_str();
        if node_region == locality.region {
            let in_zone = !locality.zone.is_empty() && endpoint.node.zone == locality.zone;
            let tier = if in_zone { &mut zone } else { &mut region };
            tier.push(index);
        } else if let Some((_, members)) = others.iter_mut().find(|(name, _)| *name == node_region)
        {
            members.push(index);
        } else {
            others.push((node_region, vec![index]));
        }
    }
    others.sort_by(|(a, _), (b, _)| {
        locality
            .distance(a)
            .total_cmp(&locality.distance(b))
            .then_with(|| a.cmp(b))
    });

    let home = [(TierKind::Zone, zone), (TierKind::Region, region)]
        .into_iter()
        .map(|(kind, endpoints)| (kind, locality.region.clone(), endpoints));
    let away = others
        .into_iter()
        .enumerate()
        .map(|(rank, (name, endpoints))| {
            (TierKind::OtherRegion { rank }, name.to_owned(), endpoints)
        });
    home.chain(away)
        .filter(|(_, _, endpoints)| !endpoints.is_empty())
        .map(|(kind, region, endpoints)| LocalityTier {
            kind,
            region,
            endpoints,
            down: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::{GeoPoint, Region};

    use super::*;
    use crate::balance::test_support::{endpoint, open_breaker};

    fn region(name: &str, latitude: f64, longitude: f64) -> Region {
        Region {
            name: name.to_owned(),
            location: GeoPoint {
                latitude,
                longitude,
            },
            ..Default::default()
        }
    }

    /// A proxy in Dublin, zone eu-west-a.
    /// A geographic balancer over `endpoints` for a proxy in Dublin, default policy.
    fn in_dublin(endpoints: Vec<Arc<Endpoint>>) -> Geographic {
        Geographic::new(endpoints, &[], &dublin_proxy(), &FailoverPolicy::default())
    }

    fn dublin_proxy() -> Locality {
        let regions = [
            region("eu-west", 53.35, -6.26),  // Dublin
            region("us-east", 38.9, -77.04),  // Washington, ~5,400 km
            region("ap-south", 19.08, 72.88), // Mumbai, ~8,300 km
            region("aa-far", -33.87, 151.21), // Sydney, ~17,000 km; name sorts first
        ];
        Locality::new("eu-west", "eu-west-a", &regions)
    }

    fn all_endpoints() -> Vec<Arc<Endpoint>> {
        vec![
            endpoint("ap-1", "ap-south", "ap-south-a", 1),
            endpoint("zone-1", "eu-west", "eu-west-a", 1),
            endpoint("us-1", "us-east", "us-east-a", 1),
            endpoint("zone-2", "eu-west", "eu-west-a", 1),
            endpoint("region-1", "eu-west", "eu-west-b", 1),
            endpoint("syd-1", "aa-far", "aa-far-a", 1),
            endpoint("us-2", "us-east", "us-east-b", 1),
            endpoint("region-2", "eu-west", "eu-west-b", 1),
        ]
    }

    fn without(prefix: &str, endpoints: &[Arc<Endpoint>]) -> Vec<Arc<Endpoint>> {
        endpoints
            .iter()
            .filter(|e| !e.node.id.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The node ids 1,000 picks went to, and the reasons given.
    fn picked(balancer: &Geographic) -> (Vec<&str>, Vec<&'static str>) {
        let ctx = PickContext::default();
        let picks: Vec<Pick> = (0..1_000).filter_map(|_| balancer.pick(&ctx)).collect();
        let mut ids: Vec<&str> = picks
            .iter()
            .map(|p| balancer.endpoints()[p.index].node.id.as_str())
            .collect();
        let mut reasons: Vec<&'static str> = picks.iter().map(|p| p.reason).collect();
        ids.sort_unstable();
        ids.dedup();
        reasons.dedup();
        (ids, reasons)
    }

    #[test]
    fn tiers_go_zone_region_then_regions_by_distance() {
        let balancer = in_dublin(all_endpoints());
        let tiers: Vec<(TierKind, &str, Vec<&str>)> = balancer
            .tiers()
            .iter()
            .map(|t| {
                let ids = t
                    .endpoints
                    .iter()
                    .map(|&i| balancer.endpoints()[i].node.id.as_str())
                    .collect();
                (t.kind, t.region.as_str(), ids)
            })
            .collect();
        assert_eq!(
            tiers,
            vec![
                (TierKind::Zone, "eu-west", vec!["zone-1", "zone-2"]),
                (TierKind::Region, "eu-west", vec!["region-1", "region-2"]),
                (
                    TierKind::OtherRegion { rank: 0 },
                    "us-east",
                    vec!["us-1", "us-2"]
                ),
                (TierKind::OtherRegion { rank: 1 }, "ap-south", vec!["ap-1"]),
                (TierKind::OtherRegion { rank: 2 }, "aa-far", vec!["syd-1"]),
            ]
        );
    }

    #[test]
    fn picks_stay_in_the_nearest_tier_with_endpoints() {
        let everything = all_endpoints();
        let locality = dublin_proxy();

        let in_zone = Geographic::new(
            everything.clone(),
            &[],
            &locality,
            &FailoverPolicy::default(),
        );
        assert_eq!(
            picked(&in_zone),
            (vec!["zone-1", "zone-2"], vec!["proxy's zone"])
        );

        // The zone's endpoints leave: the rest of the region, not a nearer-looking index.
        let no_zone = without("zone-", &everything);
        let in_region =
            Geographic::new(no_zone.clone(), &[], &locality, &FailoverPolicy::default());
        assert_eq!(
            picked(&in_region),
            (vec!["region-1", "region-2"], vec!["proxy's region"])
        );

        // The whole region leaves: Washington is nearer Dublin than Mumbai or Sydney.
        let no_region = without("region-", &no_zone);
        let abroad = Geographic::new(no_region, &[], &locality, &FailoverPolicy::default());
        assert_eq!(
            picked(&abroad),
            (vec!["us-1", "us-2"], vec!["nearest other region"])
        );
    }

    #[test]
    fn a_retry_skips_the_endpoints_it_tried_as_if_their_breakers_were_open() {
        // Right after a loss the failed endpoints' breakers are still closed: a retry must
        // still move on, to the next tier in distance order, not back to them.
        let balancer = in_dublin(all_endpoints());
        let ids_of = |excluded: &[&str]| {
            let endpoints = balancer.endpoints();
            let tried = |i: usize| excluded.contains(&endpoints[i].node.id.as_str());
            let mut ids: Vec<&str> = (0..500)
                .filter_map(|_| balancer.pick_excluding(&PickContext::default(), &tried))
                .map(|p| endpoints[p.index].node.id.as_str())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        // Half the zone tried: like half the zone broken, 70 % stays and 30 % spills.
        assert_eq!(ids_of(&["zone-1"]), vec!["region-1", "region-2", "zone-2"]);
        assert_eq!(ids_of(&["zone-1", "zone-2"]), vec!["region-1", "region-2"]);
        assert_eq!(
            ids_of(&["zone-1", "zone-2", "region-1", "region-2"]),
            vec!["us-1", "us-2"]
        );
    }

    #[test]
    fn load_is_spread_by_in_flight_inside_a_tier() {
        let balancer = in_dublin(all_endpoints());
        let zone_1 = balancer
            .endpoints()
            .iter()
            .position(|e| e.node.id == "zone-1");
        let busy = zone_1.map(|i| balancer.endpoints()[i].start_request());
        let (ids, _) = picked(&balancer);
        assert_eq!(ids, vec!["zone-2"]);
        drop(busy);
    }

    #[test]
    fn a_proxy_without_a_zone_treats_its_region_as_one_tier() {
        let locality = Locality {
            zone: String::new(),
            ..dublin_proxy()
        };
        let balancer = Geographic::new(all_endpoints(), &[], &locality, &FailoverPolicy::default());
        assert_eq!(balancer.tiers()[0].kind, TierKind::Region);
        assert_eq!(balancer.tiers()[0].endpoints.len(), 4);
    }

    #[test]
    fn no_endpoints_no_pick() {
        let balancer = in_dublin(Vec::new());
        assert!(balancer.tiers().is_empty());
        assert_eq!(balancer.pick(&PickContext::default()), None);
    }

    /// Four endpoints in the proxy's zone and four elsewhere in its region.
    fn zone_and_region() -> Vec<Arc<Endpoint>> {
        (0..4)
            .map(|i| endpoint(&format!("zone-{i}"), "eu-west", "eu-west-a", 1))
            .chain((0..4).map(|i| endpoint(&format!("region-{i}"), "eu-west", "eu-west-b", 1)))
            .collect()
    }

    fn zone_share(balancer: &Geographic, picks: usize) -> f64 {
        let in_zone = (0..picks)
            .filter(|_| {
                let pick = balancer.pick(&PickContext::default()).unwrap();
                balancer.endpoints()[pick.index].node.zone == "eu-west-a"
            })
            .count();
        in_zone as f64 / picks as f64
    }

    #[tokio::test(start_paused = true)]
    async fn a_tier_that_loses_a_little_keeps_all_its_traffic() {
        let eps = zone_and_region();
        let balancer = in_dublin(eps.clone());
        open_breaker(&eps[0]);
        // 3 of 4 ready × 1.4 = 105 % ≥ 100 %: nothing spills.
        assert_eq!(zone_share(&balancer, 2_000), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tier_that_loses_half_spills_by_the_overprovisioning_factor() {
        let eps = zone_and_region();
        let balancer = in_dublin(eps.clone());
        open_breaker(&eps[0]);
        open_breaker(&eps[1]);
        // 2 of 4 ready × 1.4 = 70 % stays in the zone, 30 % spills to the region.
        let share = zone_share(&balancer, 20_000);
        assert!((0.67..0.73).contains(&share), "zone kept {share}");
    }

    /// The proxy's zone of three nodes, `down` of them marked down by the control plane
    /// (in the table, not routable), and four nodes elsewhere in its region.
    fn zone_with_down(down: usize) -> Geographic {
        let zone: Vec<Arc<Endpoint>> = (0..3)
            .map(|i| endpoint(&format!("zone-{i}"), "eu-west", "eu-west-a", 1))
            .collect();
        let (down, up) = zone.split_at(down);
        let mut usable = up.to_vec();
        usable.extend((0..4).map(|i| endpoint(&format!("region-{i}"), "eu-west", "eu-west-b", 1)));
        Geographic::new(usable, down, &dublin_proxy(), &FailoverPolicy::default())
    }

    #[test]
    fn members_the_control_plane_marked_down_count_in_their_tiers_total() {
        assert_eq!(zone_with_down(2).tiers()[0].down, 2);
        assert_eq!(zone_with_down(2).tiers()[1].down, 0);
        // All up: everything stays in the zone.
        assert_eq!(zone_share(&zone_with_down(0), 2_000), 1.0);
        // One of three down: 1.4 × 2/3 = 93.3 % stays.
        let share = zone_share(&zone_with_down(1), 20_000);
        assert!((0.917..0.95).contains(&share), "zone kept {share}");
        // Two of three down: 1.4 × 1/3 = 46.7 % stays, 53.3 % spills to the region.
        let share = zone_share(&zone_with_down(2), 20_000);
        assert!((0.447..0.487).contains(&share), "zone kept {share}");
    }

    #[test]
    fn members_that_are_down_count_towards_the_panic_threshold() {
        // 4 healthy of 7 members: above 50 %, no panic.
        let pick = zone_with_down(3).pick(&PickContext::default()).unwrap();
        assert!(!pick.reason.starts_with("panic"), "{}", pick.reason);
        // 4 healthy of 9 members (5 down): below 50 %, panic routing.
        let eps: Vec<Arc<Endpoint>> = (0..9)
            .map(|i| endpoint(&format!("zone-{i}"), "eu-west", "eu-west-a", 1))
            .collect();
        let (down, up) = eps.split_at(5);
        let balancer = Geographic::new(
            up.to_vec(),
            down,
            &dublin_proxy(),
            &FailoverPolicy::default(),
        );
        let pick = balancer.pick(&PickContext::default()).unwrap();
        assert!(pick.reason.starts_with("panic"), "{}", pick.reason);
    }

    #[test]
    fn a_member_that_is_down_counts_in_its_explicit_tier() {
        let policy = FailoverPolicy {
            tiers: vec![meridian_shared::domain::FailoverTier {
                name: "primary".into(),
                regions: vec!["us-east".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        let down = [endpoint("us-3", "us-east", "us-east-a", 1)];
        let balancer = Geographic::new(all_endpoints(), &down, &dublin_proxy(), &policy);
        let downs: Vec<usize> = balancer.tiers().iter().map(|t| t.down).collect();
        assert_eq!(downs, [1, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_panic_threshold_every_endpoint_is_used() {
        let eps = zone_and_region();
        let balancer = in_dublin(eps.clone());
        for e in &eps[..5] {
            open_breaker(e);
        }
        // 3 of 8 ready is under 50 %: route to all, broken ones included.
        let picked_broken = (0..2_000).any(|_| {
            let pick = balancer.pick(&PickContext::default()).unwrap();
            !balancer.endpoints()[pick.index].is_ready()
        });
        assert!(
            picked_broken,
            "panic routing should use unready endpoints too"
        );
        let pick = balancer.pick(&PickContext::default()).unwrap();
        assert!(pick.reason.starts_with("panic"), "{}", pick.reason);
    }

    #[tokio::test(start_paused = true)]
    async fn full_endpoints_neither_cause_panic_routing_nor_get_picked() {
        /// Puts each of `eps` at its per-node limit (one call, held while the guards live).
        fn fill(eps: &[Arc<Endpoint>]) -> Vec<crate::endpoint::InFlight<'_>> {
            eps.iter()
                .map(|e| {
                    e.set_max_requests(1);
                    e.start_request()
                })
                .collect()
        }
        /// 2,000 picks: none of a full endpoint, each in panic or not as `panic` says.
        fn picks_skip_full(balancer: &Geographic, eps: &[Arc<Endpoint>], panic: bool) {
            for _ in 0..2_000 {
                let pick = balancer.pick(&PickContext::default()).unwrap();
                assert_eq!(pick.reason.starts_with("panic"), panic, "{}", pick.reason);
                assert!(
                    !eps[pick.index].is_full(),
                    "picked full {}",
                    eps[pick.index].node.id
                );
            }
        }

        // Five of eight at their per-node limit: healthy, so no panic, and never picked.
        let eps = zone_and_region();
        let balancer = in_dublin(eps.clone());
        let held = fill(&eps[..5]);
        picks_skip_full(&balancer, &eps, false);
        drop(held);

        // In panic (5 of 8 breakers open), the two full ones are still left out.
        let eps = zone_and_region();
        let balancer = in_dublin(eps.clone());
        let held = fill(&eps[..2]);
        for e in &eps[3..] {
            open_breaker(e);
        }
        picks_skip_full(&balancer, &eps, true);
        drop(held);
    }

    #[tokio::test]
    async fn explicit_tiers_replace_the_geographic_order() {
        let policy = FailoverPolicy {
            tiers: vec![
                meridian_shared::domain::FailoverTier {
                    name: "primary".into(),
                    regions: vec!["ap-south".into()],
                    ..Default::default()
                },
                meridian_shared::domain::FailoverTier {
                    name: "backup".into(),
                    regions: vec!["us-east".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let balancer = Geographic::new(all_endpoints(), &[], &dublin_proxy(), &policy);
        let kinds: Vec<TierKind> = balancer.tiers().iter().map(|t| t.kind).collect();
        assert_eq!(kinds[0], TierKind::Explicit { rank: 0 });
        for _ in 0..200 {
            let pick = balancer.pick(&PickContext::default()).unwrap();
            assert_eq!(balancer.endpoints()[pick.index].node.region, "ap-south");
            assert_eq!(pick.reason, "primary failover tier");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_recovering_tier_takes_its_traffic_back_gradually() {
        let mut returning = Endpoint::new(meridian_shared::domain::Node {
            id: "zone-0".into(),
            address: "zone-0:50051".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            ..Default::default()
        });
        returning.set_slow_start(std::time::Duration::from_secs(10));
        returning.start_warming();
        let eps = vec![
            Arc::new(returning),
            endpoint("region-0", "eu-west", "eu-west-b", 1),
        ];
        let balancer = in_dublin(eps);

        // Just back: a tenth of its capacity × 1.4 ≈ 14 % of the traffic.
        let share = zone_share(&balancer, 20_000);
        assert!(
            (0.11..0.17).contains(&share),
            "right after recovery the zone took {share}"
        );
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let share = zone_share(&balancer, 20_000);
        assert!(
            (0.70..0.84).contains(&share),
            "half-way through slow start the zone took {share}"
        );
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert_eq!(
            zone_share(&balancer, 2_000),
            1.0,
            "after slow start the zone takes everything back"
        );
    }
}
