//! What operators see under real load: two proxies, each driven by the load generator at
//! a fixed rate, forward to two demo nodes answering in 20 ms. The control plane's
//! figures (`meridianctl metrics`), built from the proxies' load reports, match what the
//! proxies answered until they were read (calls/s within 10 %, p99 within 20 %: on a busy
//! machine the load's rate and latency drift over the run); and the p99 an operator's
//! Prometheus computes from the proxies' exported buckets,
//! `histogram_quantile(0.99, sum by (le) (rate(meridian_proxy_request_duration_seconds_bucket[...])))`
//! over the run, matches the load generator's (within 20 %, or one bucket: the finest it
//! can resolve).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use meridian_proto::v1 as pb;
use meridian_shared::Shutdown;
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::control::VIEWER_TOKEN;
use meridian_tests::http;
use meridian_tests::loadgen::{self, LoadArgs, Report};
use meridian_tests::process::run_to_completion;
use meridian_tests::prometheus::Buckets;

/// Calls per second each proxy's load generator sends.
const RATE_PER_PROXY: f64 = 100.0;
/// How long the load runs; the figures are read two thirds of the way in.
const LOAD_SECONDS: u64 = 15;

async fn load(target: String) -> Report {
    let seconds = LOAD_SECONDS.to_string();
    let rate = RATE_PER_PROXY.to_string();
    let args = LoadArgs::parse_from([
        "meridian-loadgen",
        "--target",
        &target,
        "--rate",
        &rate,
        "--duration",
        &seconds,
        "--warmup",
        "0",
        "--streams",
        "8",
    ]);
    loadgen::run(args, Shutdown::new())
        .await
        .expect("the load generator ran")
}

/// The Echo latency buckets of the proxies with these admin addresses, summed
/// (`sum by (le)`).
async fn echo_latency_buckets(admins: &[SocketAddr]) -> Buckets {
    let mut sum = Buckets::default();
    for &admin in admins {
        let (code, text) = http::get(admin, "/metrics").await.expect("GET /metrics");
        assert_eq!(code, 200, "{text}");
        sum.add(&Buckets::scrape(
            &text,
            "meridian_proxy_request_duration_seconds",
            &[("service", ECHO)],
        ));
    }
    sum
}

fn within(value: f64, expected: f64, share: f64) -> bool {
    (value - expected).abs() <= expected * share
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meridianctl_metrics_shows_the_rate_and_p99_the_load_generator_measured() {
    let cluster = Cluster::start().await;
    cluster
        .cp
        .change_config(|c| c.load_report_interval_ms = 500)
        .await;
    let _nodes = [
        cluster
            .node("eu-1", "eu-west", "eu-west-a", 100, &["--latency-ms", "20"])
            .await,
        cluster
            .node("eu-2", "eu-west", "eu-west-b", 100, &["--latency-ms", "20"])
            .await,
    ];
    cluster.echo_policy(pb::Algorithm::RoundRobin, "").await;
    let a = cluster.proxy("proxy-a", "eu-west", "eu-west-a").await;
    let b = cluster.proxy("proxy-b", "eu-west", "eu-west-b").await;
    wait_usable(&a, 2).await;
    wait_usable(&b, 2).await;

    let before = echo_latency_buckets(&[a.admin, b.admin]).await;
    let (a_admin, b_admin) = (a.admin, b.admin);
    let load_started = tokio::time::Instant::now();
    let loads = tokio::spawn(async move {
        let (mut first, second) = tokio::join!(load(a.url()), load(b.url()));
        first.merge(&second);
        (first, a, b)
    });
    // Read while the load runs, after two thirds of it, as an operator would. What the
    // proxies answered until then is the rate to match: on a busy machine the load
    // generator falls behind its fixed rate unevenly over the run.
    tokio::time::sleep(Duration::from_secs(LOAD_SECONDS * 2 / 3)).await;
    let so_far = echo_latency_buckets(&[a_admin, b_admin])
        .await
        .since(&before);
    let rate_so_far = so_far.total() / load_started.elapsed().as_secs_f64();
    let p99_so_far = so_far.quantile(0.99).expect("latency buckets") * 1_000.0;
    let url = cluster.cp.url();
    let (status, stdout, stderr) = run_to_completion(
        "meridianctl",
        &[
            "--control-plane",
            &url,
            "--token",
            VIEWER_TOKEN,
            "-o",
            "json",
            "metrics",
        ],
    );
    assert!(status.success(), "meridianctl metrics failed: {stderr}");
    let (measured, a, b) = loads.await.expect("the load ran");
    // The increase over the run: what rate(...[run]) × its length holds.
    let scraped = echo_latency_buckets(&[a.admin, b.admin])
        .await
        .since(&before);
    let printed: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let traffic = printed["traffic"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row["service"] == ECHO && row["region"] == "eu-west")
        .unwrap_or_else(|| panic!("no Echo traffic in eu-west: {stdout}"));
    let calls = traffic["calls_per_second"].as_f64().expect("calls/s");
    let p99 = traffic["latency_p99_ms"].as_f64().expect("p99");
    let sent = measured.throughput();
    let measured_p99 = measured.percentile_us(0.99) as f64 / 1_000.0;
    println!(
        "load generator: {sent:.1} calls/s, p99 {measured_p99:.1} ms, {} errors; meridianctl metrics: {calls:.1} calls/s, p99 {p99:.1} ms",
        measured.errors
    );
    assert_eq!(measured.errors, 0, "the load itself failed");
    let sent_calls = measured.calls() as f64;
    let prometheus_p99 = scraped.quantile(0.99).expect("latency buckets") * 1_000.0;
    println!(
        "Prometheus: histogram_quantile(0.99) over both proxies' buckets = {prometheus_p99:.1} ms from {} calls",
        scraped.total()
    );
    assert!(
        within(scraped.total(), sent_calls, 0.10),
        "the buckets counted {} calls, the load generator sent {sent_calls:.0}: {scraped:?}",
        scraped.total()
    );
    // histogram_quantile interpolates inside a bucket (75–100 ms, 100–150 ms, ...), so it
    // cannot be finer than its buckets: within 20 %, or in the bucket next to the truth.
    let buckets_apart = scraped
        .bucket_of(prometheus_p99 / 1_000.0)
        .abs_diff(scraped.bucket_of(measured_p99 / 1_000.0));
    assert!(
        within(prometheus_p99, measured_p99, 0.20) || buckets_apart <= 1,
        "histogram_quantile gives p99 {prometheus_p99:.1} ms, the load generator measured {measured_p99:.1} ms ({buckets_apart} buckets apart): {scraped:?}"
    );
    assert!(
        within(calls, rate_so_far, 0.10),
        "metrics shows {calls:.1} calls/s, the proxies answered {rate_so_far:.1} calls/s until then (the load generator sent {sent:.1} over the whole run): {stdout}"
    );
    assert!(
        within(p99, p99_so_far, 0.20),
        "metrics shows p99 {p99:.1} ms, the proxies' buckets until then give {p99_so_far:.1} ms (the load generator measured {measured_p99:.1} ms over the whole run): {stdout}"
    );
    assert_eq!(traffic["error_rate"].as_f64(), Some(0.0), "{stdout}");
}
