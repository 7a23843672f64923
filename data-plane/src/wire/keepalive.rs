//! Keepalive on an HTTP/2 connection: a PING every interval; a peer that does not answer
//! one within the timeout is taken for dead, so its connection is closed instead of
//! holding calls that will never be answered. Polled by the future that drives the
//! connection (the client listener's [`super::server::Connection`], the task of a
//! [`super::ClientConnection`]) every time that future is polled, several times per
//! call: so the timer and the PING's answer are polled only after one of them woke the
//! connection ([`Woken`]), and the rest of the time checking costs one atomic flag.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::task::{ArcWake, AtomicWaker, waker_ref};
use h2::{Ping, PingPong};
use tokio::time::{Instant, Sleep};

/// How often to PING, and how long an answer may take.
#[derive(Clone, Copy, Debug)]
pub struct KeepaliveSettings {
    pub interval: Duration,
    pub timeout: Duration,
}

/// A PING every interval; the connection is given up when one goes unanswered for the
/// timeout.
pub struct Keepalive {
    settings: KeepaliveSettings,
    ping_pong: PingPong,
    /// When to send the next PING, or, while one is out, when to give up on it.
    timer: Pin<Box<Sleep>>,
    ping_out: bool,
    /// What the timer and the PING's answer wake.
    woken: Arc<Woken>,
}

/// The waker the keepalive polls its timer and PING with: it notes that one of them woke,
/// then wakes the connection.
struct Woken {
    since_last_poll: AtomicBool,
    connection: AtomicWaker,
}

impl ArcWake for Woken {
    fn wake_by_ref(woken: &Arc<Self>) {
        woken.since_last_poll.store(true, Ordering::Release);
        woken.connection.wake();
    }
}

impl Keepalive {
    pub fn new(settings: KeepaliveSettings, ping_pong: PingPong) -> Self {
        Keepalive {
            settings,
            ping_pong,
            timer: Box::pin(tokio::time::sleep(settings.interval)),
            ping_out: false,
            woken: Arc::new(Woken {
                // Polled once at first, to arm the timer.
                since_last_poll: AtomicBool::new(true),
                connection: AtomicWaker::new(),
            }),
        }
    }

    pub fn settings(&self) -> KeepaliveSettings {
        self.settings
    }

    /// Ready once a PING went unanswered for the timeout.
    pub fn poll_unanswered(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.woken.connection.register(cx.waker());
        if !self.woken.since_last_poll.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let woken = Arc::clone(&self.woken);
        let waker = waker_ref(&woken);
        self.poll_timer_and_ping(&mut Context::from_waker(&waker))
    }

    fn poll_timer_and_ping(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.ping_out {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.ping_out = false;
                        let next = Instant::now() + self.settings.interval;
                        self.timer.as_mut().reset(next);
                        continue;
                    }
                    // The connection is closing; it reports that itself.
                    Poll::Ready(Err(_)) => return Poll::Pending,
                    Poll::Pending => {}
                }
                return self.timer.as_mut().poll(cx);
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.ping_pong.send_ping(Ping::opaque()).is_err() {
                return Poll::Pending;
            }
            self.ping_out = true;
            let give_up = Instant::now() + self.settings.timeout;
            self.timer.as_mut().reset(give_up);
        }
    }
}
