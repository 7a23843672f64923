//! Rate limits per client tier, federation-wide, with real processes: one demo node,
//! `demo.v1.Echo` limited to 50 calls/s for tier `free` (burst 25) and 200 calls/s for
//! `pro`.
//!
//! - One proxy: a `free` client offering twice its rate gets RESOURCE_EXHAUSTED with a
//!   `grpc-retry-pushback-ms` trailer for the excess and 50 calls/s (± 10 %) through over
//!   10 s, while a `pro` client on the same proxy is never refused; RouteMessage is
//!   limited the same way.
//! - Two proxies sharing `free` with uneven demand (100 and 15 calls/s): the control plane
//!   apportions the rate by demand, and the federation admits 50 calls/s (± 15 %). An
//!   equal split would admit only 25 + 15.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::proxy::ProxyProcess;
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

const FREE_RATE: f64 = 50.0;
/// Half a second of the rate: enough that a proxy starved of CPU for a moment (these
/// tests share small machines with builds) does not lose tokens while its calls wait.
const FREE_BURST: u32 = 25;
const PRO_RATE: f64 = 200.0;
const PUSHBACK: &str = "grpc-retry-pushback-ms";

/// What one client's calls came to, counting only calls started after its warm-up.
#[derive(Debug, Default)]
struct Outcomes {
    admitted: AtomicU64,
    /// RESOURCE_EXHAUSTED with a pushback trailer.
    refused: AtomicU64,
    /// Anything else: RESOURCE_EXHAUSTED without a pushback, other errors.
    other: AtomicU64,
    /// The longest pushback seen, ms.
    max_pushback_ms: AtomicU64,
}

impl Outcomes {
    fn admitted_per_second(&self, measured: Duration) -> f64 {
        self.admitted.load(Ordering::Relaxed) as f64 / measured.as_secs_f64()
    }
}

