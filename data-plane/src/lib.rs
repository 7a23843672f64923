//! Meridian's data-plane proxy: follows routing tables from the control plane ([`table`]),
//! forwards any gRPC call to a node of its service ([`forward`]) or routes federation
//! messages ([`router`]) once admission control lets it through ([`admission`]: client tier rates, concurrency), picks
//! endpoints with the service's algorithm ([`balance`]) among those whose breakers allow
//! ([`endpoint`]), retries only when safe ([`retry`]), reports each node's load to the
//! control plane ([`load_report`]), and keeps working on its last good table when the
//! control plane is away. `meridian-proxy` runs it ([`server`]).

#![forbid(unsafe_code)]

pub mod admission;
pub mod balance;
pub mod cli;
mod clock;
pub mod endpoint;
pub mod error;
pub mod forward;
pub mod hop;
pub mod load_report;
pub mod outage_log;
pub mod reload;
pub mod retry;
pub mod router;
pub mod server;
pub mod table;
pub mod wire;

pub use cli::ProxyArgs;
pub use server::{Proxy, ServeError};
