//! What both Meridian binaries share: the domain types and their proto conversions,
//! configuration loading and validation, the listener limits, the load reports' latency histogram, telemetry (logs, traces, metrics, W3C context),
//! backoff, the naming rule, the shutdown signal, and when to reload configuration.

#![forbid(unsafe_code)]

pub mod admin_http;
pub mod backoff;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod latency_histogram;
pub mod listener;
pub mod names;
pub mod process;
pub mod reload;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use backoff::Backoff;
pub use shutdown::Shutdown;
