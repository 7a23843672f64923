//! The control plane's gRPC listener on TLS and mTLS, with the real `meridian-control` and
//! `meridianctl` binaries and certificates generated in the test: TLS serves a client that
//! trusts the CA and refuses plaintext and clients trusting another CA; mTLS refuses a
//! client without a certificate, with one from another CA or an expired one, and lets a
//! proxy authenticate with its certificate alone (mapped to the proxy role); a server
//! certificate rotated on disk is used by the next connection without a restart; a
//! non-loopback listener without TLS is refused at start; the HTTP port (metrics, probes,
//! the dashboard) serves HTTPS when given a certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_proto::v1::admin_client::AdminClient;
use meridian_proto::v1::routing_discovery_client::RoutingDiscoveryClient;
use meridian_shared::tls::testing::{CertFiles, TestCa};
use meridian_shared::tls::{self, ClientTls, ClientTlsFiles};
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized,
};
use meridian_tests::ports::free_port;
use meridian_tests::process::{ChildProcess, run_to_completion};
use tokio::time::Instant;
use tonic::Code;

const START_DEADLINE: Duration = Duration::from_secs(20);
const ROTATION_DEADLINE: Duration = Duration::from_secs(15);
/// The identity of the proxy certificate, mapped to the proxy role in the tokens file.
const PROXY_IDENTITY: &str = "spiffe://prod/proxy/eu-west";

struct TlsControlPlane {
    _process: ControlPlaneProcess,
    grpc: SocketAddr,
    dir: tempfile::TempDir,
    ca: PathBuf,
    server: CertFiles,
}

