//! The client side: a rustls `ClientConfig` offering ALPN `h2`, trusting the CA file it is
//! given (and nothing else: Meridian's servers carry certificates from the operator's own
//! CA, so the system roots would only widen who can impersonate them), and presenting a
//! client certificate when one is given. The files are watched and reloaded (see
//! `reload.rs`); each new connection takes the configuration current at that moment, so a
//! rotated client certificate is presented from the next connection on.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pem::{load_ca, load_certs, load_key};
use super::reload::Reloading;
use super::{ALPN_H2, TlsConfigError, provider};

/// Where a client's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The CA bundle the server's certificate must chain to.
    pub ca: PathBuf,
    /// The client certificate chain for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, instead of the host of the URL (for a
    /// server reached by IP address whose certificate names it by DNS name, say).
    pub server_name: Option<String>,
}

/// A client TLS configuration that follows its files. Cheap to clone; the file watcher
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct ClientTls {
    config: Reloading<ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files and starts watching them. Call inside the tokio runtime, or the
    /// files are read once and never again.
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, TlsConfigError> {
        let server_name = files.server_name.as_deref().map(server_name).transpose()?;
        let what = format!("client TLS (CA {})", files.ca.display());
        let mut paths = vec![files.ca.clone()];
        paths.extend(files.cert.clone());
        paths.extend(files.key.clone());
        let config = Reloading::load(what, paths, move || build(&files))?;
        Ok(ClientTls {
            config,
            server_name,
        })
    }

    /// The configuration the next connection will use.
    pub fn current(&self) -> Arc<ClientConfig> {
        self.config.current()
    }

    /// Why the files on disk are not in use, if the last reload failed (the previous
    /// configuration is then still used).
    pub fn reload_error(&self) -> Option<String> {
        self.config.error()
    }

    /// Whether the files named the server name, overriding the host of each URL.
    pub fn has_server_name(&self) -> bool {
        self.server_name.is_some()
    }

    /// The TLS handshake on a connected socket, with the current configuration. The server
    /// must prove it is `host` (a DNS name or IP address), unless the files named another
    /// server name. No time limit of its own.
    pub async fn connect(&self, tcp: TcpStream, host: &str) -> io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => {
                server_name(host).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
            }
        };
        TlsConnector::from(self.current()).connect(name, tcp).await
    }
}

/// A host as rustls wants it; an IPv6 address may come in URL brackets.
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, TlsConfigError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsConfigError::ServerName {
        name: host.to_owned(),
    })
}

fn build(files: &ClientTlsFiles) -> Result<ClientConfig, TlsConfigError> {
    let roots = load_ca(&files.ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots);
    let mut config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| TlsConfigError::from_key_pair(cert, key, e))?,
        (Some(cert), None) => {
            return Err(TlsConfigError::CertWithoutKey { cert: cert.clone() });
        }
        (None, Some(key)) => return Err(TlsConfigError::KeyWithoutCert { key: key.clone() }),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
