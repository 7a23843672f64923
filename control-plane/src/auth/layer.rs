//! The tower layer in front of every gRPC service of the control plane: the one place
//! that decides who may call what.
//!
//! | path | role needed |
//! | --- | --- |
//! | `grpc.health.v1.Health/*`, server reflection | none (they disclose no topology) |
//! | `meridian.v1.Admin/` reads ([`ADMIN_READS`]) | viewer |
//! | `meridian.v1.Admin/` everything else | operator |
//! | `meridian.v1.NodeRegistry/*` | node |
//! | `meridian.v1.RoutingDiscovery/*` | proxy |
//! | anything else | operator (deny by default) |
//!
//! Operators may call everything. A refusal is a trailers-only gRPC response written
//! before the request body is read, so a refused call never reaches a handler. The
//! credentials are read anew for each call from a [`SharedAuthenticator`], which a
//! configuration reload replaces whole: a call sees the old set or the new one, and a
//! long-lived stream whose credential the new set refuses ends ([`super::revocable`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use futures::future::{Either, Ready, ready};
use meridian_shared::config::Role;
use tokio::sync::watch;
use tonic::Status;
use tower::{Layer, Service};

use super::credentials::{Authenticator, role_allows};
use super::revocable::{Credential, LONG_STREAMS, RevocableCall};
use super::{Caller, Denied};

/// Admin methods a viewer may call: they read and change nothing.
pub const ADMIN_READS: &[&str] = &[
    "GetTopology",
    "ListFederations",
    "ListRegions",
    "ListNodes",
    "ListServices",
    "ListFailovers",
    "ListScaling",
    "RecommendScaling",
    "GetGlobalMetrics",
    "ListProxies",
    "WatchEvents",
    "GetConfig",
    "ValidateConfig",
];

/// The role a call to `path` (`/package.Service/Method`) needs; `None` for open services.
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => None,
        "meridian.v1.Admin" if ADMIN_READS.contains(&method) => Some(Role::Viewer),
        "meridian.v1.NodeRegistry" => Some(Role::Node),
        "meridian.v1.RoutingDiscovery" => Some(Role::Proxy),
        _ => Some(Role::Operator),
    }
}

/// The credentials in force, replaced whole when the tokens file or config is reloaded;
/// each replacement is announced to the long-lived calls ([`super::revocable`]).
#[derive(Clone)]
pub struct SharedAuthenticator {
    current: Arc<ArcSwap<Authenticator>>,
    swapped: Arc<watch::Sender<()>>,
}

impl SharedAuthenticator {
    pub fn new(authenticator: Authenticator) -> Self {
        SharedAuthenticator {
            current: Arc::new(ArcSwap::from_pointee(authenticator)),
            swapped: Arc::new(watch::Sender::new(())),
        }
    }

    /// The credentials in force now.
    pub fn load(&self) -> arc_swap::Guard<Arc<Authenticator>> {
        self.current.load()
    }

    /// Puts `authenticator` in force and wakes every watched stream to check its caller.
    pub fn store(&self, authenticator: Arc<Authenticator>) {
        self.current.store(authenticator);
        self.swapped.send_replace(());
    }

    /// Changes on every [`store`](Self::store).
    pub fn swaps(&self) -> watch::Receiver<()> {
        self.swapped.subscribe()
    }
}

/// Source of the client certificate's identities for a request (its URI SANs, DNS SANs
/// and CN), when the connection is mTLS.
pub type CertificateIdentities = fn(&http::Extensions) -> Vec<String>;

#[derive(Clone)]
pub struct AuthLayer {
    auth: SharedAuthenticator,
    identities: CertificateIdentities,
}

impl AuthLayer {
    pub fn new(auth: SharedAuthenticator, identities: CertificateIdentities) -> Self {
        AuthLayer { auth, identities }
    }

    /// The caller of a request to `path`, or why it is refused (counted in
    /// `meridian_control_auth_refusals_total`); `Ok(None)` for open paths. The dashboard's
    /// JSON API admits its calls here too, under the gRPC path of the Admin method each
    /// one runs.
    /// Changes whenever the credentials in force are replaced.
    pub fn swaps(&self) -> watch::Receiver<()> {
        self.auth.swaps()
    }

    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Caller>, Denied> {
        self.check(path, headers, extensions).inspect_err(|denied| {
            metrics::counter!("meridian_control_auth_refusals_total", "reason" => reason(denied))
                .increment(1);
        })
    }

    fn check(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Option<Caller>, Denied> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let certificate = if authorization.is_none() {
            (self.identities)(extensions)
        } else {
            Vec::new()
        };
        self.verify(path, authorization, &certificate)
    }

    /// The caller presenting `authorization` (a bearer header's value) or, without one,
    /// a client certificate with `certificate` identities, if it may call `path` under
    /// the credentials in force now.
    pub fn verify(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
        certificate: &[String],
    ) -> Result<Option<Caller>, Denied> {
        let Some(needed) = required_role(path) else {
            return Ok(None);
        };
        let caller = self.auth.load().authenticate(authorization, certificate)?;
        if !role_allows(caller.role, needed) {
            return Err(Denied::PermissionDenied(format!(
                "credential {:?} has the {} role; {} needs the {} role",
                caller.name,
                caller.role.name(),
                path.trim_start_matches('/'),
                needed.name()
            )));
        }
        Ok(Some(caller))
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<
        Either<S::Future, RevocableCall<S::Future>>,
        Ready<Result<Self::Response, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.layer.admit(
            request.uri().path(),
            request.headers(),
            request.extensions(),
        ) {
            Ok(caller) => {
                let Some(caller) = caller else {
                    return Either::Left(Either::Left(self.inner.call(request)));
                };
                request.extensions_mut().insert(caller);
                let path = request.uri().path();
                if !LONG_STREAMS.contains(&path) {
                    return Either::Left(Either::Left(self.inner.call(request)));
                }
                let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
                let certificate = if authorization.is_none() {
                    (self.layer.identities)(request.extensions())
                } else {
                    Vec::new()
                };
                let credential = Credential {
                    layer: self.layer.clone(),
                    path: path.to_owned(),
                    authorization,
                    certificate,
                };
                Either::Left(Either::Right(RevocableCall::new(
                    self.inner.call(request),
                    credential,
                )))
            }
            Err(denied) => Either::Right(ready(Ok(Status::from(denied).into_http()))),
        }
    }
}

fn reason(denied: &Denied) -> &'static str {
    match denied {
        Denied::Unauthenticated(_) => "unauthenticated",
        Denied::PermissionDenied(_) => "permission_denied",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_needs_the_role_of_its_service() {
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            required_role("/meridian.v1.Admin/ListNodes"),
            Some(Role::Viewer)
        );
        assert_eq!(
            required_role("/meridian.v1.Admin/DrainNode"),
            Some(Role::Operator)
        );
        assert_eq!(
            required_role("/meridian.v1.NodeRegistry/KeepAlive"),
            Some(Role::Node)
        );
        assert_eq!(
            required_role("/meridian.v1.RoutingDiscovery/StreamRoutes"),
            Some(Role::Proxy)
        );
        assert_eq!(required_role("/x.Y/Z"), Some(Role::Operator));
        assert_eq!(required_role("nonsense"), Some(Role::Operator));
    }
}
