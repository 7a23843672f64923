//! Admission: whether a call that found its route may proceed, decided right after the
//! route and before any endpoint is picked, for forwarded calls and RouteMessage alike.
//! A refused call never reaches a node; it ends through the one error edge
//! ([`crate::error`]). Each kind of admission control is a file of its own:
//!
//! - [`rate`]: calls per second per client tier, the proxy's share of a federation-wide
//!   limit;
//! - [`concurrency`]: calls in flight per service, with a bounded queue, shedding lower
//!   [`priority`] first.

pub mod concurrency;
pub mod priority;
pub mod rate;
