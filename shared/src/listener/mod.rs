//! The limits every gRPC listener applies to its clients ([`crate::config::ListenerLimits`]),
//! in pieces both servers use: the proxy's own accept loop (over h2) and the control plane's
//! tonic server.
//!
//! | file | owns |
//! | --- | --- |
//! | `cap.rs` | [`ConnectionCap`]: the connection count, one atomic for the whole process |
//! | `accept.rs` | [`BackoffAcceptor`]: `accept` that pauses after failures (EMFILE...) instead of spinning |
//! | `preface.rs` | [`read_preface`]: the HTTP/2 preface read under the handshake deadline |
//! | `activity.rs` | [`ConnectionActivity`]: calls open and calls reset early, for the idle timeout and the rapid-reset defence |
//! | `body.rs` | [`TrackedBody`]: a response body that keeps its call counted until it ends |
//! | `metrics.rs` | [`ListenerMetrics`]: refusals, closes by reason, accept errors, open connections |
//! | `admin.rs` | [`AdminListener`]: a small cap and an inactivity timeout for the admin HTTP port |
//! | `tonic_incoming.rs` | [`LimitedIncoming`] and [`CallTrackingLayer`]: all of it for a tonic server |

mod accept;
mod activity;
mod admin;
mod body;
mod cap;
mod metrics;
mod preface;
mod tonic_incoming;

pub use accept::BackoffAcceptor;
pub use activity::{ConnectionActivity, StreamGuard, Tracked};
pub use admin::{ADMIN_IDLE_TIMEOUT, ADMIN_MAX_CONNECTIONS, AdminIo, AdminListener};
pub use body::TrackedBody;
pub use cap::{ConnectionCap, ConnectionPermit};
pub use metrics::ListenerMetrics;
pub use preface::{PREFACE, PrefacedIo, read_preface};
pub use tonic_incoming::{
    CallTracking, CallTrackingLayer, LimitedConnectInfo, LimitedIncoming, LimitedIo,
};
