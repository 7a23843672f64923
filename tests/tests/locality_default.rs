//! Forwarded calls stay in the proxy's region by default, whatever the algorithm: with
//! nodes in two regions, a proxy sends every call to its own region's node while that
//! node is usable, spills to the other region when it is not, and spreads calls over both
//! regions only when the service policy sets `global_routing`.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::cluster::{Cluster, ECHO, served_by, wait_steady, wait_usable};
use meridian_tests::control::channel;
use meridian_tests::proxy::ProxyProcess;
use tonic::transport::Channel;

/// `count` calls one after another; calls per serving node.
async fn calls(echo: &mut EchoClient<Channel>, count: usize) -> BTreeMap<String, usize> {
    let mut served = BTreeMap::new();
    for _ in 0..count {
        let reply = echo
            .say(demo::SayRequest {
                text: "hi".into(),
                ..Default::default()
            })
            .await
            .expect("a call through the proxy");
        *served.entry(served_by(&reply)).or_insert(0) += 1;
    }
    served
}

/// Sets Echo's policy (least_connections, the default algorithm) with `global_routing`
/// and waits until the proxy has it.
async fn global_routing(cluster: &Cluster, proxy: &ProxyProcess, global: bool) {
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            global_routing: global,
            ..Default::default()
        })
        .await;
    proxy
        .wait_table(Duration::from_secs(20), "the new policy", |t| {
            t["services"][0]["has_policy"] == true && t["services"][0]["global_routing"] == global
        })
        .await;
}

#[tokio::test]
async fn forwarded_calls_stay_in_the_proxys_region_unless_it_has_no_capacity_or_the_policy_says_global()
 {
    let cluster = Cluster::start().await;
    let _eu = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let _us = cluster.node("us-1", "us-east", "us-east-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 2).await;
    let mut echo = EchoClient::new(channel(&proxy.url()).await);

    // No policy: least_connections, and the proxy's region while it has a usable node.
    let served = calls(&mut echo, 200).await;
    assert_eq!(
        served.get("eu-1"),
        Some(&200),
        "a call left a healthy region: {served:?}"
    );

    // Global routing: least_connections over both regions.
    global_routing(&cluster, &proxy, true).await;
    let served = calls(&mut echo, 200).await;
    let abroad = served.get("us-1").copied().unwrap_or(0);
    assert!(
        abroad >= 40,
        "global routing sent only {abroad} of 200 calls to us-east: {served:?}"
    );

    // Locality again, and the region loses its node: everything spills to us-east.
    global_routing(&cluster, &proxy, false).await;
    cluster.drain("eu-1").await;
    wait_usable(&proxy, 1).await;
    let served = calls(&mut echo, 50).await;
    assert_eq!(
        served.get("us-1"),
        Some(&50),
        "with no usable node at home every call spills: {served:?}"
    );
}
