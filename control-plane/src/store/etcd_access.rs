//! How the control plane proves who it is to etcd, and checks etcd in turn: TLS (the CA
//! etcd's certificate must chain to, and a client certificate for etcd's
//! `--client-cert-auth`) and etcd's own authentication (a user and its password). Loaded
//! from `[store]` at start, and again by [`super::etcd_rotation`] whenever the TLS files
//! change: etcd-client builds its TLS configuration once per channel, so rotated files
//! take a new client. A changed password alone is not looked for; it takes a restart.
//!
//! It also decides what a failed connection means, because that decides what the server
//! does at start ([`EtcdConnectError::is_retryable`]): an etcd that is down, still
//! starting or unreachable is waited for, but one that refuses these credentials, or whose
//! certificate is not trusted (or that does not trust ours), would refuse them again on
//! every attempt, so the control plane exits and says what to fix. The decision comes from
//! facts, not message text: where the failure happened (authenticating, or a request), its
//! gRPC code, and whether a rustls error is among its causes.
//!
//! One TLS refusal cannot be read from etcd-client's errors: with TLS 1.3 etcd checks the
//! client certificate after the client considers the handshake done, and its alert reaches
//! etcd-client through h2, which keeps only the text of I/O errors. So before connecting,
//! [`EtcdAccess::check_handshake`] makes one handshake of its own and reads etcd's first
//! bytes, where a refused certificate arrives as an alert rustls names.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use meridian_shared::config::{ETCD_PASSWORD_ENV, StoreConfig};
use meridian_shared::tls::{ClientTls, ClientTlsFiles, PemError, load_ca, load_certs, load_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use super::StoreError;

/// TLS options and credentials for etcd. `Debug` hides the password.
#[derive(Clone, Default)]
pub struct EtcdAccess {
    tls: Option<TlsOptions>,
    /// The same TLS files, for [`EtcdAccess::check_handshake`].
    tls_files: Option<ClientTlsFiles>,
    user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user())
            .finish()
    }
}

/// Why the TLS files or the password could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EtcdAccessError {
    #[error("TLS to etcd (store.etcd_tls, --etcd-ca, --etcd-cert, --etcd-key): {0}")]
    Pem(#[from] PemError),
    #[error(
        "cannot read the etcd password file {path} (store.etcd_password_file, --etcd-password-file): {source}"
    )]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the etcd password from {origin} is empty")]
    EmptyPassword { origin: String },
    #[error(
        "etcd user {user:?} has no password: give store.etcd_password_file (--etcd-password-file) or set {ETCD_PASSWORD_ENV}"
    )]
    NoPassword { user: String },
}

impl EtcdAccess {
    /// The TLS files and the password named in `store`, read and checked now so that a
    /// missing or malformed file is reported by name before anything connects.
    pub fn load(store: &StoreConfig) -> Result<Self, EtcdAccessError> {
        let tls = store.etcd_tls.as_ref().map(|tls| {
            let mut options = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                load_ca(ca)?;
                options = options.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                load_certs(cert)?;
                load_key(key)?;
                options = options.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &tls.server_name {
                options = options.domain_name(name.clone());
            }
            Ok::<_, EtcdAccessError>(options)
        });
        let user = match &store.etcd_user {
            Some(user) => Some((user.clone(), password(user, store)?)),
            None => None,
        };
        let tls_files = store.etcd_tls.as_ref().and_then(|tls| {
            Some(ClientTlsFiles {
                ca: tls.ca.clone()?,
                cert: tls.cert.clone(),
                key: tls.key.clone(),
                server_name: tls.server_name.clone(),
            })
        });
        Ok(EtcdAccess {
            tls: tls.transpose()?,
            tls_files,
            user,
        })
    }

