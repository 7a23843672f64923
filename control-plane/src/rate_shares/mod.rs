//! Federation-wide rate limits: each proxy enforces a share of every rate-limited
//! (service, tier), and this module decides the shares. Proxies send their demand per
//! (service, tier) — calls admitted and refused — in their load reports; [`demand`]
//! keeps the latest of each proxy's, and [`apportion`] (a pure function) divides a tier
//! among the federation's proxies by demand, an equal share for proxies with no fresh
//! report. Each `ReportLoad` answer carries the reporting proxy's shares.
//!
//! Every replica apportions from the reports it receives itself, over the proxies of the
//! whole federation (the proxy registry lists every replica's). Proxies reporting to
//! another replica therefore count as "no fresh report" here and get an equal share,
//! which keeps the shares a replica hands out summing to at most 1 without any
//! coordination between replicas; with one replica (or all of a federation's proxies on
//! one) shares follow demand exactly.

pub mod apportion;
pub mod demand;

pub use apportion::apportion;
pub use demand::RateShareBook;