/// Offers `rate` Echo calls/s of `tier` to `proxy` (open loop: calls start on schedule
/// whatever earlier ones are doing) for `warmup + measured`; counts the calls started
/// during `measured`. Returns once every call has ended.
async fn offer(
    proxy: &ProxyProcess,
    tier: &'static str,
    rate: f64,
    warmup: Duration,
    measured: Duration,
) -> Arc<Outcomes> {
    let channel = Channel::from_shared(proxy.url())
        .unwrap()
        .connect()
        .await
        .expect("connecting to the proxy");
    let outcomes = Arc::new(Outcomes::default());
    let start = Instant::now();
    let measure_from = start + warmup;
    let until = measure_from + measured;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut calls = Vec::new();
    loop {
        let at = tick.tick().await;
        if at >= until {
            break;
        }
        let counted = at >= measure_from;
        let mut client = EchoClient::new(channel.clone());
        let outcomes = Arc::clone(&outcomes);
        calls.push(tokio::spawn(async move {
            let mut request = tonic::Request::new(demo::SayRequest {
                text: "tiered".into(),
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("x-meridian-tier", tier.parse().unwrap());
            request.set_timeout(Duration::from_secs(5));
            let result = client.say(request).await;
            if !counted {
                return;
            }
            match result {
                Ok(_) => outcomes.admitted.fetch_add(1, Ordering::Relaxed),
                Err(status) => match pushback_ms(&status) {
                    Some(ms) if status.code() == Code::ResourceExhausted => {
                        outcomes.max_pushback_ms.fetch_max(ms, Ordering::Relaxed);
                        outcomes.refused.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => {
                        eprintln!("unexpected answer for tier {tier}: {status:?}");
                        outcomes.other.fetch_add(1, Ordering::Relaxed)
                    }
                },
            };
        }));
    }
    for call in calls {
        call.await.expect("a call task");
    }
    outcomes
}

fn pushback_ms(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get(PUSHBACK)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn within(value: f64, expected: f64, share: f64) -> bool {
    (value - expected).abs() <= expected * share
}

fn free_tier(table: &serde_json::Value) -> Option<serde_json::Value> {
    table["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == ECHO)?["rate_limit"]["tiers"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == "free")
        .cloned()
}

/// Waits until `proxy` enforces the share the control plane gave it, over `proxies`.
async fn wait_share(proxy: &ProxyProcess, proxies: u64) {
    proxy
        .wait_table(
            Duration::from_secs(20),
            "a rate share from the control plane",
            |t| {
                let services = t["services"].as_array().into_iter().flatten();
                let echo = services.clone().find(|s| s["name"] == ECHO);
                echo.is_some_and(|s| s["rate_limit"]["federation_proxies"] == proxies)
                    && free_tier(t).is_some_and(|tier| tier["share_source"] == "control_plane")
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tier_gets_its_rate_across_the_federation() {
    let cluster = Cluster::start().await;
    cluster
        .cp
        .change_config(|c| c.load_report_interval_ms = 500)
        .await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 100, &[]).await;
    cluster
        .set_policy(pb::ServicePolicy {
            name: ECHO.into(),
            federation: "prod".into(),
            rate_limit: Some(pb::RateLimitPolicy {
                tiers: vec![
                    pb::RateLimitTier {
                        name: "free".into(),
                        calls_per_second: FREE_RATE,
                        burst: FREE_BURST,
                    },
                    pb::RateLimitTier {
                        name: "pro".into(),
                        calls_per_second: PRO_RATE,
                        burst: 0,
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;

    // One proxy: it holds the whole rate.
    let a = cluster.proxy("proxy-a", "eu-west", "eu-west-a").await;
    wait_usable(&a, 1).await;
    wait_share(&a, 1).await;
    let measured = Duration::from_secs(10);
    // A second of warm-up spends the initial burst, so the rate alone is measured.
    let warmup = Duration::from_secs(1);
    let (free, pro) = tokio::join!(
        offer(&a, "free", 2.0 * FREE_RATE, warmup, measured),
        offer(&a, "pro", 40.0, warmup, measured),
    );
    let free_rate = free.admitted_per_second(measured);
    println!(
        "one proxy: free admitted {free_rate:.1} calls/s of {:.0} offered ({} refused with pushback, longest {} ms); pro admitted {:.1} calls/s of 40 offered ({} refused)",
        2.0 * FREE_RATE,
        free.refused.load(Ordering::Relaxed),
        free.max_pushback_ms.load(Ordering::Relaxed),
        pro.admitted_per_second(measured),
        pro.refused.load(Ordering::Relaxed),
    );
    assert_eq!(
        free.other.load(Ordering::Relaxed),
        0,
        "only rate-limit refusals"
    );
    assert!(
        free.refused.load(Ordering::Relaxed) >= 400,
        "about half the free calls are refused: {free:?}"
    );
    assert!(
        within(free_rate, FREE_RATE, 0.10),
        "free admitted {free_rate:.1} calls/s, its rate is {FREE_RATE}"
    );
    let max_pushback = free.max_pushback_ms.load(Ordering::Relaxed);
    assert!(
        (1..=100).contains(&max_pushback),
        "a refused free call waits at most a few tokens' time (20 ms each): {max_pushback} ms"
    );
    assert_eq!(
        (
            pro.refused.load(Ordering::Relaxed),
            pro.other.load(Ordering::Relaxed)
        ),
        (0, 0),
        "the pro tier is not affected"
    );
    assert_eq!(pro.admitted.load(Ordering::Relaxed), 400);

    // RouteMessage is limited by the same bucket: a burst of free messages goes over.
    let mut router = MessageRouterClient::connect(a.url()).await.unwrap();
    let (mut routed, mut refused) = (0, 0);
    for i in 0..3 * FREE_BURST {
        let mut request = tonic::Request::new(pb::RouteMessageRequest {
            message: Some(pb::FederationMessage {
                id: format!("m-{i}"),
                r#type: "demo.tiered".into(),
                target_service: ECHO.into(),
                ..Default::default()
            }),
        });
        request
            .metadata_mut()
            .insert("x-meridian-tier", "free".parse().unwrap());
        match router.route_message(request).await {
            Ok(_) => routed += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(pushback_ms(&status).is_some(), "{status:?}");
                refused += 1;
            }
        }
    }
    println!("RouteMessage burst: {routed} routed, {refused} refused");
    assert!(
        routed >= 1 && refused >= FREE_BURST,
        "{routed} routed, {refused} refused"
    );

    let (_, metrics) = meridian_tests::http::get(a.admin, "/metrics")
        .await
        .unwrap();
    let refusals = metrics
        .lines()
        .find(|l| {
            l.starts_with("meridian_proxy_refused_total")
                && l.contains("reason=\"rate_limit\"")
                && l.contains("tier=\"free\"")
        })
        .unwrap_or_else(|| panic!("no free-tier refusals in /metrics:\n{metrics}"));
    let counted: f64 = refusals.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(counted >= 400.0, "{refusals}");

    // Two proxies share the tier; their demand is uneven.
    let b = cluster.proxy("proxy-b", "eu-west", "eu-west-b").await;
    wait_usable(&b, 1).await;
    wait_share(&b, 2).await;
    wait_share(&a, 2).await;
    let warmup = Duration::from_secs(3);
    let (busy, quiet) = tokio::join!(
        offer(&a, "free", 100.0, warmup, measured),
        offer(&b, "free", 15.0, warmup, measured),
    );
    let (busy_rate, quiet_rate) = (
        busy.admitted_per_second(measured),
        quiet.admitted_per_second(measured),
    );
    let federation = busy_rate + quiet_rate;
    let (table_a, table_b) = (a.debug_table().await, b.debug_table().await);
    println!(
        "two proxies: {federation:.1} calls/s admitted across the federation (proxy-a {busy_rate:.1} of 100 offered, share {}; proxy-b {quiet_rate:.1} of 15 offered, share {})",
        free_tier(&table_a).unwrap()["share"],
        free_tier(&table_b).unwrap()["share"],
    );
    assert_eq!(
        busy.other.load(Ordering::Relaxed) + quiet.other.load(Ordering::Relaxed),
        0
    );
    assert!(
        within(federation, FREE_RATE, 0.15),
        "the federation admitted {federation:.1} calls/s of free, its rate is {FREE_RATE}"
    );
}
