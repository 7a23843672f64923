//! Limits of a gRPC listener (the proxy's client port, the control plane's gRPC port): how
//! many connections it holds, how long a connection may take to start and may stay idle,
//! what one HTTP/2 connection may ask for, and when a connection that keeps cancelling its
//! own calls (the HTTP/2 "rapid reset" attack, CVE-2023-44487) is closed. The defaults are
//! safe for a server on the internet; lower them in tests, raise them on big machines.
//!
//! ```toml
//! [listener_limits]
//! max_connections = 10000          # over it a new connection is closed at once
//! handshake_timeout_ms = 10000     # TLS handshake and HTTP/2 preface, together
//! idle_timeout_seconds = 300       # no open call for that long: GOAWAY, close
//! max_concurrent_streams = 1024    # calls in flight on one connection
//! max_header_list_bytes = 16384    # request headers (metadata) of one call
//! keepalive_interval_seconds = 30  # HTTP/2 PING to an otherwise quiet connection
//! keepalive_timeout_seconds = 10   # no PING answer for that long: close
//! max_premature_resets = 100       # calls the client cancelled before their answer
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerLimits {
    /// Connections held at once; a connection over the cap is closed as soon as it is
    /// accepted (and counted), the ones already open are not disturbed.
    pub max_connections: u32,
    /// How long a new connection may take to finish its TLS handshake and send the HTTP/2
    /// preface before it is closed.
    pub handshake_timeout_ms: u32,
    /// A connection with no call open for this long gets a GOAWAY and is closed.
    pub idle_timeout_seconds: u32,
    /// Calls in flight on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Largest header block of one call, bytes (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_list_bytes: u32,
    /// How often a PING is sent on a connection to check the client is still there.
    pub keepalive_interval_seconds: u32,
    /// A connection whose client does not answer a PING within this is closed.
    pub keepalive_timeout_seconds: u32,
    /// Calls a client may cancel before their answer began; past this count, when they
    /// are at least half of the connection's calls, the connection is closed.
    pub max_premature_resets: u32,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: 10_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_seconds: 300,
            max_concurrent_streams: 1_024,
            max_header_list_bytes: 16 * 1024,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
            max_premature_resets: 100,
        }
    }
}

impl ListenerLimits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.handshake_timeout_ms))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.idle_timeout_seconds))
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.keepalive_interval_seconds))
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(u64::from(self.keepalive_timeout_seconds))
    }

    /// The first value out of its range, named as `section.key`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let checks: [(&str, u32, u32, u32); 8] = [
            ("max_connections", self.max_connections, 1, 1_000_000),
            (
                "handshake_timeout_ms",
                self.handshake_timeout_ms,
                100,
                120_000,
            ),
            ("idle_timeout_seconds", self.idle_timeout_seconds, 1, 86_400),
            (
                "max_concurrent_streams",
                self.max_concurrent_streams,
                1,
                100_000,
            ),
            (
                "max_header_list_bytes",
                self.max_header_list_bytes,
                1_024,
                1024 * 1024,
            ),
            (
                "keepalive_interval_seconds",
                self.keepalive_interval_seconds,
                1,
                3_600,
            ),
            (
                "keepalive_timeout_seconds",
                self.keepalive_timeout_seconds,
                1,
                600,
            ),
            (
                "max_premature_resets",
                self.max_premature_resets,
                1,
                1_000_000,
            ),
        ];
        for (key, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::invalid(
                    format!("{section}.{key}"),
                    value,
                    format!("must be between {min} and {max}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bounded() {
        let limits = ListenerLimits::default();
        limits.validate("listener_limits").unwrap();
        assert_eq!(limits.max_concurrent_streams, 1_024);
        assert_eq!(limits.idle_timeout(), Duration::from_secs(300));
    }

    #[test]
    fn a_value_out_of_range_names_the_key_and_its_range() {
        let limits = ListenerLimits {
            max_connections: 0,
            ..ListenerLimits::default()
        };
        let err = limits.validate("listener_limits").unwrap_err();
        assert_eq!(err.field(), Some("listener_limits.max_connections"));
        assert!(err.to_string().contains("between 1 and 1000000"), "{err}");
        let limits = ListenerLimits {
            handshake_timeout_ms: 5,
            ..ListenerLimits::default()
        };
        let err = limits.validate("listener_limits").unwrap_err();
        assert_eq!(err.field(), Some("listener_limits.handshake_timeout_ms"));
    }
}

/// The `[listener_limits]` flags, each with its `MERIDIAN_*` variable; both binaries
/// flatten it into their command line, so the names are the same for both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenerLimitsArgs {
    /// Client connections held at once; over it a new connection is closed at once.
    /// Default 10000.
    #[arg(long, env = "MERIDIAN_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<u32>,

    /// Milliseconds a new connection may take for its TLS handshake and HTTP/2 preface.
    /// Default 10000.
    #[arg(long, env = "MERIDIAN_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u32>,

    /// Seconds a connection may stay with no call open before it is closed (GOAWAY).
    /// Default 300.
    #[arg(long, env = "MERIDIAN_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub idle_timeout: Option<u32>,

    /// Calls in flight on one connection (HTTP/2 max concurrent streams). Default 1024.
    #[arg(long, env = "MERIDIAN_MAX_CONCURRENT_STREAMS", value_name = "COUNT")]
    pub max_concurrent_streams: Option<u32>,

    /// Largest request header block (metadata) of one call, bytes. Default 16384.
    #[arg(long, env = "MERIDIAN_MAX_HEADER_LIST_BYTES", value_name = "BYTES")]
    pub max_header_list_bytes: Option<u32>,

    /// Seconds between HTTP/2 PINGs to a connection. Default 30.
    #[arg(long, env = "MERIDIAN_KEEPALIVE_INTERVAL", value_name = "SECONDS")]
    pub keepalive_interval: Option<u32>,

    /// Seconds a client may take to answer a PING before its connection is closed.
    /// Default 10.
    #[arg(long, env = "MERIDIAN_KEEPALIVE_TIMEOUT", value_name = "SECONDS")]
    pub keepalive_timeout: Option<u32>,

    /// Calls a connection may cancel before their answer began; past it, when they are at
    /// least half of its calls, the connection is closed (HTTP/2 rapid-reset defence).
    /// Default 100.
    #[arg(long, env = "MERIDIAN_MAX_PREMATURE_RESETS", value_name = "COUNT")]
    pub max_premature_resets: Option<u32>,
}

impl ListenerLimitsArgs {
    /// Puts the given flags over `limits`.
    pub fn apply(&self, limits: &mut ListenerLimits) {
        use super::override_with;
        override_with(&mut limits.max_connections, &self.max_connections);
        override_with(&mut limits.handshake_timeout_ms, &self.handshake_timeout_ms);
        override_with(&mut limits.idle_timeout_seconds, &self.idle_timeout);
        override_with(
            &mut limits.max_concurrent_streams,
            &self.max_concurrent_streams,
        );
        override_with(
            &mut limits.max_header_list_bytes,
            &self.max_header_list_bytes,
        );
        override_with(
            &mut limits.keepalive_interval_seconds,
            &self.keepalive_interval,
        );
        override_with(
            &mut limits.keepalive_timeout_seconds,
            &self.keepalive_timeout,
        );
        override_with(&mut limits.max_premature_resets, &self.max_premature_resets);
    }
}
