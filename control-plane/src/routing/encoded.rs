//! Routing updates encoded once and shared by every stream. A table version's snapshot,
//! and its delta from each version proxies hold, is built and protobuf-encoded by the
//! first session that needs it; every other session sends the same bytes
//! (reference-counted), so a change costs one diff and one encoding however many
//! proxies follow the federation.

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use prost::Message;

use super::table::{TableContent, delta_len};

/// Deltas kept per table version, one per base version sessions asked for. Proxies
/// normally hold one of a few recent versions; a rarer base gets a delta built for it
/// alone.
const SHARED_DELTAS: usize = 16;

/// What an update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// A `RoutingTable`: the whole table.
    Snapshot,
    /// A `RoutingDelta` on top of a version the proxy holds.
    Delta,
}

impl UpdateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::Snapshot => "snapshot",
            UpdateKind::Delta => "delta",
        }
    }
}

/// One encoded update (a `RoutingTable` or `RoutingDelta` message).
#[derive(Debug, Clone)]
pub struct EncodedUpdate {
    pub kind: UpdateKind,
    pub bytes: Bytes,
}

/// The encodings of one table version, filled in as sessions need them.
#[derive(Debug, Default)]
pub struct SharedEncodings {
    snapshot: OnceLock<Bytes>,
    /// `(base version, update)`; the update is a snapshot when a delta would not be smaller.
    deltas: Mutex<Vec<(u64, EncodedUpdate)>>,
}

impl SharedEncodings {
    /// The snapshot of `content` at `version`.
    pub fn snapshot(
        &self,
        content: &TableContent,
        federation: &str,
        version: u64,
    ) -> EncodedUpdate {
        let bytes = self
            .snapshot
            .get_or_init(|| content.snapshot(federation, version).encode_to_vec().into());
        EncodedUpdate {
            kind: UpdateKind::Snapshot,
            bytes: bytes.clone(),
        }
    }

    /// What turns `base` (at `base_version`) into `content` (at `version`): a delta, or
    /// the snapshot when the delta would not be smaller.
    pub fn update_from(
        &self,
        content: &TableContent,
        federation: &str,
        version: u64,
        base: &TableContent,
        base_version: u64,
    ) -> EncodedUpdate {
        let mut deltas = self.deltas.lock().expect("shared deltas lock poisoned");
        if let Some((_, update)) = deltas.iter().find(|(b, _)| *b == base_version) {
            return update.clone();
        }
        let delta = content.delta_from(base, base_version, version);
        let update = if delta_len(&delta) < content.len().max(1) {
            EncodedUpdate {
                kind: UpdateKind::Delta,
                bytes: delta.encode_to_vec().into(),
            }
        } else {
            self.snapshot(content, federation, version)
        };
        if deltas.len() < SHARED_DELTAS {
            deltas.push((base_version, update.clone()));
        }
        update
    }
}