    /// One TLS handshake with the first `https://` endpoint that accepts a connection,
    /// then etcd's first bytes: refused when either side rejects the other's certificate.
    /// Anything else (no endpoint listening, a timeout) is left to the real connection.
    pub(super) async fn check_handshake(
        &self,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<(), EtcdConnectError> {
        let Some(files) = &self.tls_files else {
            return Ok(());
        };
        let tls = ClientTls::load(files.clone()).map_err(|e| EtcdConnectError::Setup {
            endpoints: endpoints.join(","),
            detail: format!("TLS to etcd (store.etcd_tls): {e}"),
        })?;
        for endpoint in endpoints {
            let Some(authority) = endpoint.strip_prefix("https://") else {
                continue;
            };
            let authority = authority.trim_end_matches('/');
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host);
            match tokio::time::timeout(timeout, first_bytes(&tls, authority, host)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => {
                    if let Some(refused) = e.get_ref().and_then(|e| e.downcast_ref()) {
                        return Err(tls_refusal(endpoint.clone(), refused));
                    }
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// The user it authenticates as, if any.
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(user, _)| user.as_str())
    }

    /// `options` with this TLS and user. A user's token is refreshed when it expires (etcd
    /// drops simple tokens after 5 idle minutes, and all of them when it restarts).
    pub(super) fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let Some((user, password)) = &self.user {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        options
    }

    /// Who etcd is told the client is, for messages.
    fn who(&self) -> String {
        match self.user() {
            Some(user) => format!("user {user:?}"),
            None => "a client without a user (no store.etcd_user)".to_owned(),
        }
    }

    /// What `error`, met at `stage` of connecting to `endpoints`, means; `unavailable`
    /// is the store's own reading of it, used when etcd may answer on a later attempt.
    pub(super) fn connect_error(
        &self,
        endpoints: &str,
        stage: Stage,
        error: etcd_client::Error,
        unavailable: impl FnOnce(etcd_client::Error) -> StoreError,
    ) -> EtcdConnectError {
        use etcd_client::Error;
        let endpoints = endpoints.to_owned();
        if let Some(tls) = rustls_cause(&error) {
            return tls_refusal(endpoints, tls);
        }
        match &error {
            Error::GRpcStatus(status) => {
                let message = status.message().to_owned();
                match (stage, status.code()) {
                    (Stage::Authenticate, Code::InvalidArgument | Code::FailedPrecondition)
                    | (_, Code::Unauthenticated) => EtcdConnectError::Credentials {
                        endpoints,
                        who: self.who(),
                        message,
                    },
                    // etcd's answer to a request without a token when it requires one.
                    (Stage::Request, Code::InvalidArgument) if self.user.is_none() => {
                        EtcdConnectError::Credentials {
                            endpoints,
                            who: self.who(),
                            message,
                        }
                    }
                    (Stage::Request, Code::PermissionDenied) => {
                        EtcdConnectError::PermissionDenied {
                            endpoints,
                            who: self.who(),
                            message,
                        }
                    }
                    _ => EtcdConnectError::Unreachable(unavailable(error)),
                }
            }
            Error::InvalidArgs(_) | Error::InvalidUri(_) | Error::TransportError(_) => {
                EtcdConnectError::Setup {
                    endpoints,
                    detail: error_chain(&error),
                }
            }
            _ => EtcdConnectError::Unreachable(unavailable(error)),
        }
    }
}

/// Where in connecting a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Exchanging the user and password for a token.
    Authenticate,
    /// A request made with that token (or none).
    Request,
}

/// Why connecting to etcd failed; only [`EtcdConnectError::Unreachable`] may go away by
/// itself.
#[derive(Debug, thiserror::Error)]
pub enum EtcdConnectError {
    /// No endpoint answered, or not in time: etcd may be down or still starting.
    #[error(transparent)]
    Unreachable(StoreError),
    #[error(
        "etcd at {endpoints} refused {who}: {message}. Check store.etcd_user (--etcd-user) and its \
         password (store.etcd_password_file, --etcd-password-file or {ETCD_PASSWORD_ENV}), and that \
         the user exists in etcd"
    )]
    Credentials {
        endpoints: String,
        who: String,
        message: String,
    },
    #[error(
        "etcd at {endpoints} denied {who} access to the key prefix: {message}. Grant the user a role \
         with readwrite permission on store.prefix"
    )]
    PermissionDenied {
        endpoints: String,
        who: String,
        message: String,
    },
    #[error("the TLS handshake with etcd at {endpoints} failed: {detail}. {fix}")]
    Tls {
        endpoints: String,
        detail: String,
        fix: &'static str,
    },
    #[error("cannot set up the etcd client for {endpoints}: {detail}")]
    Setup { endpoints: String, detail: String },
}

impl EtcdConnectError {
    /// Whether trying again later may succeed: etcd was not reached. Refused credentials,
    /// untrusted certificates and a bad setup fail the same way every time.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EtcdConnectError::Unreachable(_))
    }
}

/// The password of `user`: the file's (without its trailing newline), else the variable's.
fn password(user: &str, store: &StoreConfig) -> Result<String, EtcdAccessError> {
    let (password, origin) = match &store.etcd_password_file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| EtcdAccessError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            (text, format!("the file {}", path.display()))
        }
        None => match std::env::var(ETCD_PASSWORD_ENV) {
            Ok(text) => (text, ETCD_PASSWORD_ENV.to_owned()),
            Err(_) => {
                return Err(EtcdAccessError::NoPassword {
                    user: user.to_owned(),
                });
            }
        },
    };
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(EtcdAccessError::EmptyPassword { origin });
    }
    Ok(password.to_owned())
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The rustls error among the causes of `error`. An `io::Error` hides the error it wraps
/// from `source()`, so each one is opened as well.
fn rustls_cause(error: &etcd_client::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match error {
        etcd_client::Error::GRpcStatus(status) => Some(status),
        etcd_client::Error::TransportError(e) => Some(e),
        etcd_client::Error::IoError(e) => Some(e),
        _ => None,
    };
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        cause = error.source();
    }
    None
}

