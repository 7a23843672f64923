//! The listener limits of a real proxy and a real control plane (`[listener_limits]`, set
//! small with flags): a client opening many connections hits the connection cap without
//! taking the server down (calls on an existing connection keep succeeding, and new
//! connections work once the flood is gone); a connection that sends nothing is closed
//! after the handshake timeout; an idle connection is closed after the idle timeout, but
//! not while a call is open on it; a rapid-reset flood (HEADERS, then RST_STREAM once the
//! proxy started forwarding the call, again and again, with the h2 crate's client) gets
//! its connection closed while another client's calls keep succeeding.
//!
//! The floods are bounded in count and time and stop by themselves.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_shared::listener::PREFACE;
use meridian_tests::cluster::{Cluster, wait_usable};
use meridian_tests::control::{ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, channel};
use meridian_tests::proxy::ProxyProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How long a server has to answer or close a connection, on a loaded machine.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// What a server did with a raw HTTP/2 connection that sent its preface.
#[derive(Debug, PartialEq, Eq)]
enum Opened {
    /// It answered (its SETTINGS frame): the connection is served.
    Served,
    /// It closed the connection without a byte.
    Closed,
}

/// Connects, sends the HTTP/2 preface and an empty SETTINGS frame, and waits for the
/// server's first bytes or its close.
async fn open_raw(addr: SocketAddr) -> (TcpStream, Opened) {
    let mut tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let empty_settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let sent = async {
        tcp.write_all(PREFACE).await?;
        tcp.write_all(&empty_settings).await
    };
    if sent.await.is_err() {
        return (tcp, Opened::Closed);
    }
    let mut first = [0u8; 9];
    let read = tokio::time::timeout(ANSWER_DEADLINE, tcp.read(&mut first))
        .await
        .expect("the server neither answered nor closed the connection");
    let opened = match read {
        Ok(n) if n > 0 => Opened::Served,
        _ => Opened::Closed,
    };
    (tcp, opened)
}

