//! Admin-specific conversions to and from the wire.

use meridian_proto::v1 as pb;
use meridian_shared::domain::NodeStatus;
use tonic::Status;

use crate::discovery::proxies::ProxyRecord;

pub fn node_status(value: i32) -> Result<NodeStatus, Status> {
    let node = pb::Node {
        status: value,
        ..Default::default()
    };
    meridian_shared::domain::Node::try_from(node)
        .map(|n| n.status)
        .map_err(|_| Status::invalid_argument(format!("status: unknown node status {value}")))
}

pub fn proxy_status(record: ProxyRecord) -> pb::ProxyStatus {
    pb::ProxyStatus {
        proxy_id: record.proxy_id,
        federation: record.federation,
        region: record.region,
        zone: record.zone,
        acked_version: record.acked_version,
        sent_version: record.sent_version,
        last_nack: record.last_nack.map(|n| pb::NackInfo {
            version: n.version,
            error: n.error,
            at: Some(n.at.into()),
        }),
        connected_since: Some(record.connected_since.into()),
        peer_address: record.peer_address,
        replica: record.replica,
        build_version: record.build_version,
    }
}
