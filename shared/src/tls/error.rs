//! Why a TLS configuration could not be built from its files. Every message names the file
//! at fault, because an operator reads it in a log line long after the rotation that broke
//! it.

use std::path::{Path, PathBuf};

use super::pem::PemError;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("the private key {key} does not match the certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate {cert} and key {key} are not usable: {source}")]
    UnusableKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("client certificates from the CA {path} cannot be verified: {source}")]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("requiring client certificates needs a client CA file to verify them")]
    ClientCaMissing,
    #[error("the client certificate {cert} was given without its private key")]
    CertWithoutKey { cert: PathBuf },
    #[error("the client key {key} was given without its certificate")]
    KeyWithoutCert { key: PathBuf },
    #[error("{name:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName { name: String },
}

impl TlsConfigError {
    /// Sorts out rustls's complaint about a certificate and key pair.
    pub(super) fn from_key_pair(cert: &Path, key: &Path, e: rustls::Error) -> Self {
        let (cert, key) = (cert.to_owned(), key.to_owned());
        match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsConfigError::KeyMismatch { cert, key }
            }
            source => TlsConfigError::UnusableKey { cert, key, source },
        }
    }
}
