//! The dashboard at `/` on the control plane's HTTP port, end to end.
//!
//! In headless Chromium against a real cluster (etcd, control plane, demo nodes, a proxy
//! carrying traffic): a viewer sees the nodes, regions, proxy and the service's traffic; a
//! node drained with `meridianctl` changes state on the page without a reload; a viewer's
//! click on Drain is refused and changes nothing; an operator's click drains the node, as
//! `meridianctl nodes list` then shows, and starts and clears a failover. A screenshot of
//! the page is kept under the target dir (its path is printed).
//!
//! Over plain HTTP against a dev-mode control plane: the API refuses what the gRPC Admin
//! service refuses, bounds bodies and live streams, and the page carries a strict
//! Content-Security-Policy.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_tests::browser::Browser;
use meridian_tests::cluster::{Cluster, ECHO, wait_usable};
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, NODE_TOKEN, OPERATOR_TOKEN, VIEWER_TOKEN, channel,
};
use meridian_tests::http;
use meridian_tests::process::run_to_completion;
use serde_json::{Value, json};

const PAGE_DEADLINE: Duration = Duration::from_secs(45);

fn ctl(cluster: &Cluster, args: &[&str]) -> String {
    let url = cluster.cp.url();
    let mut argv = vec!["--control-plane", url.as_str(), "--token", OPERATOR_TOKEN];
    argv.extend_from_slice(args);
    let (status, stdout, stderr) = run_to_completion("meridianctl", &argv);
    assert!(status.success(), "meridianctl {args:?} failed: {stderr}");
    stdout
}

/// Each node's status as `meridianctl nodes list -o json` prints it.
fn ctl_status(cluster: &Cluster, node: &str) -> String {
    let listed: Value = serde_json::from_str(&ctl(cluster, &["nodes", "list", "-o", "json"]))
        .expect("meridianctl prints JSON");
    listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == node)
        .map(|n| n["status"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("meridianctl does not list {node}"))
}

/// The status the page shows for `node` (JS expression).
fn page_status(node: &str) -> String {
    format!(
        "(document.querySelector('#nodes tr[data-node={}]') || {{ dataset: {{}} }}).dataset.status || null",
        json!(node)
    )
}

async fn sign_in(browser: &mut Browser, token: &str, role: &str) {
    browser.type_into("#token", token).await;
    browser.click("#sign-in").await;
    browser
        .wait_for(
            &format!("document.querySelector('#who').textContent.includes('({role})')"),
            &format!("the page to sign in as {role}"),
            PAGE_DEADLINE,
        )
        .await;
}

