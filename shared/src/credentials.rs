//! The credential a client of the control plane presents: a bearer token, attached by an
//! interceptor to every call as `authorization: Bearer <token>`. Proxies, self-registering
//! nodes and `meridianctl` take it from a file (`--token-file`, as a Kubernetes Secret is
//! mounted) or the `MERIDIAN_TOKEN` environment variable, never from a command-line value
//! that `ps` would show. The token is never printed: `Debug` is redacted. A proxy whose
//! token file changes swaps the new token in ([`BearerAuth::replace_with`]); every clone
//! sees it from its next call.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;

/// The environment variable a client reads its token from.
pub const TOKEN_ENV: &str = "MERIDIAN_TOKEN";

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the token from {origin} has characters a gRPC header cannot carry; expected printable ASCII"
    )]
    NotAHeader { origin: String },
}

/// Adds `authorization: Bearer <token>` to each request, when there is a token. Clones
/// share the token, so a replaced token reaches every client built from one.
#[derive(Clone, Default)]
pub struct BearerAuth {
    header: Arc<ArcSwapOption<AsciiMetadataValue>>,
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = if self.is_some() { "<redacted>" } else { "none" };
        write!(f, "BearerAuth({state})")
    }
}

impl BearerAuth {
    /// `token`, which came from `origin` (named in errors); blank counts as none.
    pub fn new(token: &str, origin: &str) -> Result<Self, CredentialError> {
        let token = token.trim();
        if token.is_empty() {
            return Ok(BearerAuth::default());
        }
        let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            CredentialError::NotAHeader {
                origin: origin.to_owned(),
            }
        })?;
        value.set_sensitive(true);
        Ok(BearerAuth {
            header: Arc::new(ArcSwapOption::from_pointee(value)),
        })
    }

    /// The token of `file` when given, else of `MERIDIAN_TOKEN`, else none.
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Self, CredentialError> {
        match file {
            Some(path) => {
                let token =
                    std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
                        path: path.to_owned(),
                        source,
                    })?;
                BearerAuth::new(&token, &format!("token file {}", path.display()))
            }
            None => match std::env::var(TOKEN_ENV) {
                Ok(token) => BearerAuth::new(&token, TOKEN_ENV),
                Err(_) => Ok(BearerAuth::default()),
            },
        }
    }

    pub fn is_some(&self) -> bool {
        self.header.load().is_some()
    }

    /// Presents `other`'s token (or none) from now on, here and in every clone.
    pub fn replace_with(&self, other: &BearerAuth) {
        self.header.store(other.header.load_full());
    }

    /// Whether `other` holds the same token (or both none).
    pub fn same_token(&self, other: &BearerAuth) -> bool {
        *self.header.load() == *other.header.load()
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = self.header.load().as_deref() {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(auth: &mut BearerAuth) -> Option<String> {
        let request = auth.call(tonic::Request::new(())).expect("passes");
        request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn a_token_becomes_a_bearer_header_and_blank_is_none() {
        let mut auth = BearerAuth::new("s3cret\n", "test").unwrap();
        assert_eq!(header_of(&mut auth).as_deref(), Some("Bearer s3cret"));
        assert_eq!(header_of(&mut BearerAuth::new("  ", "test").unwrap()), None);
    }

    #[test]
    fn a_token_file_is_read_and_never_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "file-token-0123456789\n").unwrap();
        let mut auth = BearerAuth::from_file_or_env(Some(&path)).unwrap();
        assert_eq!(
            header_of(&mut auth).as_deref(),
            Some("Bearer file-token-0123456789")
        );
        assert!(!format!("{auth:?}").contains("file-token"));
        std::fs::write(&path, "bad\ntoken inside").unwrap();
        let err = BearerAuth::from_file_or_env(Some(&path)).unwrap_err();
        assert!(!err.to_string().contains("bad"), "{err}");
        let missing = BearerAuth::from_file_or_env(Some(&dir.path().join("nope"))).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");
    }

    #[test]
    fn a_replaced_token_reaches_every_clone() {
        let auth = BearerAuth::new("old-token-0123456789", "test").unwrap();
        let mut client = auth.clone();
        let new = BearerAuth::new("new-token-0123456789", "test").unwrap();
        assert!(!auth.same_token(&new));
        auth.replace_with(&new);
        assert!(auth.same_token(&new));
        assert_eq!(
            header_of(&mut client).as_deref(),
            Some("Bearer new-token-0123456789")
        );
        auth.replace_with(&BearerAuth::default());
        assert_eq!(header_of(&mut client), None);
    }
}
