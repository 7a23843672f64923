//! Where everything lives in the store, under the configured prefix (default `/meridian/`),
//! and how values are encoded: versioned JSON, readable with `etcdctl get`:
//!
//! ```text
//! {prefix}v1/federations/{name}   Federation
//! {prefix}v1/regions/{name}       Region
//! {prefix}v1/nodes/{id}           Node (spec and status)
//! {prefix}v1/liveness/{id}        Liveness, attached to the node's lease
//! {prefix}v1/services/{name}      ServicePolicy
//! {prefix}v1/failover/{service}   ActiveFailover
//! {prefix}v1/config               DynamicConfig
//! {prefix}v1/events/{nanos:020}-{writer}-{n}  Event; its seq is the key's create revision × 1000 + n mod 1000
//! {prefix}v1/proxies/{replica}/{proxy}  ProxyStatus, attached to the replica's lease
//! {prefix}v1/load/{replica}       LoadSummary: the load reports one replica received,
//!                                  attached to the replica's lease
//! {prefix}v1/scaling/{service}    ScalingRecord: decisions (bounded), cooldown
//! {prefix}v1/leader               election key, attached to the leader's lease
//! ```
//!
//! Each value is `{"schema": 1, "data": ...}`; a reader refuses a schema it does not know
//! rather than misreading it.
//!
//! Stores written by earlier builds may also hold events at `{prefix}v1/events/{seq:020}`
//! (read and trimmed like the others) and `{prefix}v1/event-seq`, their counter, which
//! nothing reads any more (see [`crate::events`]).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The schema version this build writes and reads.
pub const SCHEMA: u32 = 1;

/// Kinds of stored entity, each a directory under `{prefix}v1/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Federation,
    Region,
    Node,
    Liveness,
    Service,
    Failover,
    Event,
    Proxy,
    Load,
    Scaling,
}

impl Kind {
    pub const fn dir(self) -> &'static str {
        match self {
            Kind::Federation => "federations/",
            Kind::Region => "regions/",
            Kind::Node => "nodes/",
            Kind::Liveness => "liveness/",
            Kind::Service => "services/",
            Kind::Failover => "failover/",
            Kind::Event => "events/",
            Kind::Proxy => "proxies/",
            Kind::Load => "load/",
            Kind::Scaling => "scaling/",
        }
    }
}

/// The key layout under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{prefix}v1/`
    root: String,
}

impl Keys {
    /// `prefix` starts and ends with '/' (validated by the configuration).
    pub fn new(prefix: &str) -> Self {
        Keys {
            root: format!("{prefix}v1/"),
        }
    }

    /// Everything Meridian stores.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The directory of a kind, e.g. `/meridian/v1/nodes/`.
    pub fn dir(&self, kind: Kind) -> String {
        format!("{}{}", self.root, kind.dir())
    }

    /// The key of one entity, e.g. `/meridian/v1/nodes/eu-1`.
    pub fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}{}{}", self.root, kind.dir(), name)
    }

    pub fn config(&self) -> String {
        format!("{}config", self.root)
    }

    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    /// The directory of one replica's connected proxies.
    pub fn proxies_of(&self, replica: &str) -> String {
        format!("{}{}{replica}/", self.root, Kind::Proxy.dir())
    }

    /// Which kind and name a key is, if it is one of ours.
    pub fn parse<'k>(&self, key: &'k str) -> Option<(Kind, &'k str)> {
        let rest = key.strip_prefix(self.root.as_str())?;
        [
            Kind::Federation,
            Kind::Region,
            Kind::Node,
            Kind::Liveness,
            Kind::Service,
            Kind::Failover,
            Kind::Event,
            Kind::Proxy,
            Kind::Load,
            Kind::Scaling,
        ]
        .into_iter()
        .find_map(|kind| rest.strip_prefix(kind.dir()).map(|name| (kind, name)))
    }
}

/// A stored value that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored value at {key} is unreadable: {reason}")]
pub struct DecodeError {
    pub key: String,
    pub reason: String,
}

#[derive(Serialize)]
struct EnvelopeOut<'a, T> {
    schema: u32,
    data: &'a T,
}

#[derive(serde::Deserialize)]
struct EnvelopeIn<T> {
    schema: u32,
    data: T,
}

/// `{"schema":1,"data":value}`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(&EnvelopeOut {
        schema: SCHEMA,
        data: value,
    })
    .expect("domain types always serialize")
}

/// Reads what [`encode`] wrote; `key` names the value in errors.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, DecodeError> {
    let envelope: EnvelopeIn<T> = serde_json::from_slice(bytes).map_err(|e| DecodeError {
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    if envelope.schema != SCHEMA {
        return Err(DecodeError {
            key: key.to_owned(),
            reason: format!(
                "schema {} is not {SCHEMA}; was it written by a newer Meridian?",
                envelope.schema
            ),
        });
    }
    Ok(envelope.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_to_kind_and_name() {
        let keys = Keys::new("/meridian/");
        let key = keys.key(Kind::Node, "eu-1");
        assert_eq!(key, "/meridian/v1/nodes/eu-1");
        assert_eq!(keys.parse(&key), Some((Kind::Node, "eu-1")));
        assert_eq!(keys.parse("/other/v1/nodes/eu-1"), None);
    }

    #[test]
    fn values_round_trip_and_unknown_schemas_are_refused() {
        let bytes = encode(&vec![1, 2, 3]);
        assert_eq!(decode::<Vec<i32>>("k", &bytes).unwrap(), vec![1, 2, 3]);
        let err = decode::<Vec<i32>>("k", br#"{"schema":2,"data":[]}"#).unwrap_err();
        assert!(err.reason.contains("schema 2"), "{err}");
        assert!(decode::<Vec<i32>>("k", b"garbage").is_err());
    }
}