/// The page's notice once it mentions `words`.
async fn notice_with(browser: &mut Browser, words: &str) -> String {
    browser
        .wait_for(
            &format!(
                "(() => {{ const n = document.querySelector('#notice'); return !n.hidden && n.textContent.includes({}) ? n.textContent : null; }})()",
                json!(words)
            ),
            &format!("a notice saying {words:?}"),
            PAGE_DEADLINE,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn wait_ctl(cluster: &Cluster, what: &str, mut done: impl FnMut(&Cluster) -> bool) {
    let started = Instant::now();
    while !done(cluster) {
        assert!(started.elapsed() < PAGE_DEADLINE, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_the_cluster_live_and_lets_operators_act() {
    let cluster = Cluster::start().await;
    cluster
        .cp
        .change_config(|c| c.load_report_interval_ms = 1000)
        .await;
    let mut nodes = Vec::new();
    for (id, region, zone) in [
        ("eu-1", "eu-west", "eu-west-a"),
        ("eu-2", "eu-west", "eu-west-b"),
        ("us-1", "us-east", "us-east-a"),
        ("ap-1", "ap-south", "ap-south-a"),
    ] {
        nodes.push(cluster.node(id, region, zone, 1, &[]).await);
    }
    cluster.echo_policy(pb::Algorithm::Geographic, "").await;
    let proxy = cluster.proxy("proxy-eu-west", "eu-west", "eu-west-a").await;
    wait_usable(&proxy, 4).await;
    // Traffic for the page's calls/s, until the test ends.
    let via = channel(&proxy.url()).await;
    let load = tokio::spawn(async move {
        let mut echo = EchoClient::new(via);
        loop {
            let _ = echo.say(demo::SayRequest::default()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let mut browser = Browser::launch(1440, 1000).await;
    let page = format!("http://{}/", cluster.cp.http);
    browser.navigate(&page).await;

    // A viewer sees every node, region and the proxy.
    sign_in(&mut browser, VIEWER_TOKEN, "viewer").await;
    let shown = browser
        .wait_for(
            "(() => { const ids = [...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.dataset.node).sort(); return ids.length === 4 ? ids : null; })()",
            "the four nodes on the page",
            PAGE_DEADLINE,
        )
        .await;
    assert_eq!(shown, json!(["ap-1", "eu-1", "eu-2", "us-1"]));
    let regions = browser
        .eval("[...document.querySelectorAll('#map circle[data-region]')].map(c => c.dataset.region).sort()")
        .await;
    assert_eq!(regions, json!(["ap-south", "eu-west", "us-east"]));
    browser
        .wait_for(
            "document.querySelector('#proxies tr[data-proxy=\"proxy-eu-west\"]')",
            "the proxy on the page",
            PAGE_DEADLINE,
        )
        .await;

    // Drained from the CLI: the page follows without a reload.
    browser.eval("window.notReloaded = true").await;
    ctl(
        &cluster,
        &["nodes", "drain", "us-1", "--reason", "kernel upgrade"],
    );
    browser
        .wait_for(
            &format!("{} === 'draining'", page_status("us-1")),
            "us-1 draining on the page",
            PAGE_DEADLINE,
        )
        .await;
    assert_eq!(
        browser.eval("window.notReloaded === true").await,
        json!(true)
    );
    browser
        .wait_for(
            "[...document.querySelectorAll('#events li')].some(e => e.dataset.kind === 'nodeDraining' && e.textContent.includes('us-1'))",
            "the drain in the live events",
            PAGE_DEADLINE,
        )
        .await;

    // A viewer's click is refused by the control plane and changes nothing.
    browser
        .click("#nodes button[data-action=drain][data-node=\"eu-2\"]")
        .await;
    let refusal = notice_with(&mut browser, "refused").await;
    assert!(refusal.contains("operator role"), "{refusal}");
    assert_ne!(ctl_status(&cluster, "eu-2"), "draining");

    // An operator's click drains the node, as meridianctl shows.
    browser.click("#sign-out").await;
    sign_in(&mut browser, OPERATOR_TOKEN, "operator").await;
    browser.type_into("#reason", "moving rack").await;
    browser
        .click("#nodes button[data-action=drain][data-node=\"eu-2\"]")
        .await;
    wait_ctl(&cluster, "meridianctl to list eu-2 as draining", |c| {
        ctl_status(c, "eu-2") == "draining"
    })
    .await;
    browser
        .wait_for(
            &format!("{} === 'draining'", page_status("eu-2")),
            "eu-2 draining on the page",
            PAGE_DEADLINE,
        )
        .await;

    // And starts a failover to us-east, then clears it.
    browser.type_into("#failover-target", "us-east").await;
    browser.click("#failover-start").await;
    let failovers = |c: &Cluster| -> Vec<Value> {
        serde_json::from_str::<Value>(&ctl(c, &["failover", "list", "-o", "json"]))
            .expect("meridianctl prints JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    wait_ctl(&cluster, "meridianctl to list the failover", |c| {
        failovers(c)
            .iter()
            .any(|f| f["service"] == ECHO && f["target"] == "us-east")
    })
    .await;
    browser
        .wait_for(
            &format!(
                "document.querySelector('#failovers button[data-service={}]')",
                json!(ECHO)
            ),
            "the failover on the page",
            PAGE_DEADLINE,
        )
        .await;
    browser.click("#failovers button[data-action=clear]").await;
    wait_ctl(&cluster, "the failover to be cleared", |c| {
        failovers(c).is_empty()
    })
    .await;

    // The service's traffic, from the proxy's load reports.
    browser
        .wait_for(
            &format!(
                "(() => {{ const c = document.querySelector('#services tr[data-service={}] td.calls'); return c && parseFloat(c.textContent) > 0; }})()",
                json!(ECHO)
            ),
            "calls/s of demo.v1.Echo on the page",
            PAGE_DEADLINE,
        )
        .await;
    // Recovered from the page: the control plane records it and checks the node again.
    browser
        .click("#nodes button[data-action=recover][data-node=\"eu-2\"]")
        .await;
    browser
        .wait_for(
            "[...document.querySelectorAll('#events li')].some(e => e.dataset.kind === 'nodeRecovered' && e.textContent.includes('eu-2'))",
            "eu-2's recovery in the live events",
            PAGE_DEADLINE,
        )
        .await;
    wait_ctl(&cluster, "meridianctl to list eu-2 back in service", |c| {
        ["unknown", "healthy"].contains(&ctl_status(c, "eu-2").as_str())
    })
    .await;
    browser
        .wait_for(
            &format!("['unknown', 'healthy'].includes({})", page_status("eu-2")),
            "eu-2 back in service on the page",
            PAGE_DEADLINE,
        )
        .await;

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser.screenshot(&shot).await;
    println!("dashboard screenshot: {}", shot.display());
    assert!(std::fs::metadata(&shot).expect("the screenshot").len() > 10_000);
    load.abort();
    drop(browser);
    drop(nodes);
}

/// A control plane on the embedded store, with the harness's tokens.
async fn dev_control_plane(dir: &std::path::Path) -> ControlPlaneProcess {
    ControlPlaneProcess::start(ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-dev",
        election_ttl_seconds: 5,
        dir,
    })
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn dashboard_api_admits_callers_like_the_admin_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cp = dev_control_plane(dir.path()).await;
    let json_body = ("Content-Type", "application/json");

    // The page: embedded, strict policy, no inline script or handlers.
    let page = http::request(cp.http, "GET", "/", &[], b"").await.unwrap();
    assert_eq!(page.status, 200);
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert!(!page.body.contains("<script>") && !page.body.contains(" onclick="));
    let script = http::request(cp.http, "GET", "/dashboard.js", &[], b"")
        .await
        .unwrap();
    assert_eq!(script.status, 200);
    assert!(!script.body.contains("innerHTML"));

    // Reads: no credential 401, a node's token 403, a viewer's 200.
    let overview = |token: Option<String>| {
        let headers: Vec<(&str, String)> =
            token.into_iter().map(|t| ("Authorization", t)).collect();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            http::request(cp.http, "GET", "/api/v1/overview", &headers, b"")
                .await
                .unwrap()
        }
    };
    assert_eq!(overview(None).await.status, 401);
    assert_eq!(overview(Some(bearer("not-a-token"))).await.status, 401);
    let node = overview(Some(bearer(NODE_TOKEN))).await;
    assert_eq!(node.status, 403, "{}", node.body);
    let viewer = overview(Some(bearer(VIEWER_TOKEN))).await;
    assert_eq!(viewer.status, 200, "{}", viewer.body);
    let document: Value = serde_json::from_str(&viewer.body).expect("JSON");
    assert!(document["nodes"].is_array() && document["metrics"]["nodes"].is_object());

    // Writes: a viewer is refused before anything is looked up; an operator reaches the
    // Admin service, which names the unknown node.
    let viewer_auth = bearer(VIEWER_TOKEN);
    let operator_auth = bearer(OPERATOR_TOKEN);
    let drain = |auth: &str, body: &[u8]| {
        let headers = [("Authorization", auth.to_owned())];
        let body = body.to_vec();
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (*n, v.as_str()))
                .chain([json_body])
                .collect();
            http::request(
                cp.http,
                "POST",
                "/api/v1/nodes/ghost/drain",
                &headers,
                &body,
            )
            .await
            .unwrap()
        }
    };
    let refused = drain(&viewer_auth, br#"{"reason":"x"}"#).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("operator role"), "{}", refused.body);
    let unknown = drain(&operator_auth, br#"{"reason":"x"}"#).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.body.contains("ghost"), "{}", unknown.body);
    let malformed = drain(&operator_auth, br#"{"reason":"x","extra":1}"#).await;
    assert!(
        (400..500).contains(&malformed.status),
        "{}: {}",
        malformed.status,
        malformed.body
    );
    let huge = format!(r#"{{"reason":"{}"}}"#, "x".repeat(64 * 1024));
    let oversized = drain(&operator_auth, huge.as_bytes()).await;
    assert_eq!(oversized.status, 413, "{}", oversized.body);

    // Live streams: a viewer may open them, up to the limit; the next one is refused
    // until one closes.
    let viewer_header = [("Authorization", viewer_auth.as_str())];
    let (status, _) = http::open_stream(cp.http, "/api/v1/stream", &[])
        .await
        .unwrap();
    assert_eq!(status, 401);
    let mut open = Vec::new();
    for _ in 0..meridian_control_plane::dashboard::MAX_STREAMS {
        let (status, stream) = http::open_stream(cp.http, "/api/v1/stream", &viewer_header)
            .await
            .unwrap();
        assert_eq!(status, 200);
        open.push(stream);
    }
    let (status, _) = http::open_stream(cp.http, "/api/v1/stream", &viewer_header)
        .await
        .unwrap();
    assert_eq!(status, 429);
    open.pop();
    let started = Instant::now();
    loop {
        let (status, stream) = http::open_stream(cp.http, "/api/v1/stream", &viewer_header)
            .await
            .unwrap();
        if status == 200 {
            open.push(stream);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
