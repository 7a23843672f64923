//! TLS on both hops through a proxy: clients reach the proxy's listener over TLS (and,
//! when it asks, with a client certificate), and the proxy reaches demo nodes that serve
//! only TLS (`[[upstream_tls]]` in a config file, or `--upstream-ca`), for forwarded calls
//! and RouteMessage alike. Plaintext clients of a TLS listener are refused. Last, every
//! hop at once: a control plane on TLS (and on mTLS), a node registering with it over
//! https, a proxy following it over https. Certificates come from a throw-away CA
//! written to the test's temp dir.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_proto::demo::v1 as demo;
use meridian_proto::demo::v1::echo_client::EchoClient;
use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_proto::v1::message_router_client::MessageRouterClient;
use meridian_shared::tls::testing::{CertFiles, TestCa};
use meridian_shared::tls::{self, ClientTls, ClientTlsFiles};
use meridian_tests::cluster::{Cluster, ECHO, served_by, wait_usable};
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized,
};
use meridian_tests::demo_node::process::DemoNodeProcess;
use meridian_tests::proxy::{ProxyOptions, ProxyProcess};
use tonic::transport::Channel;

/// How long one client attempt (connect, handshake, call) may take.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

/// The test PKI: one CA signs the servers' certificates (proxy and nodes share one for
/// localhost) and a client certificate; a second CA signs an untrusted client certificate.
struct Pki {
    ca: PathBuf,
    server: CertFiles,
    client: CertFiles,
    stranger: CertFiles,
}

impl Pki {
    fn write(dir: &Path) -> Pki {
        let ca = TestCa::new("meridian test CA");
        let other = TestCa::new("some other CA");
        Pki {
            ca: ca.write(dir, "ca"),
            server: ca.localhost_server().write(dir, "server"),
            client: ca
                .client_cert("client-1", Some("spiffe://meridian/client-1"))
                .write(dir, "client"),
            stranger: other.client_cert("stranger", None).write(dir, "stranger"),
        }
    }

    /// The TLS of a client trusting our CA, presenting `cert` if given.
    fn client(&self, cert: Option<&CertFiles>) -> ClientTls {
        ClientTls::load(ClientTlsFiles {
            ca: self.ca.clone(),
            cert: cert.map(|c| c.cert.clone()),
            key: cert.map(|c| c.key.clone()),
            server_name: None,
        })
        .expect("loading the client TLS files")
    }