impl TlsControlPlane {
    /// A dev-mode control plane serving TLS with a certificate of `ca`, requiring client
    /// certificates of `ca` when `mtls`.
    async fn start(ca: &TestCa, mtls: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_file = ca.write(dir.path(), "ca");
        let server = ca.localhost_server().write(dir.path(), "server");
        let mut args = vec![
            "--tls-cert".to_owned(),
            path(&server.cert).to_owned(),
            "--tls-key".to_owned(),
            path(&server.key).to_owned(),
        ];
        if mtls {
            args.extend(["--tls-client-ca".to_owned(), path(&ca_file).to_owned()]);
        }
        let extra = ExtraSettings {
            args,
            credentials: format!(
                "[[certificates]]\nname = \"proxy-eu-west\"\nidentity = \"{PROXY_IDENTITY}\"\nrole = \"proxy\"\nfederation = \"prod\"\n"
            ),
            ..Default::default()
        };
        let options = ControlPlaneOptions {
            etcd_endpoints: &[],
            prefix: "/meridian/",
            replica: "cp-tls",
            election_ttl_seconds: 5,
            dir: dir.path(),
        };
        let process = ControlPlaneProcess::start_with(options, &extra).await;
        TlsControlPlane {
            grpc: process.grpc,
            _process: process,
            ca: ca_file,
            server,
            dir,
        }
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.grpc.port())
    }

    /// `meridianctl --control-plane <url> <extra> federations list`: whether it succeeded,
    /// and its stderr.
    fn ctl(&self, url: &str, extra: &[&str]) -> (bool, String) {
        let mut args = vec![
            "--control-plane",
            url,
            "--token",
            OPERATOR_TOKEN,
            "--timeout",
            "5",
        ];
        args.extend_from_slice(extra);
        args.extend(["federations", "list"]);
        let (status, _, stderr) = run_to_completion("meridianctl", &args);
        (status.success(), stderr)
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn client_tls(ca: &Path, cert: Option<&CertFiles>) -> ClientTls {
    ClientTls::load(ClientTlsFiles {
        ca: ca.to_owned(),
        cert: cert.map(|c| c.cert.clone()),
        key: cert.map(|c| c.key.clone()),
        server_name: None,
    })
    .expect("client TLS files load")
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_ca_and_refuses_plaintext_and_other_cas() {
    let ca = TestCa::new("meridian-test-ca");
    let cp = TlsControlPlane::start(&ca, false).await;

    let (ok, stderr) = cp.ctl(&cp.https(), &["--ca", path(&cp.ca)]);
    assert!(ok, "meridianctl over TLS failed: {stderr}");

    let plaintext = format!("http://{}", cp.grpc);
    let (ok, _) = cp.ctl(&plaintext, &[]);
    assert!(!ok, "a plaintext client was served by a TLS listener");

    let stranger = TestCa::new("another-ca").write(cp.dir.path(), "stranger-ca");
    let (ok, stderr) = cp.ctl(&cp.https(), &["--ca", path(&stranger)]);
    assert!(!ok, "a client trusting another CA connected");
    assert!(
        stderr.contains("cannot reach the control plane"),
        "the error says what failed: {stderr}"
    );

    let (ok, stderr) = cp.ctl(&cp.https(), &[]);
    assert!(!ok);
    assert!(stderr.contains("--ca"), "the error names --ca: {stderr}");
}

#[tokio::test]
async fn mtls_needs_a_valid_client_certificate_and_maps_it_to_a_role() {
    let ca = TestCa::new("meridian-test-ca");
    let cp = TlsControlPlane::start(&ca, true).await;
    let dir = cp.dir.path();
    let operator = ca.client_cert("operator", None).write(dir, "operator");
    let expired = ca.expired_client_cert("operator").write(dir, "expired");
    let foreign = TestCa::new("another-ca")
        .client_cert("operator", None)
        .write(dir, "foreign");

    let with_cert = |c: &CertFiles| {
        vec![
            "--ca".to_owned(),
            path(&cp.ca).to_owned(),
            "--cert".to_owned(),
            path(&c.cert).to_owned(),
            "--key".to_owned(),
            path(&c.key).to_owned(),
        ]
    };
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cp.ctl(&cp.https(), &args)
    };
    let (ok, stderr) = run(with_cert(&operator));
    assert!(ok, "meridianctl with a client certificate failed: {stderr}");
    let (ok, _) = run(vec!["--ca".into(), path(&cp.ca).into()]);
    assert!(!ok, "a client without a certificate was served");
    let (ok, _) = run(with_cert(&foreign));
    assert!(!ok, "a client certificate of another CA was accepted");
    let (ok, _) = run(with_cert(&expired));
    assert!(!ok, "an expired client certificate was accepted");

    // Create federation prod with the operator's certificate and token.
    let operator_tls = client_tls(&cp.ca, Some(&operator));
    let channel = tls::connect(&cp.https(), Some(&operator_tls), |e| e)
        .await
        .expect("operator connects");
    AdminClient::new(channel)
        .upsert_federation(authorized(
            pb::UpsertFederationRequest {
                federation: Some(pb::Federation {
                    name: "prod".into(),
                    ..Default::default()
                }),
            },
            OPERATOR_TOKEN,
        ))
        .await
        .expect("creating federation prod");

    // A proxy authenticates with its certificate alone: it gets prod's table, and its
    // role gives it nothing on the Admin API.
    let proxy = ca
        .client_cert("proxy-eu-west", Some(PROXY_IDENTITY))
        .write(dir, "proxy");
    let proxy_tls = client_tls(&cp.ca, Some(&proxy));
    let channel = tls::connect(&cp.https(), Some(&proxy_tls), |e| e)
        .await
        .expect("proxy connects");
    let hello = pb::StreamRoutesRequest {
        message: Some(pb::stream_routes_request::Message::Hello(pb::Hello {
            proxy_id: "proxy-eu-west".into(),
            federation: "prod".into(),
            region: "eu-west".into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(hello).await.unwrap();
    let mut updates = RoutingDiscoveryClient::new(channel.clone())
        .stream_routes(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the certificate admits the proxy")
        .into_inner();
    let first = tokio::time::timeout(START_DEADLINE, updates.message())
        .await
        .expect("a table within the deadline")
        .expect("the stream stays open")
        .expect("an update");
    assert!(
        matches!(
            first.update,
            Some(pb::stream_routes_response::Update::Snapshot(_))
        ),
        "{first:?}"
    );
    let denied = AdminClient::new(channel)
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    // A certificate of the CA that is not mapped to a role is not a credential.
    let unmapped = ca.client_cert("somebody", None).write(dir, "somebody");
    let channel = tls::connect(
        &cp.https(),
        Some(&client_tls(&cp.ca, Some(&unmapped))),
        |e| e,
    )
    .await
    .expect("the handshake succeeds");
    let refused = AdminClient::new(channel)
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

#[tokio::test]
async fn a_server_certificate_rotated_on_disk_is_used_by_the_next_connection() {
    let old_ca = TestCa::new("old-ca");
    let cp = TlsControlPlane::start(&old_ca, false).await;
    let (ok, stderr) = cp.ctl(&cp.https(), &["--ca", path(&cp.ca)]);
    assert!(ok, "{stderr}");

    // Rotate to a certificate of a new CA, as cert-manager would: new files renamed over
    // the old ones.
    let new_ca = TestCa::new("new-ca");
    let new_ca_file = new_ca.write(cp.dir.path(), "new-ca");
    let staging = cp.dir.path().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let staged = new_ca.localhost_server().write(&staging, "server");
    std::fs::rename(&staged.key, &cp.server.key).unwrap();
    std::fs::rename(&staged.cert, &cp.server.cert).unwrap();

    let started = Instant::now();
    loop {
        let (ok, _) = cp.ctl(&cp.https(), &["--ca", path(&new_ca_file)]);
        if ok {
            break;
        }
        assert!(
            started.elapsed() < ROTATION_DEADLINE,
            "the rotated certificate was not served within {ROTATION_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (ok, _) = cp.ctl(&cp.https(), &["--ca", path(&cp.ca)]);
    assert!(
        !ok,
        "the old certificate is still served after the rotation"
    );
}

#[tokio::test]
async fn a_non_loopback_listener_without_tls_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = format!("0.0.0.0:{}", free_port());
    let http_addr = format!("127.0.0.1:{}", free_port());
    let mut process = ChildProcess::spawn(
        "meridian-control",
        &["--dev", "--grpc-addr", &grpc, "--http-addr", &http_addr],
        &dir.path().join("control.log"),
    )
    .unwrap();
    let status = process
        .wait_for_exit(START_DEADLINE)
        .expect("the control plane refused to start");
    assert!(!status.success());
    let output = process.output();
    assert!(
        output.contains("listen.grpc")
            && output.contains("--tls-cert")
            && output.contains("--insecure"),
        "the refusal says why and what to do: {output}"
    );
}

#[tokio::test]
async fn the_http_port_serves_https_when_given_a_certificate() {
    let ca = TestCa::new("meridian-test-ca");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write(dir.path(), "ca");
    let server = ca.localhost_server().write(dir.path(), "server");
    let extra = ExtraSettings {
        args: vec![
            "--http-tls-cert".to_owned(),
            path(&server.cert).to_owned(),
            "--http-tls-key".to_owned(),
            path(&server.key).to_owned(),
        ],
        ..Default::default()
    };
    let options = ControlPlaneOptions {
        etcd_endpoints: &[],
        prefix: "/meridian/",
        replica: "cp-https",
        election_ttl_seconds: 5,
        dir: dir.path(),
    };
    let cp = ControlPlaneProcess::launch(options, &extra);
    let tls = client_tls(&ca_file, None);

    let deadline = Instant::now() + START_DEADLINE;
    let ready = loop {
        match meridian_tests::http::https_get(cp.http, "/ready", &tls).await {
            Ok((200, body)) => break body,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("/ready over HTTPS: {other:?}"),
        }
    };
    assert_eq!(ready.trim(), "ready");
    let (status, metrics) = meridian_tests::http::https_get(cp.http, "/metrics", &tls)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("meridian_control_"), "{metrics}");

    // Plain HTTP gets no answer from the HTTPS port.
    let plain = meridian_tests::http::get(cp.http, "/ready").await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    // Nor does a client trusting another CA.
    let stranger = TestCa::new("another-ca").write(dir.path(), "stranger-ca");
    let refused =
        meridian_tests::http::https_get(cp.http, "/ready", &client_tls(&stranger, None)).await;
    assert!(refused.is_err(), "{refused:?}");
}