/// Connects to `authority`, shakes hands as a client of `host`, sends the HTTP/2 preface
/// and reads the first byte etcd sends back (its SETTINGS, or an alert).
async fn first_bytes(tls: &ClientTls, authority: &str, host: &str) -> std::io::Result<()> {
    let tcp = TcpStream::connect(authority).await?;
    let mut stream = tls.connect(tcp, host).await?;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await?;
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    Ok(())
}

fn tls_refusal(endpoints: String, error: &rustls::Error) -> EtcdConnectError {
    EtcdConnectError::Tls {
        endpoints,
        detail: error.to_string(),
        fix: tls_fix(error),
    }
}

/// What to check for a failed handshake.
fn tls_fix(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(_) => {
            "etcd's certificate is not trusted: check that store.etcd_tls.ca (--etcd-ca) is the \
             CA that signed it, and that it names the endpoints' host (or set \
             store.etcd_tls.server_name)"
        }
        rustls::Error::AlertReceived(_) => {
            "etcd refused the handshake: with --client-cert-auth it needs a client certificate \
             signed by its --trusted-ca-file; check store.etcd_tls.cert and key (--etcd-cert, \
             --etcd-key)"
        }
        _ => "check that etcd serves TLS on these endpoints and store.etcd_tls (--etcd-ca)",
    }
}

/// `error` and its causes, one after another (etcd-client's errors name no source; the
/// transport error they wrap does).
fn error_chain(error: &etcd_client::Error) -> String {
    let mut text = error.to_string();
    let mut cause = match error {
        etcd_client::Error::TransportError(e) => e.source(),
        _ => None,
    };
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_password_file(text: &str, dir: &Path) -> StoreConfig {
        let file = dir.join("etcd-password");
        std::fs::write(&file, text).unwrap();
        StoreConfig {
            etcd_user: Some("meridian".into()),
            etcd_password_file: Some(file),
            ..StoreConfig::default()
        }
    }

    #[test]
    fn the_password_file_loses_its_newline_and_debug_hides_it() {
        let dir = tempfile::tempdir().unwrap();
        let access =
            EtcdAccess::load(&store_with_password_file("s3cret-pass\n", dir.path())).unwrap();
        assert_eq!(access.user, Some(("meridian".into(), "s3cret-pass".into())));
        let shown = format!("{access:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn unreadable_and_empty_password_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = EtcdAccess::load(&store_with_password_file("\n", dir.path())).unwrap_err();
        assert!(err.to_string().contains("etcd-password is empty"), "{err}");
        let missing = StoreConfig {
            etcd_password_file: Some(dir.path().join("missing")),
            ..store_with_password_file("x", dir.path())
        };
        let err = EtcdAccess::load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read the etcd password file "),
            "{err}"
        );
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let store = StoreConfig {
            etcd_tls: Some(meridian_shared::config::EtcdTlsConfig {
                ca: Some(PathBuf::from("/nonexistent/etcd-ca.pem")),
                ..Default::default()
            }),
            ..StoreConfig::default()
        };
        let err = EtcdAccess::load(&store).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/etcd-ca.pem"), "{err}");
        assert!(err.contains("--etcd-ca"), "{err}");
    }

    #[test]
    fn only_an_unreachable_etcd_is_retried() {
        let access = EtcdAccess::default();
        let unavailable = |e: etcd_client::Error| StoreError::Unavailable(e.to_string());
        let status =
            |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        let down = access.connect_error(
            "http://e:1",
            Stage::Request,
            status(Code::Unavailable, "connection refused"),
            unavailable,
        );
        assert!(down.is_retryable(), "{down}");
        for (stage, code) in [
            (Stage::Authenticate, Code::InvalidArgument),
            (Stage::Authenticate, Code::FailedPrecondition),
            (Stage::Request, Code::Unauthenticated),
            (Stage::Request, Code::InvalidArgument),
            (Stage::Request, Code::PermissionDenied),
        ] {
            let refused =
                access.connect_error("http://e:1", stage, status(code, "no"), unavailable);
            assert!(!refused.is_retryable(), "{stage:?} {code:?}: {refused}");
            assert!(refused.to_string().contains("http://e:1"), "{refused}");
        }
    }
}
