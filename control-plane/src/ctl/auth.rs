//! The bearer token: kept out of every printout (its `Debug` is redacted), checked once
//! when the client is built, and attached by an interceptor to every Admin call as
//! `authorization: Bearer <token>`.

use meridian_proto::v1::admin_client::AdminClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use super::CtlError;

/// The Admin client every command but `status` uses.
pub(super) type Admin = AdminClient<InterceptedService<Channel, BearerAuth>>;

/// A bearer token from `--token` or `MERIDIAN_TOKEN`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl From<String> for BearerToken {
    fn from(token: String) -> Self {
        BearerToken(token)
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Adds the `authorization` header to each request, when there is a token.
#[derive(Clone)]
pub(super) struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl BearerAuth {
    /// Checks the token can travel in a header; an empty one (e.g. `MERIDIAN_TOKEN=`)
    /// counts as none.
    pub(super) fn new(token: Option<&BearerToken>) -> Result<Self, CtlError> {
        let header = match token.map(|t| t.0.trim()).filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => {
                let mut value = MetadataValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| CtlError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(BearerAuth { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// An Admin client on `channel` that authenticates with `auth`.
pub(super) fn admin_client(channel: Channel, auth: BearerAuth) -> Admin {
    AdminClient::with_interceptor(channel, auth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(token: Option<&str>) -> Option<String> {
        let token = token.map(|t| BearerToken::from(t.to_owned()));
        let mut auth = BearerAuth::new(token.as_ref()).expect("valid token");
        let request = auth
            .call(tonic::Request::new(()))
            .expect("interceptor passes");
        request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().expect("ascii").to_owned())
    }

    #[test]
    fn a_token_becomes_a_bearer_header() {
        assert_eq!(header_of(Some("s3cret")).as_deref(), Some("Bearer s3cret"));
    }

    #[test]
    fn no_or_empty_token_sends_no_header() {
        assert_eq!(header_of(None), None);
        assert_eq!(header_of(Some("  ")), None);
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_without_echoing_it() {
        let token = BearerToken::from("bad\ntoken".to_owned());
        let err = BearerAuth::new(Some(&token)).err().expect("refused");
        assert!(!err.to_string().contains("bad"));
    }

    #[test]
    fn tokens_are_redacted_in_debug_output() {
        let token = BearerToken::from("s3cret".to_owned());
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
