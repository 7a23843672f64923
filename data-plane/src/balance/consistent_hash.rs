//! Consistent hashing: requests with the same affinity key (a message key, a request header,
//! the client's address) go to the same endpoint, and when endpoints come or go only the
//! keys of those endpoints move.
//!
//! Each endpoint is placed on a 64-bit hash ring at [`VIRTUAL_NODES`] points hashed from
//! its node id (not its position in the table, so the ring does not depend on endpoint
//! order); a key goes to the first point at or after its own hash, wrapping around. Many
//! points per endpoint even out the arcs each one owns (about ±8 % around the mean share
//! with 160). When a node leaves, only the keys on its arcs move, to the next points along
//! the ring, spread over the remaining nodes.
//!
//! The hash is FNV-1a followed by a 64-bit finaliser (MurmurHash3's `fmix64`) for
//! avalanche, written here rather than std's `DefaultHasher`, whose algorithm may change
//! between Rust releases: proxies built by different toolchains must agree on where a key
//! goes, or affinity breaks during a rolling upgrade.
//!
//! Trade-off: stickiness (caches stay warm, per-key ordering holds) at the cost of balance:
//! a hot key loads one endpoint, and load is not considered at all; node weights are not
//! either. Choose it only when affinity matters. Without a key a pick is random.

use std::sync::Arc;

use super::{Balancer, Pick, PickContext, first_ready};
use crate::endpoint::Endpoint;

/// Points on the ring per endpoint.
pub const VIRTUAL_NODES: u32 = 160;

#[derive(Debug)]
pub struct ConsistentHash {
    endpoints: Vec<Arc<Endpoint>>,
    /// (position, endpoint index), sorted by position.
    ring: Vec<(u64, usize)>,
}

// === impl ConsistentHash ===

impl ConsistentHash {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let mut ring: Vec<(u64, usize)> = endpoints
            .iter()
            .enumerate()
            .flat_map(|(index, endpoint)| {
                let id = endpoint.node.id.as_bytes();
                (0..VIRTUAL_NODES).map(move |point| (hash(&[id, &point.to_le_bytes()]), index))
            })
            .collect();
        // Ties (two nodes on the same point, vanishingly rare) break by node id, not index,
        // so that the ring still does not depend on endpoint order.
        ring.sort_unstable_by(|(a, i), (b, j)| {
            a.cmp(b)
                .then_with(|| endpoints[*i].node.id.cmp(&endpoints[*j].node.id))
        });
        ConsistentHash { endpoints, ring }
    }
}

impl Balancer for ConsistentHash {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<Pick> {
        let Some(key) = ctx.affinity else {
            if self.endpoints.is_empty() {
                return None;
            }
            let len = self.endpoints.len();
            let index = first_ready(len, rand::random_range(0..len), |i| {
                self.endpoints[i].is_ready()
            })?;
            return Some(Pick {
                index,
                reason: "no affinity key: random",
                compared_with: None,
            });
        };
        let position = hash(&[key]);
        let next = self.ring.partition_point(|&(point, _)| point < position);
        // Past the last point the ring wraps around to the first; an unready owner passes
        // its keys to the next ready endpoint clockwise (and gets them back when ready).
        let len = self.ring.len();
        let index = (0..len)
            .map(|k| self.ring[(next + k) % len].1)
            .find(|&i| self.endpoints[i].is_ready())?;
        Some(Pick {
            index,
            reason: "owner of the affinity key on the hash ring",
            compared_with: None,
        })
    }

    fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }
}

/// FNV-1a over the concatenated parts, then `fmix64` so that similar inputs (`node-1`
/// point 7 and point 8) land far apart on the ring.
fn hash(parts: &[&[u8]]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for byte in parts.iter().flat_map(|part| part.iter()) {
        h ^= u64::from(*byte);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::balance::test_support::endpoints;

    const KEYS: usize = 10_000;

    /// The node id each of the test keys maps to.
    fn owners(balancer: &ConsistentHash) -> Vec<String> {
        (0..KEYS)
            .map(|k| {
                let key = format!("key-{k}");
                let pick = balancer.pick(&PickContext {
                    affinity: Some(key.as_bytes()),
                });
                pick.map(|p| balancer.endpoints()[p.index].node.id.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    fn shares(owners: &[String]) -> HashMap<&str, usize> {
        let mut shares = HashMap::new();
        for owner in owners {
            *shares.entry(owner.as_str()).or_default() += 1;
        }
        shares
    }

    #[test]
    fn a_key_always_maps_to_the_same_node_whatever_the_endpoint_order() {
        let five = endpoints(5);
        let balancer = ConsistentHash::new(five.clone());
        let first = owners(&balancer);
        assert_eq!(owners(&balancer), first);

        let reversed = ConsistentHash::new(five.into_iter().rev().collect());
        assert_eq!(owners(&reversed), first);
    }

    #[test]
    fn keys_spread_evenly_and_a_departing_node_moves_only_its_own() {
        let five = endpoints(5);
        let before = owners(&ConsistentHash::new(five.clone()));
        let shares_before = shares(&before);
        assert_eq!(shares_before.len(), 5, "{shares_before:?}");
        for (node, &count) in &shares_before {
            assert!(
                (1_000..=3_000).contains(&count),
                "{node} owns {count} of {KEYS} keys: {shares_before:?}"
            );
        }

        let remaining: Vec<_> = five.into_iter().filter(|e| e.node.id != "node-2").collect();
        let after = owners(&ConsistentHash::new(remaining));
        for (k, (was, is)) in before.iter().zip(&after).enumerate() {
            if was != "node-2" {
                assert_eq!(was, is, "key-{k} moved off {was}, which stayed");
            }
        }
        let shares_after = shares(&after);
        assert!(!shares_after.contains_key("node-2"));
        for (node, &count) in &shares_after {
            assert!(
                (1_500..=3_500).contains(&count),
                "{node} owns {count} of {KEYS} keys: {shares_after:?}"
            );
        }
    }

    #[test]
    fn without_a_key_picks_at_random() {
        let balancer = ConsistentHash::new(endpoints(3));
        let pick = balancer.pick(&PickContext::default());
        assert!(
            pick.is_some_and(|p| p.index < 3 && p.reason == "no affinity key: random"),
            "{pick:?}"
        );
    }

    #[test]
    fn no_endpoints_no_pick() {
        let balancer = ConsistentHash::new(Vec::new());
        assert_eq!(balancer.pick(&PickContext::default()), None);
        assert_eq!(
            balancer.pick(&PickContext {
                affinity: Some(b"key")
            }),
            None
        );
    }
}
