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

/// A self-registered node's proof of life, attached to its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub lease: LeaseId,
    pub ttl_seconds: u32,
    pub registered_at: SystemTime,
    /// The credential that registered it (`node:<name>`): only it may keep the lease
    /// alive or deregister the node.
    #[serde(default)]
    pub owner: String,
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
            Kind::Node => drop(self.nodes.insert(name, stored(kv)?)),
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
            Kind::Node => drop(self.nodes.remove(name)),
            Kind::Liveness => drop(self.liveness.remove(name)),
            Kind::Service => drop(self.services.remove(name)),
            Kind::Failover => drop(self.failovers.remove(name)),
            Kind::Event | Kind::Proxy | Kind::Load | Kind::Scaling => {}
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
