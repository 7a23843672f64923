//! A throw-away PKI for tests (cargo feature `test-certs`): a CA, server certificates for
//! chosen hosts, client certificates with a common name and a URI SAN, an expired client
//! certificate, all ECDSA P-256 made by rcgen with the ring backend. A certificate "from
//! another CA" is one from a second [`TestCa`]. Everything is written as PEM files, the
//! way an operator would hand them over.
//!
//! ```ignore
//! let ca = TestCa::new("test CA");
//! let ca_file = ca.write(dir, "ca");
//! let server = ca.localhost_server().write(dir, "server");
//! let client = ca.client_cert("proxy-1", Some("spiffe://meridian/proxy")).write(dir, "client");
//! ```
//!
//! Helpers panic on failure: they are for tests only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that signs test certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key (PKCS#8), as PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Where [`TestCert::write`] put the two files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new self-signed CA with `name` as its common name.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, new_key()).expect("self-sign a test CA");
        TestCa { issuer }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Writes the CA certificate to `dir/NAME.pem` and returns the path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.cert_pem()).expect("write the test CA");
        path
    }

    /// A server certificate for `hosts`: DNS names or IP addresses.
    pub fn server_cert(&self, hosts: &[&str]) -> TestCert {
        let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("valid test host names");
        if let Some(first) = hosts.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A server certificate for `127.0.0.1`, `::1` and `localhost`.
    pub fn localhost_server(&self) -> TestCert {
        self.server_cert(&["127.0.0.1", "::1", "localhost"])
    }

    /// A client certificate with `common_name` as its subject and `uri_san` (a SPIFFE ID,
    /// say) as its URI SAN.
    pub fn client_cert(&self, common_name: &str, uri_san: Option<&str>) -> TestCert {
        self.sign(client_params(common_name, uri_san))
    }

    /// A client certificate that expired in 2001.
    pub fn expired_client_cert(&self, common_name: &str) -> TestCert {
        let mut params = client_params(common_name, None);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> TestCert {
        let key = new_key();
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign a test certificate");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestCert {
    /// Writes `dir/NAME.pem` (the certificate) and `dir/NAME.key`, replacing them if they
    /// exist, certificate first.
    pub fn write(&self, dir: &Path, name: &str) -> CertFiles {
        let files = CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, &self.cert_pem).expect("write the test certificate");
        std::fs::write(&files.key, &self.key_pem).expect("write the test key");
        files
    }
}

fn client_params(common_name: &str, uri_san: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(uri) = uri_san {
        let uri = uri.try_into().expect("an ASCII URI SAN");
        params.subject_alt_names.push(SanType::URI(uri));
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

fn new_key() -> KeyPair {
    KeyPair::generate().expect("generate a P-256 key")
}
