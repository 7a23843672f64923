//! Who may call the control plane: credentials and the role and scope each one grants.
//!
//! | role | may call | scope |
//! | --- | --- | --- |
//! | `viewer` | Admin reads | – |
//! | `operator` | every RPC | – |
//! | `node` | `NodeRegistry` | optional `federation`, `services`, `regions` |
//! | `proxy` | `RoutingDiscovery` | optional `federation` |
//!
//! A caller proves who it is with a bearer token (`[[auth.tokens]]`) or, when the control
//! plane requires client certificates, with its certificate (`[[auth.certificates]]`
//! maps a certificate identity to a role and scope):
//!
//! ```toml
//! [[auth.tokens]]
//! name = "eu-nodes"                 # shown in events as node:eu-nodes
//! token = "..."                     # at least 16 characters
//! role = "node"
//! federation = "prod"
//! services = ["demo.v1.Echo"]
//! regions = ["eu-west"]
//!
//! [[auth.certificates]]
//! name = "proxy-eu-west"
//! identity = "spiffe://prod/proxy/eu-west"   # a URI SAN, DNS SAN or the subject CN
//! role = "proxy"
//! federation = "prod"
//! ```

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, Validate};
use crate::names::name_problem;

/// What a credential may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Admin reads.
    Viewer,
    /// Everything: Admin reads and writes, and the node and proxy APIs.
    Operator,
    /// `NodeRegistry`: a node registering itself and keeping its lease.
    Node,
    /// `RoutingDiscovery`: a proxy following routing tables and sending load reports.
    Proxy,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Node => "node",
            Role::Proxy => "proxy",
        }
    }
}

/// What a node or proxy credential is limited to; empty parts limit nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub federation: Option<String>,
    /// Services a node may serve.
    pub services: Vec<String>,
    /// Regions a node may be in.
    pub regions: Vec<String>,
}

/// One bearer token. `Debug` hides the secret so tokens never reach logs.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it; appears in events as `<role>:<name>`.
    pub name: String,
    pub token: String,
    pub role: Role,
    #[serde(default)]
    pub federation: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}

impl TokenConfig {
    /// An unscoped token.
    pub fn new(name: &str, token: &str, role: Role) -> Self {
        TokenConfig {
            name: name.into(),
            token: token.into(),
            role,
            federation: None,
            services: Vec::new(),
            regions: Vec::new(),
        }
    }

    pub fn scope(&self) -> Scope {
        Scope {
            federation: self.federation.clone(),
            services: self.services.clone(),
            regions: self.regions.clone(),
        }
    }
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("token", &"<redacted>")
            .field("role", &self.role)
            .field("scope", &self.scope())
            .finish()
    }
}

/// A client-certificate identity (mTLS) and the role and scope it grants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateIdentity {
    /// Who holds it; appears in events as `<role>:<name>`.
    pub name: String,
    /// Matched against the certificate's URI SANs, DNS SANs, then its subject CN.
    pub identity: String,
    pub role: Role,
    #[serde(default)]
    pub federation: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}

impl CertificateIdentity {
    pub fn scope(&self) -> Scope {
        Scope {
            federation: self.federation.clone(),
            services: self.services.clone(),
            regions: self.regions.clone(),
        }
    }
}

/// Shortest token accepted: guessable tokens are refused at start.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A TOML file with `[[tokens]]` and `[[certificates]]` entries, read in addition to
    /// these.
    pub tokens_file: Option<PathBuf>,
    pub tokens: Vec<TokenConfig>,
    pub certificates: Vec<CertificateIdentity>,
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let field = |part: &str| format!("auth.tokens[{i}].{part}");
            check_name(&field("name"), &t.name)?;
            if t.token.len() < MIN_TOKEN_LEN {
                return Err(ConfigError::invalid(
                    field("token"),
                    format_args!("<{} characters>", t.token.len()),
                    format!("tokens must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
            if !seen.insert(t.token.as_str()) {
                return Err(ConfigError::invalid(
                    field("token"),
                    format_args!("<token of {}>", t.name),
                    "the same token is configured twice",
                ));
            }
            check_scope(&field(""), t.role, &t.scope())?;
        }
        let mut identities = HashSet::new();
        for (i, c) in self.certificates.iter().enumerate() {
            let field = |part: &str| format!("auth.certificates[{i}].{part}");
            check_name(&field("name"), &c.name)?;
            if c.identity.is_empty() {
                return Err(ConfigError::invalid(
                    field("identity"),
                    &c.identity,
                    "must name a URI SAN, DNS SAN or subject CN",
                ));
            }
            if !identities.insert(c.identity.as_str()) {
                return Err(ConfigError::invalid(
                    field("identity"),
                    &c.identity,
                    "the same identity is mapped twice",
                ));
            }
            check_scope(&field(""), c.role, &c.scope())?;
        }
        Ok(())
    }
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    match name_problem(name) {
        Some(problem) => Err(ConfigError::invalid(field, name, problem)),
        None => Ok(()),
    }
}

/// Scopes narrow node and proxy credentials; services and regions only nodes.
fn check_scope(prefix: &str, role: Role, scope: &Scope) -> Result<(), ConfigError> {
    let scoped = matches!(role, Role::Node | Role::Proxy);
    if let Some(federation) = &scope.federation {
        if !scoped {
            return Err(ConfigError::invalid(
                format!("{prefix}federation"),
                federation,
                "only node and proxy credentials are scoped to a federation",
            ));
        }
        check_name(&format!("{prefix}federation"), federation)?;
    }
    for (part, values) in [("services", &scope.services), ("regions", &scope.regions)] {
        if !values.is_empty() && role != Role::Node {
            return Err(ConfigError::invalid(
                format!("{prefix}{part}"),
                values.join(","),
                "only node credentials are scoped to services and regions",
            ));
        }
    }
    for (i, region) in scope.regions.iter().enumerate() {
        check_name(&format!("{prefix}regions[{i}]"), region)?;
    }
    Ok(())
}
