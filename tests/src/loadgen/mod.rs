//! `meridian-loadgen`: a gRPC load generator for demos and benchmarks. It opens
//! `connections` HTTP/2 connections to a target and keeps `streams` calls in flight on
//! each, for a fixed duration (or until Ctrl-C), optionally capped to a total rate; it
//! records every call's latency in an HDR histogram and reports throughput, errors and
//! percentiles. Modes: `unary` (`demo.v1.Echo/Say`), `stream` (messages on long-lived
//! `demo.v1.Echo/Chat` bidi streams, each round trip timed) and `route-message`
//! (`meridian.v1.MessageRouter/RouteMessage`).

mod report;
mod run;

use std::time::Duration;

use clap::{Parser, ValueEnum};

pub use report::Report;
pub use run::run;

/// Load a gRPC target (a node, a meridian-proxy, nginx or HAProxy) and report throughput
/// and latency percentiles.
#[derive(Debug, Clone, Parser)]
#[command(name = "meridian-loadgen", version, about, long_about)]
pub struct LoadArgs {
    /// Target URL, e.g. http://127.0.0.1:7800.
    #[arg(long)]
    pub target: String,
    /// What to call.
    #[arg(long, value_enum, default_value_t = Mode::Unary)]
    pub mode: Mode,
    /// HTTP/2 connections to open.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Concurrent calls (or streams) per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// How long to run, in seconds; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Total calls per second across all streams; 0 means as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// In `stream` mode, messages sent on each stream before it is closed and a new one
    /// opened; 0 keeps each stream open until the run ends.
    #[arg(long, default_value_t = 0)]
    pub messages_per_stream: u64,
    /// Payload bytes per call.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Print a progress line every this many seconds (0: only the final report).
    #[arg(long, default_value_t = 0.0)]
    pub progress: f64,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Unary,
    Stream,
    RouteMessage,
}

impl LoadArgs {
    pub fn duration(&self) -> Option<Duration> {
        (self.duration > 0.0).then(|| Duration::from_secs_f64(self.duration))
    }
}
