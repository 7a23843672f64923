//! TLS settings of a server listener (the control plane's gRPC port, the proxy's client
//! port): a certificate chain and key, and optionally the CA whose client certificates
//! are then required (mTLS). The files are re-read when they change (see
//! [`crate::tls`]).
//!
//! ```toml
//! [tls]
//! cert = "/etc/meridian/tls/server.pem"
//! key = "/etc/meridian/tls/server.key"
//! client_ca = "/etc/meridian/tls/clients-ca.pem"   # optional: require client certificates
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::tls::ServerTlsFiles;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require client certificates signed by this CA.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl ListenerTlsConfig {
    pub fn files(&self) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
            require_client_cert: self.client_ca.is_some(),
        }
    }
}
