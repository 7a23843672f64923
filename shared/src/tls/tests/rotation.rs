//! Files changing underneath a running server or client: the next connection uses them,
//! and a broken change is refused without disturbing what works.

use std::sync::Arc;

use super::super::{ServerTls, load_certs};
use super::{Pki, TestServer, check_health, eventually};

#[tokio::test]
async fn a_rotated_server_cert_is_used_by_the_next_connection() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(None, false)).unwrap();
    let server = TestServer::start(&tls).await;
    let old_client = pki.client(None);
    check_health(&server.https(), Some(&old_client))
        .await
        .unwrap();

    // A client that trusts only the new CA gets in once the new certificate is served.
    let new = Pki::new();
    let new_client = new.client(None);
    assert!(
        check_health(&server.https(), Some(&new_client))
            .await
            .is_err()
    );
    new.ca.localhost_server().write(pki.path(), "server");
    eventually("the rotated certificate to be served", || async {
        check_health(&server.https(), Some(&new_client)).await.ok()
    })
    .await;

    let presented = server.presented_cert(&new_client).await.unwrap();
    assert_eq!(presented, load_certs(&pki.server.cert).unwrap()[0]);
    assert!(
        check_health(&server.https(), Some(&old_client))
            .await
            .is_err()
    );
    assert_eq!(tls.reload_error(), None);
}

#[tokio::test]
async fn a_broken_server_cert_keeps_the_previous_configuration() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(None, false)).unwrap();
    let server = TestServer::start(&tls).await;
    let client = pki.client(None);
    let original = load_certs(&pki.server.cert).unwrap().remove(0);
    let before = tls.current();

    std::fs::write(&pki.server.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    let error = eventually("the broken file to be noticed", || async {
        tls.reload_error()
    })
    .await;
    assert!(error.contains("server.pem is not valid PEM"), "{error}");
    assert!(Arc::ptr_eq(&before, &tls.current()));
    check_health(&server.https(), Some(&client))
        .await
        .expect("still served with the previous certificate");
    assert_eq!(server.presented_cert(&client).await.unwrap(), original);

    // Fixing the file clears the error and the fixed certificate is served.
    pki.ca.localhost_server().write(pki.path(), "server");
    eventually("the fixed file to be loaded", || async {
        tls.reload_error().is_none().then_some(())
    })
    .await;
    let fixed = load_certs(&pki.server.cert).unwrap().remove(0);
    assert_ne!(fixed, original);
    assert_eq!(server.presented_cert(&client).await.unwrap(), fixed);
}

#[tokio::test]
async fn a_rotated_client_cert_is_presented_on_the_next_connection() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(Some(&pki.ca_file), true)).unwrap();
    let server = TestServer::start(&tls).await;
    let files = pki
        .ca
        .client_cert("before", None)
        .write(pki.path(), "client");
    let client = pki.client(Some(&files));
    check_health(&server.https(), Some(&client)).await.unwrap();
    assert_eq!(
        server.last_identity().unwrap().common_name.as_deref(),
        Some("before")
    );

    pki.ca
        .client_cert("after", None)
        .write(pki.path(), "client");
    eventually("the rotated client certificate to be presented", || async {
        check_health(&server.https(), Some(&client)).await.ok()?;
        let name = server.last_identity()?.common_name?;
        (name == "after").then_some(())
    })
    .await;
    assert_eq!(client.reload_error(), None);
}

#[tokio::test]
async fn the_watcher_stops_when_the_last_handle_is_dropped() {
    let tasks = tokio::runtime::Handle::current().metrics();
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(None, false)).unwrap();
    let clone = tls.clone();
    assert_eq!(tasks.num_alive_tasks(), 1, "one watcher for both handles");

    drop(tls);
    drop(clone);
    eventually("the watcher to stop", || async {
        (tasks.num_alive_tasks() == 0).then_some(())
    })
    .await;
}
