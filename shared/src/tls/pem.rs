//! PEM files: a certificate chain (leaf first), a private key (PKCS#8, PKCS#1 or SEC1) and a
//! CA bundle. Parsing is rustls-pki-types' own (`PemObject`), so no extra PEM crate. Each
//! file is read once, then parsed, so an error says whether the file could not be read or
//! what is wrong with its contents, and always names the file.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("no certificate in {path} (expected a \"BEGIN CERTIFICATE\" section)")]
    NoCertificate { path: PathBuf },
    #[error("no private key in {path} (expected a PKCS#8, PKCS#1 or SEC1 PEM section)")]
    NoKey { path: PathBuf },
    #[error("certificate #{index} in the CA bundle {path} is not a usable CA: {source}")]
    BadCa {
        path: PathBuf,
        index: usize,
        source: rustls::Error,
    },
}

/// The certificates of `path`, in file order (a server's chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(path, e))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key of `path`, whichever of the three encodings it uses.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => PemError::NoKey {
            path: path.to_owned(),
        },
        e => malformed(path, e),
    })
}

/// The trust anchors of the CA bundle `path`; every certificate in it must be usable.
pub fn load_ca(path: &Path) -> Result<RootCertStore, PemError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|source| PemError::BadCa {
            path: path.to_owned(),
            index: index + 1,
            source,
        })?;
    }
    Ok(roots)
}

fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.to_owned(),
        source,
    })
}

fn malformed(path: &Path, e: pem::Error) -> PemError {
    PemError::Malformed {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::TestCa;

    #[test]
    fn loads_a_chain_and_a_pkcs8_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("pem test CA");
        let files = ca.localhost_server().write(dir.path(), "server");
        assert_eq!(load_certs(&files.cert).unwrap().len(), 1);
        assert!(matches!(
            load_key(&files.key).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert_eq!(load_ca(&ca.write(dir.path(), "ca")).unwrap().len(), 1);
    }

    #[test]
    fn recognises_pkcs1_and_sec1_sections() {
        let dir = tempfile::tempdir().unwrap();
        let pkcs1 = dir.path().join("rsa.pem");
        std::fs::write(
            &pkcs1,
            "-----BEGIN RSA PRIVATE KEY-----\nAAEC\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(load_key(&pkcs1).unwrap(), PrivateKeyDer::Pkcs1(_)));
        let sec1 = dir.path().join("ec.pem");
        std::fs::write(
            &sec1,
            "-----BEGIN EC PRIVATE KEY-----\nAAEC\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(load_key(&sec1).unwrap(), PrivateKeyDer::Sec1(_)));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let shown = load_certs(&empty).unwrap_err().to_string();
        assert!(shown.starts_with("no certificate in "), "{shown}");
        assert!(shown.contains("empty.pem"), "{shown}");
        let shown = load_key(&empty).unwrap_err().to_string();
        assert!(shown.starts_with("no private key in "), "{shown}");

        let missing = dir.path().join("missing.pem");
        let shown = load_ca(&missing).unwrap_err().to_string();
        assert!(shown.starts_with("cannot read "), "{shown}");
        assert!(shown.contains("missing.pem"), "{shown}");

        let cut = dir.path().join("cut.pem");
        std::fs::write(&cut, "-----BEGIN CERTIFICATE-----\nAAEC\n").unwrap();
        let shown = load_certs(&cut).unwrap_err().to_string();
        assert!(shown.contains("cut.pem is not valid PEM"), "{shown}");
    }
}
