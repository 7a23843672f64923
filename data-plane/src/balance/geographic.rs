//! Geographic: prefer the endpoints nearest the proxy, in locality tiers: the proxy's zone,
//! then the rest of its region, then each other region by great-circle distance. Requests go
//! to the first tier that has endpoints, by power of two choices over in-flight requests
//! inside it.
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

use super::{Balancer, Locality, Pick, PickContext, power_of_two_choices};
use crate::endpoint::Endpoint;

#[derive(Debug)]
pub struct Geographic {
    endpoints: Vec<Arc<Endpoint>>,
    /// Nearest first; only tiers with endpoints.
    tiers: Vec<LocalityTier>,
}

/// Endpoints at one distance from the proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalityTier {
    pub kind: TierKind,
    /// The region the tier's endpoints are in.
    pub region: String,
    /// Indices into the balancer's endpoints.
    pub endpoints: Vec<usize>,
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
}

// === impl Geographic ===

impl Geographic {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, locality: &Locality) -> Self {
        let tiers = tiers(&endpoints, locality);
        Geographic { endpoints, tiers }
    }

    /// The locality tiers, nearest first; empty tiers are left out.
    pub fn tiers(&self) -> &[LocalityTier] {
        &self.tiers
    }
}

impl Balancer for Geographic {
    fn pick(&self, _ctx: &PickContext<'_>) -> Option<Pick> {
        // The nearest tier with a ready endpoint.
        let (tier, (chosen, other)) = self.tiers.iter().find_map(|tier| {
            let ready = |position: usize| self.endpoints[tier.endpoints[position]].is_ready();
            let load = |position: usize| self.endpoints[tier.endpoints[position]].in_flight();
            power_of_two_choices(tier.endpoints.len(), ready, load).map(|pick| (tier, pick))
        })?;
        Some(Pick {
            index: tier.endpoints[chosen],
            reason: tier.kind.reason(),
            compared_with: other.map(|position| tier.endpoints[position]),
        })
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
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
        }
    }
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
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use meridian_shared::domain::{GeoPoint, Region};

    use super::*;
    use crate::balance::test_support::endpoint;

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
        let balancer = Geographic::new(all_endpoints(), &dublin_proxy());
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

        let in_zone = Geographic::new(everything.clone(), &locality);
        assert_eq!(
            picked(&in_zone),
            (vec!["zone-1", "zone-2"], vec!["proxy's zone"])
        );

        // The zone's endpoints leave: the rest of the region, not a nearer-looking index.
        let no_zone = without("zone-", &everything);
        let in_region = Geographic::new(no_zone.clone(), &locality);
        assert_eq!(
            picked(&in_region),
            (vec!["region-1", "region-2"], vec!["proxy's region"])
        );

        // The whole region leaves: Washington is nearer Dublin than Mumbai or Sydney.
        let no_region = without("region-", &no_zone);
        let abroad = Geographic::new(no_region, &locality);
        assert_eq!(
            picked(&abroad),
            (vec!["us-1", "us-2"], vec!["nearest other region"])
        );
    }

    #[test]
    fn load_is_spread_by_in_flight_inside_a_tier() {
        let balancer = Geographic::new(all_endpoints(), &dublin_proxy());
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
        let balancer = Geographic::new(all_endpoints(), &locality);
        assert_eq!(balancer.tiers()[0].kind, TierKind::Region);
        assert_eq!(balancer.tiers()[0].endpoints.len(), 4);
    }

    #[test]
    fn no_endpoints_no_pick() {
        let balancer = Geographic::new(Vec::new(), &dublin_proxy());
        assert!(balancer.tiers().is_empty());
        assert_eq!(balancer.pick(&PickContext::default()), None);
    }
}
