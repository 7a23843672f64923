//! Meridian's control plane: the source of truth that every proxy follows. It keeps the
//! federation's topology in etcd (or an embedded store in dev mode), serves the
//! routing-table stream, node registration and the Admin API, and runs the reconcilers on
//! the elected leader. `meridian-control` runs it; `meridianctl` drives it.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod ctl;
pub mod dashboard;
pub mod discovery;
pub mod dynconfig;
pub mod errors;
pub mod events;
pub mod health;
pub mod keys;
pub mod leader;
pub mod rate_shares;
pub mod registry;
pub mod reload;
pub mod replica_lease;
pub mod routing;
pub mod scaling;
pub mod server;
pub mod store;
pub mod topology;

pub use cli::ControlArgs;
pub use server::{ControlPlane, ServeError};