/// Waits until the peer closes `tcp` (EOF or reset), reading and dropping what it sends;
/// how long that took.
async fn closed_within(tcp: &mut TcpStream, deadline: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let until_closed = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, until_closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// An HTTP/2 client connection (h2 crate), and the task driving it, which ends when the
/// server closes the connection.
async fn h2_connect(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

/// A unary Echo call's request head, its body not sent: a node answers only once the
/// request message is complete, so the call stays open until the client ends it.
fn open_echo_call(addr: SocketAddr) -> http::Request<()> {
    http::Request::post(format!("http://{addr}/demo.v1.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request")
}

/// Calls Echo through `client` until `stop`; counts successes and failures.
fn steady_calls(
    client: EchoClient<Channel>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut client = client;
        while !*stop.borrow() {
            let request = demo::SayRequest {
                payload: b"steady".to_vec(),
                ..Default::default()
            };
            match client.say(request).await {
                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                Err(status) => {
                    tracing::warn!(?status, "a steady call failed");
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ok.into_inner(), failed.into_inner())
    })
}

async fn proxy_with(cluster: &Cluster, args: &[&str]) -> ProxyProcess {
    let proxy = cluster
        .proxy_with_args("proxy-eu", "eu-west", "eu-west-a", args)
        .await;
    wait_usable(&proxy, 1).await;
    proxy
}

async fn say_once(client: &mut EchoClient<Channel>) {
    client
        .say(demo::SayRequest::default())
        .await
        .expect("an Echo call through the proxy");
}

/// Polls the proxy's `connections_closed_total{reason}` until it reads `expected` (the
/// count is taken as the connection closes, so a scrape right after the client saw the
/// close may precede it); panics with every closed count after the deadline.
async fn closed_count_reaches(proxy: &ProxyProcess, reason: &str, expected: f64) {
    let name = format!("meridian_proxy_connections_closed_total{{reason=\"{reason}\"}}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let count = proxy.metric(&name).await;
        if count == expected {
            return;
        }
        if Instant::now() >= deadline {
            let (_, body) = meridian_tests::http::get(proxy.admin, "/metrics")
                .await
                .unwrap_or_default();
            let closed: Vec<&str> = body
                .lines()
                .filter(|l| l.starts_with("meridian_proxy_connections_"))
                .collect();
            panic!("{name} read {count}, expected {expected}; {closed:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_connection_flood_hits_the_proxys_cap_and_leaves_existing_and_later_clients_working() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    const CAP: usize = 20;
    const FLOOD: usize = 60;
    let proxy = proxy_with(&cluster, &["--max-connections", &CAP.to_string()]).await;
    let (status, limits) = meridian_tests::http::get(proxy.admin, "/debug/limits")
        .await
        .expect("/debug/limits answers");
    let limits: serde_json::Value = serde_json::from_str(&limits).expect("/debug/limits is JSON");
    assert_eq!(status, 200);
    assert_eq!(
        limits["listener_limits"]["max_connections"], CAP,
        "the cap in force is shown: {limits}"
    );
    let mut steady = EchoClient::new(channel(&proxy.url()).await);
    say_once(&mut steady).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let calls = steady_calls(steady, stopped);

    let mut flood = Vec::new();
    let mut served = 0;
    for _ in 0..FLOOD {
        let (tcp, opened) = open_raw(proxy.grpc).await;
        served += usize::from(opened == Opened::Served);
        flood.push(tcp);
    }
    let _ = stop.send(true);
    let (ok, failed) = calls.await.unwrap();
    assert!(
        (CAP / 2..CAP).contains(&served),
        "{served} of {FLOOD} flood connections served with a cap of {CAP} (one taken by the steady client)"
    );
    let refused = proxy
        .metric("meridian_proxy_connections_refused_total")
        .await;
    assert_eq!(refused as usize, FLOOD - served, "each refusal counted");
    assert!(
        ok > 0 && failed == 0,
        "steady client during the flood: {ok} ok, {failed} failed"
    );

    drop(flood);
    let deadline = Instant::now() + ANSWER_DEADLINE;
    loop {
        // The proxy notices the closed flood connections as it reads them.
        let (_tcp, opened) = open_raw(proxy.grpc).await;
        if opened == Opened::Served {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection served after the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say_once(&mut EchoClient::new(channel(&proxy.url()).await)).await;
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = proxy_with(&cluster, &["--handshake-timeout-ms", "1000"]).await;
    let mut silent = TcpStream::connect(proxy.grpc).await.unwrap();
    let after = closed_within(&mut silent, ANSWER_DEADLINE)
        .await
        .expect("a connection that sent nothing was still open after 10 s");
    assert!(
        after >= Duration::from_millis(800),
        "closed after {after:?}"
    );
    closed_count_reaches(&proxy, "handshake_timeout", 1.0).await;
    // A client that does send its preface is served.
    say_once(&mut EchoClient::new(channel(&proxy.url()).await)).await;
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout_but_not_while_a_call_is_open() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    let proxy = proxy_with(&cluster, &["--idle-timeout", "2"]).await;

    // A connection with no call: closed (GOAWAY) after 2 s.
    let started = Instant::now();
    let (_client, idle) = h2_connect(proxy.grpc).await;
    tokio::time::timeout(Duration::from_secs(20), idle)
        .await
        .expect("an idle connection was still open after 20 s")
        .unwrap();
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1_900),
        "closed after {after:?}"
    );

    // A connection whose call stays open for twice the timeout is kept; once the call
    // ends, it idles and is closed.
    let (client, busy) = h2_connect(proxy.grpc).await;
    let mut client = client.ready().await.unwrap();
    let (_response, mut call) = client
        .send_request(open_echo_call(proxy.grpc), false)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!busy.is_finished(), "closed with a call open");
    call.send_reset(h2::Reason::CANCEL);
    tokio::time::timeout(Duration::from_secs(20), busy)
        .await
        .expect("the connection was still open 20 s after its call ended")
        .unwrap();
    closed_count_reaches(&proxy, "idle", 2.0).await;
}

#[tokio::test]
async fn a_rapid_reset_flood_closes_its_connection_while_other_clients_keep_calling() {
    let cluster = Cluster::start().await;
    let _node = cluster.node("eu-1", "eu-west", "eu-west-a", 0, &[]).await;
    const MAX_RESETS: u32 = 20;
    const PAIRS: u32 = 2_000;
    let proxy = proxy_with(
        &cluster,
        &["--max-premature-resets", &MAX_RESETS.to_string()],
    )
    .await;
    let mut steady = EchoClient::new(channel(&proxy.url()).await);
    say_once(&mut steady).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let calls = steady_calls(steady, stopped);

    let (client, attacker) = h2_connect(proxy.grpc).await;
    let mut client = client;
    let mut sent = 0;
    while sent < PAIRS && !attacker.is_finished() {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let Ok((_response, mut call)) = client.send_request(open_echo_call(proxy.grpc), false)
        else {
            break;
        };
        // Long enough for the proxy to take the call and forward it before the reset.
        tokio::time::sleep(Duration::from_millis(5)).await;
        call.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    tokio::time::timeout(ANSWER_DEADLINE, attacker)
        .await
        .expect("the resetting connection was still open")
        .unwrap();
    assert!(
        sent < PAIRS / 4,
        "closed only after {sent} HEADERS + RST_STREAM pairs (limit {MAX_RESETS})"
    );
    let _ = stop.send(true);
    let (ok, failed) = calls.await.unwrap();
    assert!(
        ok > 0 && failed == 0,
        "steady client during the flood: {ok} ok, {failed} failed"
    );
    closed_count_reaches(&proxy, "premature_resets", 1.0).await;
}

async fn control_plane(dir: &std::path::Path, args: &[&str]) -> ControlPlaneProcess {
    let options = ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-limits",
        election_ttl_seconds: 5,
        dir,
    };
    let extra = ExtraSettings {
        args: args.iter().map(|a| a.to_string()).collect(),
        ..Default::default()
    };
    ControlPlaneProcess::start_with(options, &extra).await
}

async fn health(client: &mut HealthClient<Channel>) -> Result<(), tonic::Status> {
    client
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn the_control_planes_grpc_port_caps_connections_and_closes_idle_ones() {
    let dir = tempfile::tempdir().unwrap();
    const CAP: usize = 8;
    let cp = control_plane(
        dir.path(),
        &["--max-connections", &CAP.to_string(), "--idle-timeout", "2"],
    )
    .await;
    let mut steady = HealthClient::new(channel(&cp.url()).await);
    health(&mut steady).await.expect("health before the flood");

    let mut flood = Vec::new();
    let mut served = 0;
    for _ in 0..3 * CAP {
        let (tcp, opened) = open_raw(cp.grpc).await;
        served += usize::from(opened == Opened::Served);
        flood.push(tcp);
        health(&mut steady)
            .await
            .expect("the existing connection works during the flood");
    }
    assert!(
        (CAP / 2..CAP).contains(&served),
        "{served} of {} flood connections served with a cap of {CAP}",
        3 * CAP
    );
    let refused = cp
        .metric("meridian_control_connections_refused_total")
        .await;
    assert_eq!(refused as usize, 3 * CAP - served);

    // The flood's served connections make no call: they idle out, freeing their places.
    for tcp in &mut flood {
        closed_within(tcp, Duration::from_secs(20))
            .await
            .expect("an idle connection to the control plane was still open after 20 s");
    }
    assert!(
        cp.metric("meridian_control_connections_closed_total{reason=\"idle\"}")
            .await
            >= served as f64
    );
    let mut later = HealthClient::new(channel(&cp.url()).await);
    health(&mut later)
        .await
        .expect("a new connection after the flood");
}
