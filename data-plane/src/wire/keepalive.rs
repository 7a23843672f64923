//! Keepalive on an HTTP/2 connection: a PING every interval; a peer that does not answer
//! one within the timeout is taken for dead, so its connection is closed instead of
//! holding calls that will never be answered. The task driving a connection (a client
//! listener's [`super::server::Connection`], a node's [`super::ClientConnection`]) polls
//! it when the socket has nothing more to read, writes the PING it asks for, and reports
//! each PING acknowledgement.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How often to PING, and how long an answer may take.
#[derive(Clone, Copy, Debug)]
pub struct KeepaliveSettings {
    pub interval: Duration,
    pub timeout: Duration,
}

/// What the keepalive asks of its connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a PING now.
    Ping,
    /// The last PING went unanswered for the timeout: close the connection.
    Unanswered,
}

/// The payload of this side's PINGs.
pub const PING_PAYLOAD: [u8; 8] = *b"meridian";

/// A PING every interval; the connection is given up when one goes unanswered.
pub struct Keepalive {
    settings: KeepaliveSettings,
    /// When to send the next PING, or, while one is out, when to give up on it.
    timer: Pin<Box<Sleep>>,
    ping_out: bool,
}

impl Keepalive {
    pub fn new(settings: KeepaliveSettings) -> Self {
        Keepalive {
            settings,
            timer: Box::pin(tokio::time::sleep(settings.interval)),
            ping_out: false,
        }
    }

    pub fn settings(&self) -> KeepaliveSettings {
        self.settings
    }

    /// Ready when a PING is due or went unanswered; the timer is armed again for what
    /// comes next.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Due> {
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.ping_out {
            return Poll::Ready(Due::Unanswered);
        }
        self.ping_out = true;
        let deadline = Instant::now() + self.settings.timeout;
        self.timer.as_mut().reset(deadline);
        // Registers the timer again.
        let _ = self.timer.as_mut().poll(cx);
        Poll::Ready(Due::Ping)
    }

    /// The peer acknowledged a PING: the next goes out an interval from now.
    pub fn on_ack(&mut self) {
        if std::mem::take(&mut self.ping_out) {
            let next = Instant::now() + self.settings.interval;
            self.timer.as_mut().reset(next);
        }
    }
}
