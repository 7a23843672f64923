//! Keepalive on an HTTP/2 connection: a PING every interval; a peer that does not answer
//! one within the timeout is taken for dead, so its connection is closed instead of
//! holding calls that will never be answered.

use std::future::poll_fn;
use std::time::Duration;

use h2::{Ping, PingPong};

/// Why a connection's keepalive gave up on it.
#[derive(Debug, thiserror::Error)]
pub enum KeepaliveError {
    #[error("no answer to a keepalive PING within {0:?}")]
    NoPong(Duration),
    #[error("the keepalive PING failed: {0}")]
    Failed(#[from] h2::Error),
}

/// Pings every `interval` and returns when a PING goes unanswered for `timeout` (never,
/// while the peer answers).
pub async fn until_unanswered(
    mut ping_pong: PingPong,
    interval: Duration,
    timeout: Duration,
) -> KeepaliveError {
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = ping_pong.send_ping(Ping::opaque()) {
            return e.into();
        }
        match tokio::time::timeout(timeout, poll_fn(|cx| ping_pong.poll_pong(cx))).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return e.into(),
            Err(_) => return KeepaliveError::NoPong(timeout),
        }
    }
}
