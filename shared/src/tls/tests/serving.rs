//! Who may connect: TLS, mutual TLS and the clients each refuses.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

use super::super::testing::TestCa;
use super::super::{
    ClientTls, ClientTlsFiles, HandshakeLimits, PeerIdentity, ServerTls, TlsIncoming,
};
use super::{DEADLINE, Pki, TestServer, check_health};

#[tokio::test]
async fn tls_serves_a_client_that_trusts_the_ca() {
    let pki = Pki::new();
    let server = TestServer::start(&ServerTls::load(pki.server_files(None, false)).unwrap()).await;

    check_health(&server.https(), Some(&pki.client(None)))
        .await
        .unwrap();
    assert_eq!(server.last_identity(), None);
}

#[tokio::test]
async fn tls_client_refuses_a_server_from_another_ca() {
    let pki = Pki::new();
    let server = TestServer::start(&ServerTls::load(pki.server_files(None, false)).unwrap()).await;
    let other = Pki::new();

    let refused = check_health(&server.https(), Some(&other.client(None))).await;
    let refused = refused.unwrap_err();
    assert!(refused.contains("invalid peer certificate"), "{refused}");
}

#[tokio::test]
async fn a_configured_server_name_replaces_the_host_of_the_url() {
    let pki = Pki::new();
    let server = TestServer::start(&ServerTls::load(pki.server_files(None, false)).unwrap()).await;
    let named = |name: &str| {
        ClientTls::load(ClientTlsFiles {
            ca: pki.ca_file.clone(),
            cert: None,
            key: None,
            server_name: Some(name.to_owned()),
        })
        .unwrap()
    };

    check_health(&server.https(), Some(&named("localhost")))
        .await
        .unwrap();
    let refused = check_health(&server.https(), Some(&named("elsewhere.example")))
        .await
        .unwrap_err();
    assert!(
        refused.contains("not valid for name \"elsewhere.example\""),
        "{refused}"
    );
}

#[tokio::test]
async fn mtls_server_sees_the_client_identity() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(Some(&pki.ca_file), true)).unwrap();
    let server = TestServer::start(&tls).await;
    let client = pki
        .ca
        .client_cert("proxy-eu-1", Some("spiffe://meridian/proxy/eu-1"))
        .write(pki.path(), "client");

    check_health(&server.https(), Some(&pki.client(Some(&client))))
        .await
        .unwrap();
    let identity = server.last_identity().expect("the client's identity");
    assert_eq!(identity.uri_sans, ["spiffe://meridian/proxy/eu-1"]);
    assert_eq!(identity.common_name.as_deref(), Some("proxy-eu-1"));
    assert!(identity.dns_sans.is_empty());
}

#[tokio::test]
async fn mtls_refuses_plaintext_and_clients_without_a_valid_certificate() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(Some(&pki.ca_file), true)).unwrap();
    let server = TestServer::start(&tls).await;
    let other_ca = TestCa::new("another CA");
    let foreign = other_ca
        .client_cert("intruder", None)
        .write(pki.path(), "foreign");
    let expired = pki
        .ca
        .expired_client_cert("retired")
        .write(pki.path(), "expired");
    let valid = pki.ca.client_cert("proxy", None).write(pki.path(), "valid");

    let plaintext = format!("http://{}", server.addr);
    assert!(check_health(&plaintext, None).await.is_err());
    let refusals = [
        (pki.client(None), "CertificateRequired"),
        (pki.client(Some(&foreign)), "UnknownCA"),
        (pki.client(Some(&expired)), "CertificateExpired"),
    ];
    for (client, alert) in refusals {
        let refused = check_health(&server.https(), Some(&client)).await;
        let refused = refused.expect_err(alert);
        assert!(refused.contains(alert), "{refused}");
    }
    check_health(&server.https(), Some(&pki.client(Some(&valid))))
        .await
        .expect("the refusals did not stop the server");
    assert_eq!(server.identities.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn optional_client_certs_let_anonymous_clients_in() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(Some(&pki.ca_file), false)).unwrap();
    let server = TestServer::start(&tls).await;
    let client = pki.ca.client_cert("cli", None).write(pki.path(), "client");

    check_health(&server.https(), Some(&pki.client(None)))
        .await
        .unwrap();
    assert_eq!(server.last_identity(), None);
    check_health(&server.https(), Some(&pki.client(Some(&client))))
        .await
        .unwrap();
    let identity = server.last_identity().expect("the client's identity");
    assert_eq!(identity.common_name.as_deref(), Some("cli"));
}

#[tokio::test]
async fn a_server_that_is_not_tonic_reads_the_identity_from_the_connection() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(Some(&pki.ca_file), true)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = tls.incoming(listener);
    let files = pki
        .ca
        .client_cert("proxy", Some("spiffe://meridian/proxy"))
        .write(pki.path(), "client");
    let client = pki.client(Some(&files));

    let (accepted, connected) = tokio::join!(incoming.next(), async {
        client
            .connect(TcpStream::connect(addr).await?, "localhost")
            .await
    });
    connected.unwrap();
    let Some(Ok(connection)) = accepted else {
        panic!("no connection accepted");
    };
    let identity = PeerIdentity::from_connection(&connection).unwrap();
    assert_eq!(identity.uri_sans, ["spiffe://meridian/proxy"]);
    assert_eq!(identity.common_name.as_deref(), Some("proxy"));
}

#[tokio::test]
async fn a_silent_client_neither_holds_up_others_nor_stays_connected() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server_files(None, false)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = HandshakeLimits {
        timeout: Duration::from_millis(300),
        max_pending: 4,
    };
    let mut incoming = TlsIncoming::new(listener, tls, limits);

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let client = pki.client(None);
    let (accepted, connected) = tokio::join!(incoming.next(), async {
        client
            .connect(TcpStream::connect(addr).await?, "127.0.0.1")
            .await
    });
    let Some(Ok(connection)) = accepted else {
        panic!("no connection accepted");
    };
    assert_eq!(PeerIdentity::from_connection(&connection), None);
    connected.expect("handshake while another client is silent");

    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut byte))
        .await
        .expect("the silent client is disconnected after the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn loading_names_the_file_and_the_problem() {
    let pki = Pki::new();
    let other = pki.ca.localhost_server().write(pki.path(), "other");
    let mut files = pki.server_files(None, false);
    files.key = other.key.clone();
    let shown = ServerTls::load(files).unwrap_err().to_string();
    assert!(shown.contains("other.key does not match"), "{shown}");
    assert!(shown.contains("server.pem"), "{shown}");

    let shown = ServerTls::load(pki.server_files(None, true))
        .unwrap_err()
        .to_string();
    assert!(shown.contains("needs a client CA"), "{shown}");

    let mut files = pki.server_files(Some(&pki.server.key), true);
    files.client_ca = Some(pki.path().join("absent-ca.pem"));
    let shown = ServerTls::load(files).unwrap_err().to_string();
    assert!(shown.starts_with("cannot read "), "{shown}");
    assert!(shown.contains("absent-ca.pem"), "{shown}");
}
