//! TLS settings of a client: the CA its server's certificate must chain to, optionally a
//! client certificate and key (mTLS), and optionally the name the server's certificate
//! must carry when it is not the host being dialled. One shape for every client: the
//! proxy towards the control plane (`[control_plane_tls]`) and towards nodes
//! (`[[upstream_tls]]`), demo nodes registering, `meridianctl`. The files are re-read
//! when they change (see [`crate::tls`]).
//!
//! ```toml
//! [control_plane_tls]
//! ca = "/etc/meridian/tls/ca.pem"
//! cert = "/etc/meridian/tls/proxy.pem"    # optional, with key: a client certificate
//! key = "/etc/meridian/tls/proxy.key"
//! server_name = "control.meridian.internal" # optional: instead of the URL's host
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;
use crate::tls::ClientTlsFiles;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// The CA bundle the server's certificate must chain to (nothing else is trusted).
    pub ca: PathBuf,
    /// A client certificate chain to present; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The name the server's certificate must carry, instead of the host dialled.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl ClientTlsConfig {
    /// Only a CA: the server is verified, the client presents no certificate.
    pub fn with_ca(ca: PathBuf) -> Self {
        ClientTlsConfig {
            ca,
            cert: None,
            key: None,
            server_name: None,
        }
    }

    pub fn files(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            server_name: self.server_name.clone(),
        }
    }

    /// Checks the section named `section` (e.g. `control_plane_tls`): a CA, and a
    /// certificate and key given together or not at all.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        if self.ca.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                format!("{section}.ca"),
                &self.ca,
                "a CA file is needed to verify the server",
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(ConfigError::invalid(
                format!("{section}.key"),
                None::<PathBuf>,
                format!("{section}.cert is given; a client certificate needs its private key"),
            )),
            (None, Some(_)) => Err(ConfigError::invalid(
                format!("{section}.cert"),
                None::<PathBuf>,
                format!("{section}.key is given; a client key needs its certificate"),
            )),
            _ => Ok(()),
        }
    }
}
