//! Configuration of the two binaries: a TOML file, overridden by `MERIDIAN_*` environment
//! variables and command-line flags (the binaries declare those with clap, which gives a
//! flag precedence over its variable), then validated as a whole. Every error names the
//! field and the bad value, so an operator can fix the file without reading code.

mod auth;
mod client_tls;
mod control_plane;
mod error;
mod listener_limits;
mod listener_tls;
mod load;
mod proxy;

pub use auth::{AuthConfig, CertificateIdentity, MIN_TOKEN_LEN, Role, Scope, TokenConfig};
pub use client_tls::ClientTlsConfig;
pub use control_plane::{
    ControlPlaneConfig, ControlPlaneListen, ETCD_PASSWORD_ENV, ElectionConfig, EtcdTlsConfig,
    ScalingConfig, StoreBackend, StoreConfig,
};
pub use error::ConfigError;
pub use listener_limits::{ListenerLimits, ListenerLimitsArgs};
pub use listener_tls::ListenerTlsConfig;
pub use load::load_file;
pub use proxy::{ProxyConfig, ProxyListen, UpstreamLimits, UpstreamTlsRule};

/// Replaces `target` with the flag or environment value when one was given.
pub fn override_with<T: Clone>(target: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

/// A configuration that can check itself after all layers are applied.
pub trait Validate {
    /// The first problem found, naming the field and the value.
    fn validate(&self) -> Result<(), ConfigError>;
}

#[cfg(test)]
mod tests;
