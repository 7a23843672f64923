//! Forwarded calls stay in the proxy's region by default, whatever the algorithm: with
//! nodes in two regions, a proxy sends every call to its own region's node while that
//! node is usable, spills to the other region when it is not, and spreads calls over both
//! regions only when the service policy sets `global_routing`. A region whose nodes the
//! control plane has marked unhealthy spills by the overprovisioning rule, those nodes
//! counted in its total.

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

/// The share of `served` answered in eu-west (its nodes are `eu-*`).
fn home_share(served: &BTreeMap<String, usize>) -> f64 {
    let home: usize = served
        .iter()
        .filter(|(node, _)| node.starts_with("eu-"))
        .map(|(_, n)| n)
        .sum();
    home as f64 / served.values().sum::<usize>().max(1) as f64
}

/// Waits until the proxy's table shows node `id` with `status`.
async fn wait_status(proxy: &ProxyProcess, id: &str, status: &str) {
    proxy
        .wait_table(Duration::from_secs(60), &format!("{id} {status}"), |t| {
            t["services"][0]["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["node"] == id && e["status"] == status))
        })
        .await;
}

#[tokio::test]
async fn a_region_whose_nodes_were_marked_unhealthy_keeps_only_the_share_the_overprovisioning_rule_gives_it()
 {
    let cluster = Cluster::start().await;
    let mut eu = Vec::new();
    for i in 1..=3 {
        let id = format!("eu-{i}");
        eu.push(cluster.node(&id, "eu-west", "eu-west-a", 0, &[]).await);
    }
    let _us1 = cluster.node("us-1", "us-east", "us-east-a", 0, &[]).await;
    let _us2 = cluster.node("us-2", "us-east", "us-east-a", 0, &[]).await;
    let proxy = cluster.proxy("proxy-eu", "eu-west", "eu-west-a").await;
    wait_steady(&proxy, 5).await;
    let mut echo = EchoClient::new(channel(&proxy.url()).await);

    let served = calls(&mut echo, 200).await;
    assert_eq!(
        home_share(&served),
        1.0,
        "a call left a healthy region: {served:?}"
    );

    // eu-3 crashes and the health checker marks it unhealthy: it still counts in
    // eu-west's total, 1.4 × 2/3 = 93.3 % stays and 6.7 % spills (600 calls: ~40).
    drop(eu.pop());
    wait_status(&proxy, "eu-3", "unhealthy").await;
    let served = calls(&mut echo, 600).await;
    let home = home_share(&served);
    assert!(
        (0.85..0.99).contains(&home),
        "with 2 of 3 nodes up eu-west kept {:.1} %, the rule says 93.3 %: {served:?}",
        100.0 * home
    );

    // eu-2 too: 1.4 × 1/3 = 46.7 % stays, 53.3 % spills to us-east.
    drop(eu.pop());
    wait_status(&proxy, "eu-2", "unhealthy").await;
    let served = calls(&mut echo, 600).await;
    let home = home_share(&served);
    assert!(
        (0.35..0.60).contains(&home),
        "with 1 of 3 nodes up eu-west kept {:.1} %, the rule says 46.7 %: {served:?}",
        100.0 * home
    );
}
