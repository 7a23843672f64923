//! A tonic [`Channel`] for a URL, where the scheme decides: `https://` connects with TLS and
//! needs a [`ClientTls`]; `http://` connects in plaintext, and ignores a `ClientTls` if one
//! is given (so one set of client files serves a mix of URLs, and the URL alone says what
//! goes over the wire).
//!
//! TLS is done by our own connector, not tonic's: tonic's takes a fixed configuration,
//! while ours takes the [`ClientTls`] current when each connection opens, so a rotated CA
//! or client certificate is used from the next connection on. Tonic's connector refuses an
//! `https` URI it has no TLS configuration for, so the endpoint is given `http://host:port`
//! to dial, and the original URL as its origin (requests still say `:scheme https`).
//!
//! `Endpoint`'s `tcp_*` settings do not reach our connector (it sets `TCP_NODELAY` itself);
//! `connect_timeout` does, and covers the TCP connect and the TLS handshake together.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use super::ClientTls;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{url:?} is not a valid URL: {source}")]
    InvalidUrl {
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("{url:?} needs a scheme and a host, as in https://host:port")]
    Incomplete { url: String },
    #[error("{url:?} has an unsupported scheme; use http:// or https://")]
    Scheme { url: String },
    #[error("{url} is an https URL but no client TLS is configured (a CA file is needed)")]
    HttpsWithoutTls { url: String },
    #[error("the host of {url} is not a valid TLS server name")]
    ServerName { url: String },
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
}

/// Connects to `url` now. `settings` adjusts the endpoint (timeouts, keep-alives...); pass
/// `|e| e` for tonic's defaults.
pub async fn connect(
    url: &str,
    tls: Option<&ClientTls>,
    settings: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, ConnectError> {
    let target = Target::parse(url, tls)?;
    let endpoint = settings(target.endpoint);
    let connected = match target.tls {
        None => endpoint.connect().await,
        Some(tls) => endpoint.connect_with_connector(TlsConnect { tls }).await,
    };
    connected.map_err(|source| ConnectError::Connect {
        url: url.to_owned(),
        source,
    })
}

/// A channel to `url` that connects on first use, and reconnects as needed.
pub fn connect_lazy(
    url: &str,
    tls: Option<&ClientTls>,
    settings: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, ConnectError> {
    let target = Target::parse(url, tls)?;
    let endpoint = settings(target.endpoint);
    Ok(match target.tls {
        None => endpoint.connect_lazy(),
        Some(tls) => endpoint.connect_with_connector_lazy(TlsConnect { tls }),
    })
}

/// What to dial, and with which TLS.
struct Target {
    endpoint: Endpoint,
    tls: Option<ClientTls>,
}

impl Target {
    fn parse(url: &str, tls: Option<&ClientTls>) -> Result<Target, ConnectError> {
        let uri: Uri = url.parse().map_err(|source| ConnectError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ConnectError::Incomplete {
                url: url.to_owned(),
            });
        };
        match scheme {
            "http" => Ok(Target {
                endpoint: Endpoint::from(uri),
                tls: None,
            }),
            "https" => {
                let Some(tls) = tls else {
                    return Err(ConnectError::HttpsWithoutTls {
                        url: url.to_owned(),
                    });
                };
                let host = authority.host();
                if !tls.has_server_name() && super::client::server_name(host).is_err() {
                    return Err(ConnectError::ServerName {
                        url: url.to_owned(),
                    });
                }
                let port = authority.port_u16().unwrap_or(443);
                let dial: Uri = format!("http://{host}:{port}")
                    .parse()
                    .expect("a host and port from a valid URI form a valid URI");
                Ok(Target {
                    endpoint: Endpoint::from(dial).origin(uri),
                    tls: Some(tls.clone()),
                })
            }
            _ => Err(ConnectError::Scheme {
                url: url.to_owned(),
            }),
        }
    }
}

/// Tonic's connector: TCP to the endpoint's `host:port`, then TLS for `host`.
#[derive(Clone)]
struct TlsConnect {
    tls: ClientTls,
}

impl tower::Service<Uri> for TlsConnect {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dial: Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let authority = dial.authority().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "no host:port to dial")
            })?;
            let tcp = TcpStream::connect(authority.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(tcp, authority.host()).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ClientTlsFiles;
    use crate::tls::testing::TestCa;

    fn client_tls(dir: &std::path::Path) -> ClientTls {
        ClientTls::load(ClientTlsFiles {
            ca: TestCa::new("connect test CA").write(dir, "ca"),
            cert: None,
            key: None,
            server_name: None,
        })
        .unwrap()
    }

    #[test]
    fn an_https_url_without_client_tls_is_refused_before_dialing() {
        let err = Target::parse("https://cp.example:8443", None)
            .err()
            .unwrap();
        assert!(matches!(err, ConnectError::HttpsWithoutTls { .. }), "{err}");
        assert!(err.to_string().contains("no client TLS is configured"));
    }

    #[tokio::test]
    async fn an_https_url_dials_its_host_and_port_over_our_tls() {
        let dir = tempfile::tempdir().unwrap();
        let tls = client_tls(dir.path());
        let target = Target::parse("https://cp.example", Some(&tls)).unwrap();
        assert_eq!(target.endpoint.uri(), "http://cp.example:443/");
        assert!(target.tls.is_some());
        let target = Target::parse("https://[::1]:8443", Some(&tls)).unwrap();
        assert_eq!(target.endpoint.uri(), "http://[::1]:8443/");
    }

    #[tokio::test]
    async fn an_http_url_is_plaintext_even_with_client_tls() {
        let dir = tempfile::tempdir().unwrap();
        let tls = client_tls(dir.path());
        let target = Target::parse("http://cp.example:50051", Some(&tls)).unwrap();
        assert_eq!(target.endpoint.uri(), "http://cp.example:50051/");
        assert!(target.tls.is_none());
    }

    #[test]
    fn urls_without_a_usable_scheme_are_refused() {
        for url in ["cp.example:50051", "ftp://cp.example", "/grpc"] {
            let err = Target::parse(url, None).err().unwrap();
            assert!(
                matches!(
                    err,
                    ConnectError::Incomplete { .. } | ConnectError::Scheme { .. }
                ),
                "{url}: {err}"
            );
        }
        let err = Target::parse("http://bad host", None).err().unwrap();
        assert!(matches!(err, ConnectError::InvalidUrl { .. }), "{err}");
    }
}
