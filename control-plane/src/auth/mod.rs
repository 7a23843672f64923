//! Authentication and authorization of every gRPC call, in one place.
//!
//! [`layer::AuthLayer`] wraps the whole gRPC server: it maps the call's path to the role it
//! needs ([`layer::required_role`]), finds the caller from its bearer token or client
//! certificate ([`credentials::Authenticator`]), refuses with `UNAUTHENTICATED` (no or an
//! unknown credential) or `PERMISSION_DENIED` (the wrong role) before any handler runs, and
//! hands the [`Caller`] to the handler in the request's extensions. Handlers then only
//! check the caller's *scope* against what the request names (its federation, a node's
//! services and region), through [`Caller`]'s methods, since only they have decoded the
//! message. Refusals never say anything about the topology.

pub mod credentials;
pub mod layer;
pub mod revocable;

use meridian_shared::config::{Role, Scope};
use meridian_shared::domain::Node;
use tonic::{Request, Status};

pub use credentials::{AuthError, Authenticator};
pub use layer::{AuthLayer, SharedAuthenticator};

/// Who is calling, with what role and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Denied> for Status {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated(message) => Status::unauthenticated(message),
            Denied::PermissionDenied(message) => Status::permission_denied(message),
        }
    }
}

impl Caller {
    /// How events name this caller as a cause, e.g. `operator:alice`, `node:eu-nodes`.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.role.name(), self.name)
    }

    /// Whether the caller may act in `federation`.
    pub fn check_federation(&self, federation: &str) -> Result<(), Denied> {
        match &self.scope.federation {
            Some(allowed) if allowed != federation => Err(self.out_of_scope(format!(
                "federation {federation:?} (it is limited to {allowed:?})"
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the caller may register `node`: its federation, region and every service.
    pub fn check_node(&self, node: &Node) -> Result<(), Denied> {
        self.check_federation(&node.federation)?;
        let regions = &self.scope.regions;
        if !regions.is_empty() && !regions.contains(&node.region) {
            return Err(self.out_of_scope(format!(
                "region {:?} (it is limited to {})",
                node.region,
                regions.join(", ")
            )));
        }
        let services = &self.scope.services;
        if let Some(service) = node
            .services
            .iter()
            .find(|s| !services.is_empty() && !services.contains(s))
        {
            return Err(self.out_of_scope(format!(
                "service {service:?} (it is limited to {})",
                services.join(", ")
            )));
        }
        Ok(())
    }

    fn out_of_scope(&self, what: String) -> Denied {
        Denied::PermissionDenied(format!(
            "credential {:?} ({}) may not act on {what}",
            self.name,
            self.role.name()
        ))
    }
}

/// The caller the [`AuthLayer`] admitted. A handler behind the layer always has one; its
/// absence means the server was built without the layer, which must fail closed.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_caller(federation: Option<&str>, services: &[&str], regions: &[&str]) -> Caller {
        Caller {
            name: "eu-nodes".into(),
            role: Role::Node,
            scope: Scope {
                federation: federation.map(str::to_owned),
                services: services.iter().map(|s| s.to_string()).collect(),
                regions: regions.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    fn node(federation: &str, region: &str, services: &[&str]) -> Node {
        Node {
            id: "n1".into(),
            federation: federation.into(),
            region: region.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn scopes_limit_federation_region_and_services() {
        let caller = node_caller(Some("prod"), &["demo.v1.Echo"], &["eu-west"]);
        assert!(
            caller
                .check_node(&node("prod", "eu-west", &["demo.v1.Echo"]))
                .is_ok()
        );
        for refused in [
            node("staging", "eu-west", &["demo.v1.Echo"]),
            node("prod", "us-east", &["demo.v1.Echo"]),
            node("prod", "eu-west", &["demo.v1.Echo", "pay.v1.Pay"]),
        ] {
            let denied = caller.check_node(&refused).unwrap_err();
            assert!(matches!(denied, Denied::PermissionDenied(_)), "{denied}");
        }
        let unscoped = node_caller(None, &[], &[]);
        assert!(unscoped.check_node(&node("any", "where", &["x.Y"])).is_ok());
        assert_eq!(caller.actor(), "node:eu-nodes");
    }
}
