//! The control plane on an etcd run as production runs it: TLS only, client certificates
//! required (`--client-cert-auth`) and etcd's authentication on. With the right CA,
//! client certificate and password it serves; with a wrong password, or a CA that did not
//! sign etcd's certificate, it exits at start saying what failed, where, and what to fix,
//! instead of retrying forever as it does for an etcd that is down. Its client
//! certificate is rotated without a restart: new files mean a new etcd connection.

use std::path::Path;
use std::time::Duration;

use meridian_proto::v1 as pb;
use meridian_shared::tls::testing::{TestCa, TestCert};
use meridian_tests::EtcdCluster;
use meridian_tests::control::{
    ControlPlaneOptions, ControlPlaneProcess, ExtraSettings, OPERATOR_TOKEN, authorized,
};
use meridian_tests::etcd::EtcdTlsFiles;
use meridian_tests::ports::free_port;

const ROOT_PASSWORD: &str = "correct-horse-battery-staple";
const PREFIX: &str = "/meridian-tls/";
/// How long a refused control plane may take to exit: one connection attempt, well
/// within this.
const EXIT_DEADLINE: Duration = Duration::from_secs(20);
/// How long rotated etcd TLS files may take to be in use: a poll a second, then one
/// connection.
const ROTATION_DEADLINE: Duration = Duration::from_secs(20);

async fn secured_etcd() -> EtcdCluster {
    EtcdCluster::single_secured(ROOT_PASSWORD)
        .await
        .expect("starting a TLS etcd with authentication")
}

fn options<'a>(etcd_endpoints: &'a [String], dir: &'a Path) -> ControlPlaneOptions<'a> {
    ControlPlaneOptions {
        etcd_endpoints,
        prefix: PREFIX,
        replica: "cp-tls",
        election_ttl_seconds: 5,
        dir,
    }
}

/// Flags for etcd's CA `ca`, the client certificate of `tls` and user `root`.
fn etcd_flags(tls: &EtcdTlsFiles, ca: &Path) -> Vec<String> {
    let path = |p: &Path| p.to_str().expect("utf-8 temp path").to_owned();
    vec![
        "--etcd-ca".into(),
        path(ca),
        "--etcd-cert".into(),
        path(&tls.client.cert),
        "--etcd-key".into(),
        path(&tls.client.key),
        "--etcd-user".into(),
        "root".into(),
    ]
}

/// Waits for a control plane that must refuse to start; returns its output.
fn refused_output(mut cp: ControlPlaneProcess) -> String {
    let status = cp.process.wait_for_exit(EXIT_DEADLINE);
    let output = cp.process.output();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "expected exit status 1 within {EXIT_DEADLINE:?}; its output:\n{output}"
    );
    assert!(
        !output.contains("retrying"),
        "a refusal must not be retried:\n{output}"
    );
    output
}

#[tokio::test]
async fn serves_with_the_right_ca_client_certificate_and_password_file() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("etcd-password");
    std::fs::write(&password_file, format!("{ROOT_PASSWORD}\n")).unwrap();
    let mut args = etcd_flags(&tls, &tls.ca);
    args.extend([
        "--etcd-password-file".into(),
        password_file.display().to_string(),
    ]);

    let endpoints = etcd.endpoints();
    let cp = ControlPlaneProcess::start_with(
        options(&endpoints, dir.path()),
        &ExtraSettings {
            args,
            ..Default::default()
        },
    )
    .await;
    cp.create_region("prod", "eu-west", (53.3, -6.2), &["eu-west-1a"])
        .await;

    let written = etcd
        .client()
        .await
        .get(
            PREFIX,
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await
        .unwrap()
        .count();
    assert!(written > 0, "the Admin writes are not in etcd");
    assert!(
        !cp.process.output().contains(ROOT_PASSWORD),
        "the etcd password reached the log"
    );
}

#[tokio::test]
async fn a_wrong_password_stops_the_control_plane_at_start() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    // The password from the environment this time.
    let cp = ControlPlaneProcess::launch(
        options(&endpoints, dir.path()),
        &ExtraSettings {
            args: etcd_flags(&tls, &tls.ca),
            env: vec![("MERIDIAN_ETCD_PASSWORD".into(), "not-the-password".into())],
            ..Default::default()
        },
    );

    let output = refused_output(cp);
    for wanted in [
        format!("etcd at {} refused user \"root\"", endpoints[0]),
        "authentication failed".to_owned(),
        "--etcd-password-file or MERIDIAN_ETCD_PASSWORD".to_owned(),
    ] {
        assert!(output.contains(&wanted), "no {wanted:?} in:\n{output}");
    }
    assert!(
        !output.contains("not-the-password"),
        "the password reached the log"
    );
}

#[tokio::test]
async fn a_ca_that_did_not_sign_etcds_certificate_stops_the_control_plane_at_start() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = TestCa::new("not etcd's CA").write(dir.path(), "other-ca");
    let endpoints = etcd.endpoints();
    let cp = ControlPlaneProcess::launch(
        options(&endpoints, dir.path()),
        &ExtraSettings {
            args: etcd_flags(&tls, &other_ca),
            env: vec![("MERIDIAN_ETCD_PASSWORD".into(), ROOT_PASSWORD.into())],
            ..Default::default()
        },
    );

    let output = refused_output(cp);
    for wanted in [
        format!("the TLS handshake with etcd at {} failed", endpoints[0]),
        "etcd's certificate is not trusted".to_owned(),
        "--etcd-ca".to_owned(),
    ] {
        assert!(output.contains(&wanted), "no {wanted:?} in:\n{output}");
    }
}

