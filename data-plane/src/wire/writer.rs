//! The writing half of a connection's task, on either side: it takes what the calls
//! queued ([`Conn::out`](super::conn::Conn)) and writes it to the socket in one go.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use super::conn::{Role, Shared};

/// A write buffer that grew past this in a burst (a peer reading slowly) is let go once
/// written, so that a connection does not hold its largest burst for the rest of its life.
const KEPT_WRITE_BUFFER: usize = 64 * 1024;

#[derive(Debug)]
pub struct Writer {
    /// What is being written, and how much of it went.
    writing: Vec<u8>,
    written: usize,
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            writing: Vec::with_capacity(4096),
            written: 0,
        }
    }

    /// Whether everything taken was written.
    pub fn is_idle(&self) -> bool {
        self.written == self.writing.len()
    }

    /// Writes what is queued until the socket takes no more or nothing is left; the
    /// task is woken for what is queued later from elsewhere.
    pub fn poll_write<T, R>(
        &mut self,
        io: &mut T,
        shared: &Shared<R>,
        cx: &mut Context<'_>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin,
        R: Role,
    {
        loop {
            if self.is_idle() {
                self.recycle();
                self.written = 0;
                let mut conn = shared.lock();
                if conn.out.is_empty() {
                    conn.register_driver(cx);
                    break;
                }
                conn.take_out(&mut self.writing);
            }
            match Pin::new(&mut *io).poll_write(cx, &self.writing[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        match Pin::new(io).poll_flush(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }

    /// Empties the buffer written whole, for reuse (or a new one).
    fn recycle(&mut self) {
        if self.writing.capacity() > KEPT_WRITE_BUFFER {
            self.writing = Vec::with_capacity(4096);
        } else {
            self.writing.clear();
        }
    }

    /// What is left to write of what was taken, then `last` (a final GOAWAY, which so
    /// starts a frame of its own).
    pub fn take_rest(&mut self, last: &mut Vec<u8>) -> Vec<u8> {
        let mut rest = self.writing.split_off(self.written);
        rest.append(last);
        rest
    }
}
