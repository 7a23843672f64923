//! The TLS toolkit end to end, in process, on real sockets: a tonic health server behind
//! [`TlsIncoming`](super::TlsIncoming), and clients through [`connect`](super::connect).
//! `serving.rs` covers who may connect; `rotation.rs` covers files changing underneath.

mod rotation;
mod serving;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::AbortOnDropHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::testing::{CertFiles, TestCa};
use super::{ClientTls, ClientTlsFiles, PeerIdentity, ServerTls, ServerTlsFiles, connect};

/// How long a test waits for something that should happen within a poll or two.
const DEADLINE: Duration = Duration::from_secs(15);

/// A CA with a localhost server certificate, in a temporary directory.
struct Pki {
    dir: TempDir,
    ca: TestCa,
    ca_file: std::path::PathBuf,
    server: CertFiles,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("meridian test CA");
        let ca_file = ca.write(dir.path(), "ca");
        let server = ca.localhost_server().write(dir.path(), "server");
        Pki {
            dir,
            ca,
            ca_file,
            server,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn server_files(&self, client_ca: Option<&Path>, require_client_cert: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.server.cert.clone(),
            key: self.server.key.clone(),
            client_ca: client_ca.map(Path::to_owned),
            require_client_cert,
        }
    }

    /// Trusts this CA; presents `client` when given.
    fn client(&self, client: Option<&CertFiles>) -> ClientTls {
        ClientTls::load(ClientTlsFiles {
            ca: self.ca_file.clone(),
            cert: client.map(|c| c.cert.clone()),
            key: client.map(|c| c.key.clone()),
            server_name: None,
        })
        .unwrap()
    }
}

/// A health server over TLS that remembers the client identity of each call.
struct TestServer {
    addr: SocketAddr,
    identities: Arc<Mutex<Vec<Option<PeerIdentity>>>>,
    _serving: AbortOnDropHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(tls: &ServerTls) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identities = Arc::new(Mutex::new(Vec::new()));
        let seen = identities.clone();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let health = InterceptedService::new(health, move |request: tonic::Request<()>| {
            let identity = PeerIdentity::from_extensions(request.extensions());
            seen.lock().unwrap().push(identity);
            Ok(request)
        });
        let serving = Server::builder()
            .add_service(health)
            .serve_with_incoming(tls.incoming(listener));
        TestServer {
            addr,
            identities,
            _serving: AbortOnDropHandle::new(tokio::spawn(serving)),
        }
    }

    fn https(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn last_identity(&self) -> Option<PeerIdentity> {
        self.identities.lock().unwrap().last().cloned().flatten()
    }

    /// The certificate the server presents to a new connection trusting `tls`.
    async fn presented_cert(&self, tls: &ClientTls) -> std::io::Result<CertificateDer<'static>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let stream = tls.connect(tcp, "127.0.0.1").await?;
        let (_, session) = stream.get_ref();
        Ok(session.peer_certificates().unwrap()[0].clone())
    }
}

/// One health check on a new channel; the error, with its causes, as text.
async fn check_health(url: &str, tls: Option<&ClientTls>) -> Result<(), String> {
    let limit = Duration::from_secs(5);
    let channel = connect(url, tls, |e| e.connect_timeout(limit).timeout(limit))
        .await
        .map_err(|e| causes(&e))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|status| causes(&status))?;
    Ok(())
}

fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Retries `attempt` until it returns `Some`, failing the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
