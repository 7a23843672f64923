//! Which nodes the proxy reaches over TLS, from the `[[upstream_tls]]` rules. A node has
//! one connection however many services it serves, so one rule applies to it: the first,
//! in configuration order, naming any service the node serves (or `"*"`). Put specific
//! rules first and a `"*"` rule last (as `--upstream-ca` does). Nodes no rule matches are
//! reached in h2c.
//!
//! The choice is made once per endpoint, when a routing table creates it; the request
//! path only sees a connection that already knows whether it does TLS. The rules are
//! fixed for the life of the process (their certificate files reload on their own), so an
//! endpoint reused across tables keeps the right choice: its connection is kept only while
//! the node's address and the rule that applies to it ([`UpstreamTls::same_for`]) stay.

use std::sync::Arc;

use meridian_shared::config::UpstreamTlsRule;
use meridian_shared::domain::Node;
use meridian_shared::tls::{ClientTls, TlsConfigError};

/// The loaded rules; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    rules: Arc<[LoadedRule]>,
}

#[derive(Debug)]
struct LoadedRule {
    rule: UpstreamTlsRule,
    tls: ClientTls,
}

impl UpstreamTls {
    /// Reads each rule's files and starts watching them. Call inside the tokio runtime.
    pub fn load(rules: &[UpstreamTlsRule]) -> Result<UpstreamTls, TlsConfigError> {
        let rules = rules
            .iter()
            .map(|rule| {
                Ok(LoadedRule {
                    tls: ClientTls::load(rule.client_tls().files())?,
                    rule: rule.clone(),
                })
            })
            .collect::<Result<_, TlsConfigError>>()?;
        Ok(UpstreamTls { rules })
    }

    /// The TLS configuration to reach `node` with; `None` for h2c.
    pub fn for_node(&self, node: &Node) -> Option<&ClientTls> {
        self.rule_for(node).map(|loaded| &loaded.tls)
    }

    /// Whether `a` and `b` are reached with the same TLS configuration (the same rule, or
    /// h2c for both): what lets an endpoint keep its connection when its node changes.
    pub fn same_for(&self, a: &Node, b: &Node) -> bool {
        match (self.rule_for(a), self.rule_for(b)) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    fn rule_for(&self, node: &Node) -> Option<&LoadedRule> {
        self.rules
            .iter()
            .find(|loaded| node.services.iter().any(|s| loaded.rule.matches(s)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use meridian_shared::tls::testing::TestCa;

    use super::*;

    fn rule(services: &[&str], ca: &Path, server_name: &str) -> UpstreamTlsRule {
        UpstreamTlsRule {
            services: services.iter().map(|s| s.to_string()).collect(),
            server_name: Some(server_name.into()),
            ..UpstreamTlsRule::every_service(ca.to_owned())
        }
    }

    fn node(services: &[&str]) -> Node {
        Node {
            id: "n1".into(),
            address: "127.0.0.1:9".into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// The server name of the rule chosen for a node serving `services`.
    fn chosen(tls: &UpstreamTls, services: &[&str]) -> Option<String> {
        tls.rule_for(&node(services))
            .and_then(|loaded| loaded.rule.server_name.clone())
    }

    #[tokio::test]
    async fn the_first_rule_naming_any_service_of_the_node_applies() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("upstream CA").write(dir.path(), "ca");
        let tls = UpstreamTls::load(&[
            rule(&["demo.v1.Echo"], &ca, "echo.internal"),
            rule(&["shop.v1.Cart", "demo.v1.Echo"], &ca, "cart.internal"),
            rule(&["*"], &ca, "any.internal"),
        ])
        .unwrap();
        assert_eq!(chosen(&tls, &["demo.v1.Echo"]).unwrap(), "echo.internal");
        assert_eq!(chosen(&tls, &["shop.v1.Cart"]).unwrap(), "cart.internal");
        assert_eq!(
            chosen(&tls, &["shop.v1.Cart", "demo.v1.Echo"]).unwrap(),
            "echo.internal",
            "rule order decides, not the order of the node's services"
        );
        assert_eq!(chosen(&tls, &["other.v1.X"]).unwrap(), "any.internal");

        let only_echo = UpstreamTls::load(&[rule(&["demo.v1.Echo"], &ca, "e")]).unwrap();
        assert!(only_echo.for_node(&node(&["other.v1.X"])).is_none());
        assert!(
            UpstreamTls::default()
                .for_node(&node(&["demo.v1.Echo"]))
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_rule_whose_files_are_unusable_is_refused_at_load() {
        let err =
            UpstreamTls::load(&[UpstreamTlsRule::every_service("/nonexistent/ca.pem".into())])
                .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