    /// The demo node flags serving TLS with the server certificate.
    fn node_args(&self) -> [&str; 4] {
        [
            "--tls-cert",
            path(&self.server.cert),
            "--tls-key",
            path(&self.server.key),
        ]
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn https(proxy: &ProxyProcess) -> String {
    format!("https://{}", proxy.grpc)
}

fn say(text: &str) -> demo::SayRequest {
    demo::SayRequest {
        text: text.into(),
        payload: vec![1, 2, 3],
        delay_ms: 0,
    }
}

/// Connects to `url` (with `tls` for https) within [`CALL_DEADLINE`].
async fn connect(url: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    let connecting = tls::connect(url, tls, |e| e.connect_timeout(CALL_DEADLINE));
    match tokio::time::timeout(CALL_DEADLINE, connecting).await {
        Ok(connected) => connected.map_err(|e| format!("connect: {e}")),
        Err(_) => Err(format!("connect: no answer within {CALL_DEADLINE:?}")),
    }
}

/// One Echo/Say through `url` on a new connection: the node that served, or why not.
async fn say_through(url: &str, tls: Option<&ClientTls>) -> Result<String, String> {
    let channel = connect(url, tls).await?;
    let mut echo = EchoClient::new(channel);
    match tokio::time::timeout(CALL_DEADLINE, echo.say(say("over tls"))).await {
        Ok(Ok(reply)) => {
            assert_eq!(reply.get_ref().text, "over tls");
            Ok(served_by(&reply))
        }
        Ok(Err(status)) => Err(format!("call: {status:?}")),
        Err(_) => Err(format!("call: no answer within {CALL_DEADLINE:?}")),
    }
}

/// Two TLS-only demo nodes of demo.v1.Echo in eu-west.
async fn tls_nodes(cluster: &Cluster, pki: &Pki) -> [DemoNodeProcess; 2] {
    let args = pki.node_args();
    [
        cluster.node("eu-1", "eu-west", "eu-west-a", 0, &args).await,
        cluster.node("eu-2", "eu-west", "eu-west-b", 0, &args).await,
    ]
}

/// Every demo.v1.Echo endpoint in the proxy's table is reached over TLS.
async fn assert_endpoints_use_tls(proxy: &ProxyProcess) {
    let table = proxy.debug_table().await;
    let echo = table["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == ECHO)
        .expect("demo.v1.Echo in the table");
    let endpoints = echo["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["tls"], true, "not over TLS: {endpoint:#}");
    }
}

#[tokio::test]
async fn calls_and_route_message_cross_a_tls_listener_to_tls_nodes() {
    let cluster = Cluster::start().await;
    let pki = Pki::write(cluster.dir.path());
    let _nodes = tls_nodes(&cluster, &pki).await;
    let config = cluster.dir.path().join("proxy-tls.toml");
    std::fs::write(
        &config,
        format!(
            "[listen_tls]\ncert = {:?}\nkey = {:?}\n\n[[upstream_tls]]\nservices = [{ECHO:?}]\nca = {:?}\n",
            pki.server.cert, pki.server.key, pki.ca
        ),
    )
    .unwrap();
    let proxy = cluster
        .proxy_with_args(
            "proxy-eu",
            "eu-west",
            "eu-west-a",
            &["--config", path(&config)],
        )
        .await;
    wait_usable(&proxy, 2).await;
    assert_endpoints_use_tls(&proxy).await;

    // Forwarded calls, on one TLS connection to the proxy.
    let client_tls = pki.client(None);
    let channel = connect(&https(&proxy), Some(&client_tls)).await.unwrap();
    let mut echo = EchoClient::new(channel.clone());
    let mut served = std::collections::BTreeSet::new();
    for i in 0..10 {
        let reply = echo.say(say(&format!("m{i}"))).await.unwrap();
        assert_eq!(reply.get_ref().text, format!("m{i}"));
        served.insert(served_by(&reply));
    }
    assert!(
        served.iter().all(|n| n == "eu-1" || n == "eu-2"),
        "served by {served:?}"
    );

    // RouteMessage: the proxy calls the node's MessageHandler over the same TLS hop.
    let mut router = MessageRouterClient::new(channel);
    let answer = router
        .route_message(pb::RouteMessageRequest {
            message: Some(pb::FederationMessage {
                id: "tls-1".into(),
                r#type: "order.created".into(),
                payload: b"{\"order\":7}".to_vec(),
                target_service: ECHO.into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let (reply, decision) = (answer.reply.unwrap(), answer.decision.unwrap());
    assert_eq!(reply.message_id, "tls-1");
    assert_eq!(reply.payload, b"{\"order\":7}");
    assert_eq!(reply.node_id, decision.target_node);

    // A plaintext (h2c) client of the TLS listener gets nothing.
    let plain = say_through(&format!("http://{}", proxy.grpc), None).await;
    assert!(plain.is_err(), "a plaintext client was served: {plain:?}");
}

#[tokio::test]
async fn a_listener_requiring_client_certificates_serves_only_our_clients() {
    let cluster = Cluster::start().await;
    let pki = Pki::write(cluster.dir.path());
    let _nodes = tls_nodes(&cluster, &pki).await;
    let proxy = cluster
        .proxy_with_args(
            "proxy-eu",
            "eu-west",
            "eu-west-a",
            &[
                "--tls-cert",
                path(&pki.server.cert),
                "--tls-key",
                path(&pki.server.key),
                "--tls-client-ca",
                path(&pki.ca),
                "--upstream-ca",
                path(&pki.ca),
            ],
        )
        .await;
    wait_usable(&proxy, 2).await;
    assert_endpoints_use_tls(&proxy).await;
    let url = https(&proxy);

    let anonymous = say_through(&url, Some(&pki.client(None))).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served: {anonymous:?}"
    );
    let stranger = say_through(&url, Some(&pki.client(Some(&pki.stranger)))).await;
    assert!(
        stranger.is_err(),
        "a client certificate from another CA was accepted: {stranger:?}"
    );
    let ours = say_through(&url, Some(&pki.client(Some(&pki.client)))).await;
    let node = ours.expect("a client certificate from our CA is accepted");
    assert!(node == "eu-1" || node == "eu-2", "served by {node}");
}

#[tokio::test]
async fn every_hop_over_tls_from_registration_to_the_call() {
    every_hop_over_tls(ControlPlaneTls::Server).await;
}

#[tokio::test]
async fn every_hop_over_mtls_from_registration_to_the_call() {
    every_hop_over_tls(ControlPlaneTls::Mutual).await;
}

/// Whether the control plane also requires client certificates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ControlPlaneTls {
    Server,
    Mutual,
}

/// A control plane on TLS (tokens stay the credentials), a TLS node registering with it
/// over https, a proxy following it over https and serving TLS from the node; with
/// [`ControlPlaneTls::Mutual`] the node, the proxy and the operator present client
/// certificates too.
async fn every_hop_over_tls(control_plane_tls: ControlPlaneTls) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(dir.path());
    let mtls = control_plane_tls == ControlPlaneTls::Mutual;
    let ca = path(&pki.ca);
    let client_cert_args: Vec<&str> = if mtls {
        vec![
            "--control-plane-cert",
            path(&pki.client.cert),
            "--control-plane-key",
            path(&pki.client.key),
        ]
    } else {
        Vec::new()
    };

    let mut control_args = vec![
        "--tls-cert".to_owned(),
        path(&pki.server.cert).to_owned(),
        "--tls-key".to_owned(),
        path(&pki.server.key).to_owned(),
    ];
    if mtls {
        control_args.extend(["--tls-client-ca".to_owned(), ca.to_owned()]);
    }
    let options = ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-tls",
        election_ttl_seconds: 5,
        dir: dir.path(),
    };
    let extra = ExtraSettings {
        args: control_args,
        ..Default::default()
    };
    let control = ControlPlaneProcess::start_with(options, &extra).await;
    let grpc = control.grpc;
    let control_url = format!("https://{grpc}");
    let operator_tls = pki.client(mtls.then_some(&pki.client));
    let mut admin = AdminClient::new(connect(&control_url, Some(&operator_tls)).await.unwrap());
    let federation = pb::UpsertFederationRequest {
        federation: Some(pb::Federation {
            name: "prod".into(),
            allowed_networks: vec!["127.0.0.0/8".into()],
            ..Default::default()
        }),
    };
    admin
        .upsert_federation(authorized(federation, OPERATOR_TOKEN))
        .await
        .expect("creating the federation");
    let region = pb::UpsertRegionRequest {
        region: Some(pb::Region {
            name: "eu-west".into(),
            federation: "prod".into(),
            location: Some(pb::GeoPoint {
                latitude: 53.35,
                longitude: -6.26,
            }),
            zones: vec!["eu-west-a".into()],
            ..Default::default()
        }),
    };
    admin
        .upsert_region(authorized(region, OPERATOR_TOKEN))
        .await
        .expect("creating the region");

    // A TLS node registering itself over https with a client certificate.
    let mut node_args = pki.node_args().to_vec();
    node_args.extend([
        "--register-with",
        &control_url,
        "--federation",
        "prod",
        "--region",
        "eu-west",
        "--zone",
        "eu-west-a",
        "--control-plane-ca",
        ca,
    ]);
    node_args.extend(&client_cert_args);
    let _node = DemoNodeProcess::start("eu-1", &node_args, &dir.path().join("eu-1.log")).await;

    // A proxy following the control plane over https, TLS on both of its own hops.
    let proxy = ProxyProcess::start_with_args(
        ProxyOptions {
            id: "proxy-eu",
            federation: "prod",
            region: "eu-west",
            zone: "eu-west-a",
            control_planes: std::slice::from_ref(&control_url),
            dir: dir.path(),
            ports: None,
        },
        &[
            ["--control-plane-ca", ca].as_slice(),
            &client_cert_args,
            &[
                "--tls-cert",
                path(&pki.server.cert),
                "--tls-key",
                path(&pki.server.key),
                "--upstream-ca",
                ca,
            ],
        ]
        .concat(),
    )
    .await;
    proxy.wait_ready(Duration::from_secs(20)).await;
    wait_usable(&proxy, 1).await;
    assert_endpoints_use_tls(&proxy).await;
    let node = say_through(&https(&proxy), Some(&pki.client(None))).await;
    assert_eq!(node.as_deref(), Ok("eu-1"));
}
