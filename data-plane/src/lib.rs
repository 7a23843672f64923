//! Meridian's data-plane proxy: subscribes to routing tables from the control plane and
//! forwards gRPC traffic to nodes. `meridian-proxy` runs it.
//!
//! Today it loads and validates its configuration and serves its admin HTTP endpoints;
//! the table subscription and forwarding are the next issue's work.

#![forbid(unsafe_code)]

pub mod balance;
pub mod cli;
pub mod endpoint;
pub mod forward;
pub mod retry;
pub mod router;
pub mod server;
pub mod table;

pub use cli::ProxyArgs;
pub use server::{Proxy, ServeError};
