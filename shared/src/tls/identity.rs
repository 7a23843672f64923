//! Who a mutual-TLS client is, read from its certificate: the URI SANs (a SPIFFE ID such as
//! `spiffe://meridian/proxy/eu-1`), the DNS SANs and the subject's common name. The chain
//! was already verified during the handshake; this only reads names out of the leaf.
//!
//! Parsing uses RustCrypto's `x509-cert`, the smaller of the two well-kept X.509 parsers
//! (rusticata's `x509-parser` brings nom, `asn1-rs` and `time`).

use rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_cert::Certificate;
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

#[derive(Debug, thiserror::Error)]
#[error("cannot read the names in the client certificate: {0}")]
pub struct IdentityError(#[from] x509_cert::der::Error);

/// The names a client certificate gives its holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub common_name: Option<String>,
}

impl PeerIdentity {
    /// The identity of the client that sent a request to a tonic server serving a
    /// [`TlsIncoming`](super::TlsIncoming); `None` for a client without a certificate, or
    /// one whose names cannot be read (logged at debug level).
    pub fn from_extensions(extensions: &http::Extensions) -> Option<PeerIdentity> {
        let info = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
        PeerIdentity::from_chain(&info.peer_certs()?)
    }

    /// The identity of the client at the other end of an accepted connection, for servers
    /// that are not tonic (the proxy's hyper listener); `None` as for
    /// [`PeerIdentity::from_extensions`].
    pub fn from_connection<IO>(connection: &TlsStream<IO>) -> Option<PeerIdentity> {
        PeerIdentity::from_chain(connection.get_ref().1.peer_certificates()?)
    }

    fn from_chain(chain: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
        PeerIdentity::from_certificate(chain.first()?)
            .inspect_err(|e| tracing::debug!(error = %e, "client certificate ignored"))
            .ok()
    }

    /// The names in a DER certificate.
    pub fn from_certificate(der: &CertificateDer<'_>) -> Result<PeerIdentity, IdentityError> {
        let cert = Certificate::from_der(der)?;
        let tbs = cert.tbs_certificate();
        let mut identity = PeerIdentity {
            common_name: tbs.subject().common_name()?.map(String::from),
            ..PeerIdentity::default()
        };
        if let Some((_, SubjectAltName(names))) = tbs.get_extension::<SubjectAltName>()? {
            for name in names {
                match name {
                    GeneralName::UniformResourceIdentifier(uri) => {
                        identity.uri_sans.push(uri.to_string())
                    }
                    GeneralName::DnsName(dns) => identity.dns_sans.push(dns.to_string()),
                    _ => {}
                }
            }
        }
        Ok(identity)
    }

    /// Every name, in the order an identity is matched against: URI SANs, DNS SANs, then
    /// the common name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.uri_sans
            .iter()
            .chain(&self.dns_sans)
            .chain(&self.common_name)
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::load_certs;
    use crate::tls::testing::TestCa;

    fn identity_of(cert: crate::tls::testing::TestCert) -> PeerIdentity {
        let dir = tempfile::tempdir().unwrap();
        let files = cert.write(dir.path(), "peer");
        PeerIdentity::from_certificate(&load_certs(&files.cert).unwrap()[0]).unwrap()
    }

    #[test]
    fn reads_uri_sans_and_the_common_name() {
        let ca = TestCa::new("identity test CA");
        let identity = identity_of(ca.client_cert("node-7", Some("spiffe://meridian/node/7")));
        assert_eq!(identity.uri_sans, ["spiffe://meridian/node/7"]);
        assert_eq!(identity.common_name.as_deref(), Some("node-7"));
        assert_eq!(
            identity.names().collect::<Vec<_>>(),
            ["spiffe://meridian/node/7", "node-7"]
        );
    }

    #[test]
    fn reads_dns_sans_and_skips_ip_addresses() {
        let ca = TestCa::new("identity test CA");
        let identity = identity_of(ca.server_cert(&["cp.example", "10.0.0.1"]));
        assert_eq!(identity.dns_sans, ["cp.example"]);
        assert!(identity.uri_sans.is_empty());
        assert_eq!(
            identity.names().collect::<Vec<_>>(),
            ["cp.example", "cp.example"]
        );
    }

    #[test]
    fn garbage_is_an_error_not_an_identity() {
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        assert!(PeerIdentity::from_certificate(&garbage).is_err());
        assert_eq!(
            PeerIdentity::from_extensions(&http::Extensions::new()),
            None
        );
    }
}
