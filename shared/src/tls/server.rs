//! The server side: a rustls `ServerConfig` offering ALPN `h2`, built from a certificate
//! chain and key, and verifying client certificates against a CA when one is given (mutual
//! TLS). The files are watched and reloaded (see `reload.rs`); each handshake takes the
//! configuration current at that moment.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::incoming::{HandshakeLimits, TlsIncoming};
use super::pem::{load_ca, load_certs, load_key};
use super::reload::Reloading;
use super::{ALPN_H2, TlsConfigError, provider};

/// Where a server's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs client certificates. With it, a client certificate is verified if
    /// presented; without it, none is asked for.
    pub client_ca: Option<PathBuf>,
    /// Refuse clients without a certificate. Needs `client_ca`.
    pub require_client_cert: bool,
}

/// A server TLS configuration that follows its files. Cheap to clone; the file watcher
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct ServerTls {
    config: Reloading<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the files and starts watching them. Call inside the tokio runtime, or the
    /// files are read once and never again.
    pub fn load(files: ServerTlsFiles) -> Result<ServerTls, TlsConfigError> {
        if files.require_client_cert && files.client_ca.is_none() {
            return Err(TlsConfigError::ClientCaMissing);
        }
        let what = format!("server certificate {}", files.cert.display());
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let config = Reloading::load(what, paths, move || build(&files))?;
        Ok(ServerTls { config })
    }

    /// The configuration the next handshake will use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.current()
    }

    /// Why the files on disk are not in use, if the last reload failed (the previous
    /// configuration is then still serving). For health and admin pages.
    pub fn reload_error(&self) -> Option<String> {
        self.config.error()
    }

    /// An acceptor for one handshake with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current())
    }

    /// The TLS handshake on an accepted connection, with no time limit of its own.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.acceptor().accept(tcp).await
    }

    /// The listener's connections, handshaken concurrently with the default limits: give it
    /// to `tonic::transport::Server::serve_with_incoming_shutdown`, or read it in a hyper
    /// accept loop.
    pub fn incoming(&self, listener: TcpListener) -> TlsIncoming {
        TlsIncoming::new(listener, self.clone(), HandshakeLimits::default())
    }
}

fn build(files: &ServerTlsFiles) -> Result<ServerConfig, TlsConfigError> {
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(load_ca(ca)?), provider());
            let verifier = if files.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|source| TlsConfigError::ClientVerifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsConfigError::from_key_pair(&files.cert, &files.key, e))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
