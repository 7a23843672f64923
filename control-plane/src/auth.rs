//! Bearer tokens for the Admin API. Each token has a name (who holds it, shown in events
//! as `operator:<name>`) and a role: viewer (reads) or operator (reads and writes).
//! Tokens come from the configuration and an optional tokens file; they are compared in
//! constant time and never logged.

use std::path::{Path, PathBuf};

use meridian_shared::config::{AuthConfig, ConfigError, Role, TokenConfig, Validate};
use serde::Deserialize;
use tonic::{Request, Status};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// How events name this caller as a cause.
    pub fn actor(&self) -> String {
        format!("operator:{}", self.name)
    }
}

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
}

#[derive(Clone, Default)]
pub struct Authenticator {
    tokens: Vec<TokenConfig>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Authenticator {
    /// The configured tokens plus those of `auth.tokens_file`.
    pub fn load(config: &AuthConfig) -> Result<Self, AuthError> {
        let mut tokens = config.tokens.clone();
        if let Some(path) = &config.tokens_file {
            tokens.extend(read_tokens_file(path)?);
        }
        Ok(Authenticator { tokens })
    }

    /// Adds a token (dev mode's generated operator token).
    pub fn add(&mut self, token: TokenConfig) {
        self.tokens.push(token);
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller of `request` if it presents a token with at least the `needed` role.
    pub fn authorize<T>(&self, request: &Request<T>, needed: Role) -> Result<Caller, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing bearer token: pass --token or set MERIDIAN_TOKEN (metadata `authorization: Bearer <token>`)")
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                Status::unauthenticated("the authorization metadata must be `Bearer <token>`")
            })?;
        // Compare against every token so timing does not reveal which prefix matched.
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(token.token.as_bytes(), presented.as_bytes()) {
                found = Some(token);
            }
        }
        let token = found.ok_or_else(|| Status::unauthenticated("unknown bearer token"))?;
        if needed == Role::Operator && token.role != Role::Operator {
            return Err(Status::permission_denied(format!(
                "token {:?} has the viewer role; this call changes state and needs an operator token",
                token.name
            )));
        }
        Ok(Caller {
            name: token.name.clone(),
            role: token.role,
        })
    }
}

fn read_tokens_file(path: &Path) -> Result<Vec<TokenConfig>, AuthError> {
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
    };
    check.validate().map_err(|source| AuthError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    Ok(check.tokens)
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
        let token = |name: &str, token: &str, role| TokenConfig {
            name: name.into(),
            token: token.into(),
            role,
        };
        Authenticator {
            tokens: vec![
                token("alice", "operator-token-0123456789", Role::Operator),
                token("bob", "viewer-token-0123456789", Role::Viewer),
            ],
        }
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        request
    }

    #[test]
    fn missing_or_unknown_tokens_are_unauthenticated() {
        let auth = authenticator();
        let code = |r: Result<Caller, Status>| r.unwrap_err().code();
        assert_eq!(
            code(auth.authorize(&request(None), Role::Viewer)),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(auth.authorize(&request(Some("Bearer nope")), Role::Viewer)),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            code(auth.authorize(&request(Some("operator-token-0123456789")), Role::Viewer)),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn viewers_read_and_operators_write() {
        let auth = authenticator();
        let bob = auth
            .authorize(
                &request(Some("Bearer viewer-token-0123456789")),
                Role::Viewer,
            )
            .unwrap();
        assert_eq!(bob.name, "bob");
        let denied = auth
            .authorize(
                &request(Some("Bearer viewer-token-0123456789")),
                Role::Operator,
            )
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let alice = auth
            .authorize(
                &request(Some("Bearer operator-token-0123456789")),
                Role::Operator,
            )
            .unwrap();
        assert_eq!(alice.actor(), "operator:alice");
    }

    #[test]
    fn tokens_file_is_read_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ci\"\ntoken = \"ci-token-0123456789abc\"\nrole = \"viewer\"\n",
        )
        .unwrap();
        let auth = Authenticator::load(&AuthConfig {
            tokens_file: Some(path.clone()),
            tokens: vec![],
        })
        .unwrap();
        assert!(
            auth.authorize(
                &request(Some("Bearer ci-token-0123456789abc")),
                Role::Viewer
            )
            .is_ok()
        );

        std::fs::write(
            &path,
            "[[tokens]]\nname = \"ci\"\ntoken = \"short\"\nrole = \"viewer\"\n",
        )
        .unwrap();
        let err = Authenticator::load(&AuthConfig {
            tokens_file: Some(path),
            tokens: vec![],
        })
        .unwrap_err();
        assert!(err.to_string().contains("auth.tokens[0].token"), "{err}");
        assert!(
            !err.to_string().contains("short"),
            "the secret leaked: {err}"
        );
    }
}
