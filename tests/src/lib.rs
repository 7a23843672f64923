//! Meridian's test harness, shared by every crate's tests: real etcd members on loopback
//! ([`etcd`]) and, as later issues add them, helpers that run the real binaries.
//!
//! Tests use real parts. When something they need is missing (an `etcd` binary), the
//! harness fails with the command that installs it; it never skips.

#![forbid(unsafe_code)]

pub mod browser;
pub mod cluster;
pub mod control;
pub mod control_scale;
pub mod demo_node;
pub mod etcd;
pub mod http;
pub mod loadgen;
pub mod ports;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod routing_bench;
pub mod subscriber;

pub use etcd::{EtcdCluster, HarnessError};
