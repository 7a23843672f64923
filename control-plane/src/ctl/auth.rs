//! The bearer token: kept out of every printout (its `Debug` is redacted), checked once
//! when the client is built, and attached by the shared interceptor
//! ([`meridian_shared::credentials::BearerAuth`]) to every Admin call as
//! `authorization: Bearer <token>`.

use meridian_proto::v1::admin_client::AdminClient;
use meridian_shared::credentials::BearerAuth;
use meridian_shared::domain::limits::routing_message_limit;
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

/// The interceptor for `token`; an empty one (e.g. `MERIDIAN_TOKEN=`) counts as none.
pub(super) fn bearer_auth(token: Option<&BearerToken>) -> Result<BearerAuth, CtlError> {
    match token {
        None => Ok(BearerAuth::default()),
        Some(token) => BearerAuth::new(&token.0, "--token").map_err(|_| CtlError::BadToken),
    }
}

/// An Admin client on `channel` that authenticates with `auth`.
pub(super) fn admin_client(channel: Channel, auth: BearerAuth) -> Admin {
    // A federation at its configured limits lists larger than gRPC's 4 MiB default.
    AdminClient::with_interceptor(channel, auth).max_decoding_message_size(routing_message_limit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_without_echoing_it() {
        let token = BearerToken::from("bad\ntoken".to_owned());
        let err = bearer_auth(Some(&token)).expect_err("refused");
        assert!(!err.to_string().contains("bad"));
        assert!(
            !bearer_auth(Some(&BearerToken::from("  ".to_owned())))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn tokens_are_redacted_in_debug_output() {
        let token = BearerToken::from("s3cret".to_owned());
        assert!(!format!("{token:?}").contains("s3cret"));
    }
}
