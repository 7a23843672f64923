//! The credentials the control plane accepts and whom they identify: bearer tokens
//! (`[[auth.tokens]]`) and client-certificate identities (`[[auth.certificates]]`), from
//! the configuration and an optional tokens file. Tokens are compared in constant time and
//! never logged.

use std::path::{Path, PathBuf};

use meridian_shared::config::{
    AuthConfig, CertificateIdentity, ConfigError, Role, TokenConfig, Validate,
};
use serde::Deserialize;

use super::{Caller, Denied};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tokens file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("tokens file {path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenConfig>,
    #[serde(default)]
    certificates: Vec<CertificateIdentity>,
}

#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Vec<TokenConfig>,
    certificates: Vec<CertificateIdentity>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

impl Authenticator {
    /// The configured credentials plus those of `auth.tokens_file`.
    pub fn load(config: &AuthConfig) -> Result<Self, AuthError> {
        let mut tokens = config.tokens.clone();
        let mut certificates = config.certificates.clone();
        if let Some(path) = &config.tokens_file {
            let file = read_tokens_file(path)?;
            tokens.extend(file.tokens);
            certificates.extend(file.certificates);
        }
        Ok(Authenticator {
            tokens,
            certificates,
        })
    }

    /// Adds a token (dev mode's generated tokens).
    pub fn add(&mut self, token: TokenConfig) {
        self.tokens.push(token);
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.certificates.is_empty()
    }

    /// How many tokens and certificate identities are accepted.
    pub fn counts(&self) -> (usize, usize) {
        (self.tokens.len(), self.certificates.len())
    }

    /// Who presents `authorization` (the header's value, if any) or, without one, a client
    /// certificate with `certificate_identities` (its URI SANs, DNS SANs and CN, in that
    /// order of preference).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        certificate_identities: &[String],
    ) -> Result<Caller, Denied> {
        if let Some(header) = authorization {
            return self.by_token(header);
        }
        if !certificate_identities.is_empty() {
            return self.by_certificate(certificate_identities);
        }
        Err(Denied::Unauthenticated(
            "no credential: send `authorization: Bearer <token>` (meridianctl --token or MERIDIAN_TOKEN; \
             proxies and nodes --token-file or MERIDIAN_TOKEN) or a client certificate"
                .into(),
        ))
    }

    fn by_token(&self, header: &[u8]) -> Result<Caller, Denied> {
        let presented = std::str::from_utf8(header)
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Denied::Unauthenticated(
                    "the authorization metadata must be `Bearer <token>`".into(),
                )
            })?;
        // Compare against every token so timing does not reveal which prefix matched.
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(token.token.as_bytes(), presented.as_bytes()) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(|| Denied::Unauthenticated("unknown bearer token".into()))?;
        Ok(Caller {
            name: token.name.clone(),
            role: token.role,
            scope: token.scope(),
        })
    }

    fn by_certificate(&self, identities: &[String]) -> Result<Caller, Denied> {
        let mapped = identities
            .iter()
            .find_map(|id| self.certificates.iter().find(|c| &c.identity == id))
            .ok_or_else(|| {
                Denied::Unauthenticated(format!(
                    "the client certificate ({}) is not mapped to a role; add it to [[auth.certificates]]",
                    identities.join(", ")
                ))
            })?;
        Ok(Caller {
            name: mapped.name.clone(),
            role: mapped.role,
            scope: mapped.scope(),
        })
    }
}

/// Whether `have` may do what `needed` allows: operators may do everything.
pub fn role_allows(have: Role, needed: Role) -> bool {
    have == needed || have == Role::Operator
}

fn read_tokens_file(path: &Path) -> Result<AuthConfig, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file: TokensFile = toml::from_str(&text).map_err(|e| AuthError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    let check = AuthConfig {
        tokens_file: None,
        tokens: file.tokens,
        certificates: file.certificates,
    };
    check.validate().map_err(|source| AuthError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(check)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator() -> Authenticator {
        Authenticator {
            tokens: vec![
                TokenConfig::new("alice", "operator-token-0123456789", Role::Operator),
                TokenConfig::new("bob", "viewer-token-0123456789", Role::Viewer),
            ],
            certificates: vec![CertificateIdentity {
                name: "proxy-eu".into(),
                identity: "spiffe://prod/proxy/eu".into(),
                role: Role::Proxy,
                federation: Some("prod".into()),
                services: vec![],
                regions: vec![],
            }],
        }
    }

    fn denied(result: Result<Caller, Denied>) -> Denied {
        result.unwrap_err()
    }

    #[test]
    fn missing_malformed_or_unknown_credentials_are_unauthenticated() {
        let auth = authenticator();
        for result in [
            auth.authenticate(None, &[]),
            auth.authenticate(Some(b"Bearer nope"), &[]),
            auth.authenticate(Some(b"operator-token-0123456789"), &[]),
            auth.authenticate(None, &["spiffe://prod/proxy/us".into()]),
        ] {
            assert!(matches!(denied(result), Denied::Unauthenticated(_)));
        }
    }

    #[test]
    fn tokens_and_certificates_identify_their_holder() {
        let auth = authenticator();
        let alice = auth
            .authenticate(Some(b"Bearer operator-token-0123456789"), &[])
            .unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Operator));
        assert_eq!(alice.actor(), "operator:alice");
        let proxy = auth
            .authenticate(None, &["cn-first".into(), "spiffe://prod/proxy/eu".into()])
            .unwrap();
        assert_eq!(proxy.role, Role::Proxy);
        assert_eq!(proxy.scope.federation.as_deref(), Some("prod"));
        // A token, when sent, decides even with a certificate.
        let bob = auth
            .authenticate(
                Some(b"Bearer viewer-token-0123456789"),
                &["spiffe://prod/proxy/eu".into()],
            )
            .unwrap();
        assert_eq!(bob.role, Role::Viewer);
    }

    #[test]
    fn operators_may_do_everything_others_only_their_role() {
        for needed in [Role::Viewer, Role::Operator, Role::Node, Role::Proxy] {
            assert!(role_allows(Role::Operator, needed));
        }
        assert!(!role_allows(Role::Viewer, Role::Operator));
        assert!(!role_allows(Role::Node, Role::Proxy));
        assert!(!role_allows(Role::Proxy, Role::Viewer));
    }

    #[test]
    fn tokens_file_is_read_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ci\"\ntoken = \"ci-token-0123456789abc\"\nrole = \"node\"\nfederation = \"prod\"\nservices = [\"demo.v1.Echo\"]\n",
        )
        .unwrap();
        let auth = Authenticator::load(&AuthConfig {
            tokens_file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        let ci = auth
            .authenticate(Some(b"Bearer ci-token-0123456789abc"), &[])
            .unwrap();
        assert_eq!(ci.scope.services, vec!["demo.v1.Echo".to_owned()]);

        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ci\"\ntoken = \"short\"\nrole = \"viewer\"\n",
        )
        .unwrap();
        let err = Authenticator::load(&AuthConfig {
            tokens_file: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("auth.tokens[0].token"), "{err}");
        assert!(
            !err.to_string().contains("short"),
            "the secret leaked: {err}"
        );

        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ci\"\ntoken = \"viewer-token-0123456789\"\nrole = \"viewer\"\nfederation = \"prod\"\n",
        )
        .unwrap();
        let err = Authenticator::load(&AuthConfig {
            tokens_file: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("federation"), "{err}");
    }
}
