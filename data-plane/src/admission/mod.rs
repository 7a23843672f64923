//! Admission: whether a call the proxy has routed may proceed now, wait, or be refused
//! before any node sees it.

pub mod concurrency;
pub mod priority;