#[tokio::test]
async fn a_client_certificate_etcd_does_not_trust_stops_the_control_plane_at_start() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let untrusted = TestCa::new("not etcd's client CA")
        .client_cert("meridian-control", None)
        .write(dir.path(), "untrusted-client");
    let mut files = tls.clone();
    files.client = untrusted;
    let endpoints = etcd.endpoints();
    let cp = ControlPlaneProcess::launch(
        options(&endpoints, dir.path()),
        &ExtraSettings {
            args: etcd_flags(&files, &tls.ca),
            env: vec![("MERIDIAN_ETCD_PASSWORD".into(), ROOT_PASSWORD.into())],
            ..Default::default()
        },
    );

    let output = refused_output(cp);
    for wanted in [
        format!("the TLS handshake with etcd at {} failed", endpoints[0]),
        "etcd refused the handshake".to_owned(),
        "--etcd-cert".to_owned(),
    ] {
        assert!(output.contains(&wanted), "no {wanted:?} in:\n{output}");
    }
}

#[tokio::test]
async fn without_a_user_the_control_plane_stops_at_start() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let mut args = etcd_flags(&tls, &tls.ca);
    args.retain(|arg| arg != "--etcd-user" && arg != "root");
    let endpoints = etcd.endpoints();
    let cp = ControlPlaneProcess::launch(
        options(&endpoints, dir.path()),
        &ExtraSettings {
            args,
            ..Default::default()
        },
    );

    let output = refused_output(cp);
    let wanted = format!(
        "etcd at {} denied a client without a user (no store.etcd_user)",
        endpoints[0]
    );
    assert!(output.contains(&wanted), "no {wanted:?} in:\n{output}");
}

#[tokio::test]
async fn an_etcd_that_does_not_answer_yet_is_waited_for() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let nobody = [format!("https://127.0.0.1:{}", free_port())];
    let cp = ControlPlaneProcess::launch(
        options(&nobody, dir.path()),
        &ExtraSettings {
            args: etcd_flags(&tls, &tls.ca),
            env: vec![("MERIDIAN_ETCD_PASSWORD".into(), ROOT_PASSWORD.into())],
            ..Default::default()
        },
    );

    // Two warnings: it tried, waited, and tried again instead of exiting.
    let started = std::time::Instant::now();
    while cp
        .process
        .output()
        .matches("cannot reach etcd yet; retrying")
        .count()
        < 2
    {
        assert!(
            started.elapsed() < EXIT_DEADLINE,
            "not retrying within {EXIT_DEADLINE:?}:\n{}",
            cp.process.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_rotated_client_certificate_is_used_without_a_restart() {
    let etcd = secured_etcd().await;
    let tls = etcd.tls_files().unwrap().clone();
    // Without a user, etcd takes the client certificate's common name as the user: first
    // `reader`, who may only read the prefix, then `root`.
    let mut auth = etcd.client().await.auth_client();
    auth.role_add("meridian-reader").await.unwrap();
    auth.role_grant_permission(
        "meridian-reader",
        etcd_client::Permission::read(PREFIX).with_prefix(),
    )
    .await
    .unwrap();
    auth.user_add("reader", "unused-with-certificates", None)
        .await
        .unwrap();
    auth.user_grant_role("reader", "meridian-reader")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let reader = etcd
        .client_cert("reader")
        .unwrap()
        .write(dir.path(), "client");
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        "--etcd-ca".into(),
        path(&tls.ca),
        "--etcd-cert".into(),
        path(&reader.cert),
        "--etcd-key".into(),
        path(&reader.key),
    ];
    let endpoints = etcd.endpoints();
    let cp = ControlPlaneProcess::start_with(
        options(&endpoints, dir.path()),
        &ExtraSettings {
            args,
            ..Default::default()
        },
    )
    .await;

    let refused = upsert_federation(&cp)
        .await
        .expect_err("user reader may not write");
    assert!(
        refused.message().contains("permission denied"),
        "{refused:?}"
    );

    replace(&etcd.client_cert("root").unwrap(), dir.path(), "client");
    let started = std::time::Instant::now();
    while let Err(e) = upsert_federation(&cp).await {
        assert!(
            started.elapsed() < ROTATION_DEADLINE,
            "writes still fail {ROTATION_DEADLINE:?} after the client certificate of root \
             replaced reader's: {e:?}; the control plane's output:\n{}",
            cp.process.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = cp.process.output();
    assert!(
        output.contains("reconnected to etcd with the rotated TLS files"),
        "{output}"
    );
}

async fn upsert_federation(cp: &ControlPlaneProcess) -> Result<(), tonic::Status> {
    let request = pb::UpsertFederationRequest {
        federation: Some(pb::Federation {
            name: "prod".into(),
            allowed_networks: vec!["127.0.0.0/8".into()],
            ..Default::default()
        }),
    };
    cp.admin()
        .await
        .upsert_federation(authorized(request, OPERATOR_TOKEN))
        .await
        .map(drop)
}

/// Replaces `dir/NAME.pem` and `dir/NAME.key` as a rotation does: each file written in
/// full beside it, then renamed over it.
fn replace(cert: &TestCert, dir: &Path, name: &str) {
    let staged = tempfile::tempdir_in(dir).unwrap();
    let files = cert.write(staged.path(), name);
    std::fs::rename(&files.key, dir.join(format!("{name}.key"))).unwrap();
    std::fs::rename(&files.cert, dir.join(format!("{name}.pem"))).unwrap();
}
