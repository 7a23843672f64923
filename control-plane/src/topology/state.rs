//! The topology read from the store: every federation, region, node, liveness record,
//! service policy, failover and the dynamic configuration, each with the mod-revision it
//! was read at, plus the store revision the whole state reflects.

use std::collections::BTreeMap;
use std::time::SystemTime;

use meridian_shared::domain::{ActiveFailover, Federation, Node, Region, ServicePolicy, Topology};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::dynconfig::DynamicConfig;
use crate::keys::{self, DecodeError, Keys, Kind};
use crate::store::{KeyValue, LeaseId, Listing, Revision, WatchEvent};

/// A value and the revision of its last write (for compare-and-swap writes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored<T> {
    pub value: T,
    pub mod_revision: Revision,
}

/// A self-registered node's proof of life. The key is attached to a store lease that the
/// replica holding the node renews, shared by the nodes it holds with the same TTL
/// (`crate::registry::held`); the node's own keep-alives reach only that replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// The lease id `Register` returned: the node presents it with every keep-alive.
    /// The key may since have moved to another replica's lease.
    pub lease: LeaseId,
    pub ttl_seconds: u32,
    pub registered_at: SystemTime,
    /// The credential that registered it (`node:<name>`): only it may keep the lease
    /// alive or deregister the node.
    #[serde(default)]
    pub owner: String,
    /// The replica whose lease the key is attached to and whose memory holds the node's
    /// keep-alive deadline; empty for a key of an earlier build (on a lease of its own).
    #[serde(default)]
    pub held_by: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopologyState {
    /// The store revision this state reflects.
    pub revision: Revision,
    pub federations: BTreeMap<String, Stored<Federation>>,
    pub regions: BTreeMap<String, Stored<Region>>,
    pub nodes: BTreeMap<String, Stored<Node>>,
    pub liveness: BTreeMap<String, Stored<Liveness>>,
    pub services: BTreeMap<String, Stored<ServicePolicy>>,
    pub failovers: BTreeMap<String, Stored<ActiveFailover>>,
    /// Absent from the store: defaults, with mod-revision 0.
    pub config: Stored<DynamicConfig>,
    /// How many of `nodes` each federation has, kept by [`Self::apply`] and
    /// [`Self::from_listing`] so that a registration checks its federation's node limit
    /// without walking every node (a state whose `nodes` are filled in by hand, as some
    /// tests do, counts none).
    node_counts: BTreeMap<String, usize>,
}

impl TopologyState {
    /// The state of a full listing of `keys.root()`. Unreadable values are skipped and
    /// returned, so one bad key cannot stop the control plane.
    pub fn from_listing(keys: &Keys, listing: &Listing) -> (Self, Vec<DecodeError>) {
        let mut state = TopologyState {
            revision: listing.revision,
            ..Default::default()
        };
        let errors = listing
            .kvs
            .iter()
            .filter_map(|kv| state.put(keys, kv).err())
            .collect();
        (state, errors)
    }

    /// Applies a batch of watch events; the state's revision becomes the batch's.
    pub fn apply(&mut self, keys: &Keys, events: &[WatchEvent]) -> Vec<DecodeError> {
        let mut errors = Vec::new();
        for event in events {
            self.revision = self.revision.max(event.revision());
            let result = match event {
                WatchEvent::Put(kv) => self.put(keys, kv),
                WatchEvent::Delete { key, .. } => {
                    self.delete(keys, key);
                    Ok(())
                }
            };
            errors.extend(result.err());
        }
        errors
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) -> Result<(), DecodeError> {
        if kv.key == keys.config() {
            self.config = stored(kv)?;
            return Ok(());
        }
        let Some((kind, name)) = keys.parse(&kv.key) else {
            return Ok(());
        };
        let name = name.to_owned();
        match kind {
            Kind::Federation => drop(self.federations.insert(name, stored(kv)?)),
            Kind::Region => drop(self.regions.insert(name, stored(kv)?)),
            Kind::Node => {
                let node: Stored<Node> = stored(kv)?;
                self.count_node(&node.value.federation, 1);
                if let Some(old) = self.nodes.insert(name, node) {
                    self.count_node(&old.value.federation, -1);
                }
            }
            Kind::Liveness => drop(self.liveness.insert(name, stored(kv)?)),
            Kind::Service => drop(self.services.insert(name, stored(kv)?)),
            Kind::Failover => drop(self.failovers.insert(name, stored(kv)?)),
            Kind::Event | Kind::Proxy | Kind::Load | Kind::Scaling => {}
        }
        Ok(())
    }

