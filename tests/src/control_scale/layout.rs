//! What the benchmark federation looks like: its name, its regions and zones, and node
//! `i`'s id, address and place. Node ids carry their index (`bench-node-000042`), so a
//! subscriber keeps one status byte per node in a vector instead of a map of strings.

use meridian_proto::v1 as pb;

pub const FEDERATION: &str = "bench";
/// The one service every node serves.
pub const SERVICE: &str = "bench.v1.Echo";
/// Regions, each with [`ZONES_PER_REGION`] zones; nodes are dealt round-robin over both.
pub const REGIONS: [(&str, (f64, f64)); 4] = [
    ("eu-west", (53.3, -6.2)),
    ("eu-central", (50.1, 8.7)),
    ("us-east", (39.0, -77.5)),
    ("ap-south", (19.1, 72.9)),
];
pub const ZONES_PER_REGION: usize = 3;

const NODE_PREFIX: &str = "bench-node-";

/// The zones of `region`: `<region>-a`, `<region>-b`, ...
pub fn zones(region: &str) -> Vec<String> {
    (0..ZONES_PER_REGION)
        .map(|z| format!("{region}-{}", char::from(b'a' + z as u8)))
        .collect()
}

pub fn node_id(index: usize) -> String {
    format!("{NODE_PREFIX}{index:06}")
}

/// The index in a node id made by [`node_id`]; `None` for any other id.
pub fn node_index(id: &str) -> Option<usize> {
    id.strip_prefix(NODE_PREFIX)?.parse().ok()
}

/// Node `index` as registered: a distinct loopback address on the discard port, where
/// nothing listens (health checks are slowed so that never matters).
pub fn node(index: usize) -> pb::Node {
    let (region, _) = REGIONS[index % REGIONS.len()];
    let zone = zones(region).swap_remove((index / REGIONS.len()) % ZONES_PER_REGION);
    pb::Node {
        id: node_id(index),
        address: format!(
            "127.{}.{}.{}:9",
            (index >> 16) & 0xff,
            (index >> 8) & 0xff,
            index & 0xff
        ),
        federation: FEDERATION.into(),
        region: region.into(),
        zone,
        services: vec![SERVICE.into()],
        weight: 100,
        ..Default::default()
    }
}
