//! `meridianctl proxies`: every proxy subscribed to routing tables, with how far behind it
//! is (acked vs sent version) and the last table it refused.

use std::time::SystemTime;

use meridian_proto::v1 as pb;
use serde_json::{Value, json};

use super::auth::Admin;
use super::output::{self, Table, age_cell, place_cell, timestamp_json};
use super::{CtlError, Output};

pub(super) async fn run(mut admin: Admin, format: Output) -> Result<(), CtlError> {
    let proxies = admin
        .list_proxies(pb::ListProxiesRequest {})
        .await?
        .into_inner()
        .proxies;
    match format {
        Output::Table => output::emit(&table(&proxies, SystemTime::now()).render()),
        Output::Json => output::emit_json(&Value::Array(proxies.iter().map(json).collect())),
    }
}

fn table(proxies: &[pb::ProxyStatus], now: SystemTime) -> Table {
    let mut table = Table::new(&[
        "PROXY",
        "FEDERATION",
        "REGION/ZONE",
        "ACKED",
        "SENT",
        "LAST NACK",
        "CONNECTED",
        "REPLICA",
    ]);
    for p in proxies {
        let last_nack = p.last_nack.as_ref().map_or_else(
            || "-".to_owned(),
            |nack| format!("v{}: {}", nack.version, nack.error),
        );
        table.push(vec![
            p.proxy_id.clone(),
            p.federation.clone(),
            place_cell(&p.region, &p.zone),
            p.acked_version.to_string(),
            p.sent_version.to_string(),
            last_nack,
            age_cell(p.connected_since.as_ref(), now),
            p.replica.clone(),
        ]);
    }
    table
}

pub(crate) fn json(proxy: &pb::ProxyStatus) -> Value {
    let last_nack = proxy.last_nack.as_ref().map_or(Value::Null, |nack| {
        json!({
            "version": nack.version,
            "error": nack.error,
            "at": timestamp_json(nack.at.as_ref()),
        })
    });
    json!({
        "proxy_id": proxy.proxy_id,
        "federation": proxy.federation,
        "region": proxy.region,
        "zone": proxy.zone,
        "acked_version": proxy.acked_version,
        "sent_version": proxy.sent_version,
        "last_nack": last_nack,
        "connected_since": timestamp_json(proxy.connected_since.as_ref()),
        "peer_address": proxy.peer_address,
        "replica": proxy.replica,
        "build_version": proxy.build_version,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_nack_shows_its_version_and_error() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let proxy = pb::ProxyStatus {
            proxy_id: "proxy-eu-1".into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            zone: "eu-west-a".into(),
            acked_version: 7,
            sent_version: 8,
            last_nack: Some(pb::NackInfo {
                version: 8,
                error: "unknown region".into(),
                at: None,
            }),
            connected_since: Some((now - Duration::from_secs(90)).into()),
            replica: "cp-1".into(),
            ..Default::default()
        };
        let rendered = table(std::slice::from_ref(&proxy), now).render();
        let row = rendered.lines().nth(1).expect("one row");
        assert!(row.contains("v8: unknown region"), "{row}");
        assert!(row.contains("1m30s ago"), "{row}");
        assert_eq!(json(&proxy)["last_nack"]["version"], 8);
    }
}