    fn delete(&mut self, keys: &Keys, key: &str) {
        if key == keys.config() {
            self.config = Stored {
                value: DynamicConfig::default(),
                mod_revision: 0,
            };
            return;
        }
        let Some((kind, name)) = keys.parse(key) else {
            return;
        };
        match kind {
            Kind::Federation => drop(self.federations.remove(name)),
            Kind::Region => drop(self.regions.remove(name)),
            Kind::Node => {
                if let Some(old) = self.nodes.remove(name) {
                    self.count_node(&old.value.federation, -1);
                }
            }
            Kind::Liveness => drop(self.liveness.remove(name)),
            Kind::Service => drop(self.services.remove(name)),
            Kind::Failover => drop(self.failovers.remove(name)),
            Kind::Event | Kind::Proxy | Kind::Load | Kind::Scaling => {}
        }
    }

    /// How many nodes `federation` has.
    pub fn nodes_in(&self, federation: &str) -> usize {
        self.node_counts.get(federation).copied().unwrap_or(0)
    }

    fn count_node(&mut self, federation: &str, change: isize) {
        let count = self.node_counts.entry(federation.to_owned()).or_default();
        *count = count.saturating_add_signed(change);
        if *count == 0 {
            self.node_counts.remove(federation);
        }
    }

    /// The topology of one federation, or of all when `federation` is `None`.
    pub fn topology(&self, federation: Option<&str>) -> Topology {
        let wanted = |f: &str| federation.is_none_or(|w| w == f);
        Topology {
            revision: u64::try_from(self.revision).unwrap_or_default(),
            federations: values(&self.federations)
                .filter(|f| wanted(&f.name))
                .cloned()
                .collect(),
            regions: values(&self.regions)
                .filter(|r| wanted(&r.federation))
                .cloned()
                .collect(),
            nodes: values(&self.nodes)
                .filter(|n| wanted(&n.federation))
                .cloned()
                .collect(),
            services: values(&self.services)
                .filter(|s| wanted(&s.federation))
                .cloned()
                .collect(),
        }
    }
}

fn values<T>(map: &BTreeMap<String, Stored<T>>) -> impl Iterator<Item = &T> {
    map.values().map(|s| &s.value)
}

fn stored<T: DeserializeOwned>(kv: &KeyValue) -> Result<Stored<T>, DecodeError> {
    Ok(Stored {
        value: keys::decode(&kv.key, &kv.value)?,
        mod_revision: kv.mod_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_put(keys: &Keys, id: &str, federation: &str, revision: Revision) -> WatchEvent {
        let node = Node {
            id: id.into(),
            federation: federation.into(),
            ..Default::default()
        };
        WatchEvent::Put(KeyValue {
            key: keys.key(Kind::Node, id),
            value: keys::encode(&node),
            create_revision: revision,
            mod_revision: revision,
            lease: 0,
        })
    }

    #[test]
    fn node_counts_follow_puts_moves_and_deletes() {
        let keys = Keys::new("/meridian/");
        let listing = Listing {
            kvs: vec![match node_put(&keys, "a", "prod", 1) {
                WatchEvent::Put(kv) => kv,
                WatchEvent::Delete { .. } => unreachable!(),
            }],
            revision: 1,
        };
        let (mut state, errors) = TopologyState::from_listing(&keys, &listing);
        assert!(errors.is_empty());
        assert_eq!(state.nodes_in("prod"), 1);

        state.apply(
            &keys,
            &[
                node_put(&keys, "b", "prod", 2),
                node_put(&keys, "c", "staging", 2),
                // Written again: still one node.
                node_put(&keys, "a", "prod", 3),
            ],
        );
        assert_eq!((state.nodes_in("prod"), state.nodes_in("staging")), (2, 1));

        // Moved to another federation.
        state.apply(&keys, &[node_put(&keys, "b", "staging", 4)]);
        assert_eq!((state.nodes_in("prod"), state.nodes_in("staging")), (1, 2));

        let delete = |id: &str, revision| WatchEvent::Delete {
            key: keys.key(Kind::Node, id),
            mod_revision: revision,
        };
        state.apply(&keys, &[delete("a", 5), delete("c", 5), delete("gone", 5)]);
        assert_eq!((state.nodes_in("prod"), state.nodes_in("staging")), (0, 1));
        assert_eq!(state.nodes_in("nowhere"), 0);
    }
}
