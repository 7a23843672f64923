//! The server side of a client connection, over the proxy's own framing
//! ([`crate::wire::frame`], [`crate::wire::reader`]) and HPACK ([`crate::wire::hpack`])
//! rather than a general HTTP/2 server: one future per connection reads the client's
//! frames, starts a call for each request, drives every call and its answer, and writes
//! what they queued in one go, all in the connection's one task. A call is one entry of
//! the connection's [`FuturesUnordered`] (one allocation, woken on its own); it writes
//! its answer's HEADERS, DATA and trailers straight into the connection's outgoing
//! buffer (`wire::conn`, with what a client connection adds in [`state`]).
//!
//! The work of a call:
//! 1. the request's header block is decoded and checked (RFC 9113, section 8.3) and
//!    becomes a `Request<RecvBody>` for the handler;
//! 2. while the call runs, a RST_STREAM from the client drops the call's future at once
//!    (so a guard inside it sees a call cancelled before its answer);
//! 3. the answer's head goes out (ending the stream if the body is already empty), with
//!    a `date` header when it has none, as hyper added;
//! 4. the body goes out as the client's windows allow, then its trailers.
//!
//! What protects the proxy from a client: the stream limit (streams over it are refused
//! with REFUSED_STREAM), the header list limit (431, as h2 answered), a bound on header
//! blocks and their CONTINUATION frames, flow control both ways, a client that provokes
//! answers (SETTINGS and PING acknowledgements, refusals) faster than it reads them is
//! dropped, as is one whose streams break the protocol over 1,024 times; and a keepalive
//! PING. Rapid reset is counted by the caller ([`crate::server`]), whose call guard sees
//! each cancelled call.
//!
//! The settings are hyper's defaults where the listener sets none (1 MiB stream and
//! connection windows, 16 KiB frames), so clients see the same SETTINGS as before.

mod date;
mod request;
mod state;

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use h2::Reason;
use http::{Request, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite};

use super::StreamError;
use super::conn::Shared;
use super::frame::{self, Head};
use super::hpack;
use super::keepalive::{Due, Keepalive, KeepaliveSettings, PING_PAYLOAD};
use super::reader::{BAD_LENGTH, Frame as ReadFrame, FrameReader, ProtocolError, check_stream};
use super::stream::{IncomingBody, StreamRef, poll_send_body};
use super::writer::Writer;
use state::{Limits, Opened, Server};

const WINDOW: u32 = 1024 * 1024;
/// How many reads one poll makes before letting other tasks run.
const READS_PER_POLL: usize = 16;
/// The dynamic table a client's encoder may use: HPACK's default.
const HEADER_TABLE_SIZE: usize = 4096;

/// How the connections of a listener are served: their HTTP/2 settings and keep-alive.
#[derive(Clone, Debug)]
pub struct Http2Server {
    limits: Limits,
    keepalive: Option<KeepaliveSettings>,
}

impl Http2Server {
    /// A server allowing `max_concurrent_streams` calls at once per connection and
    /// request headers up to `max_header_list_size` bytes; with `keepalive_interval`,
    /// it PINGs every connection that often and closes one whose client does not
    /// answer within `keepalive_timeout`.
    pub fn new(
        max_concurrent_streams: u32,
        max_header_list_size: u32,
        keepalive_interval: Option<Duration>,
        keepalive_timeout: Duration,
    ) -> Self {
        Http2Server {
            limits: Limits {
                max_concurrent_streams,
                max_header_list: max_header_list_size,
                stream_window: WINDOW,
                connection_window: WINDOW,
            },
            keepalive: keepalive_interval.map(|interval| KeepaliveSettings {
                interval,
                timeout: keepalive_timeout,
            }),
        }
    }

    /// Serves `io`, whose client preface was already read and checked, with `handler`.
    /// This side's SETTINGS go out with the connection's first write.
    pub fn serve<T, H>(&self, io: T, handler: H) -> Connection<T, H>
    where
        T: AsyncRead + AsyncWrite + Unpin,
        H: Handler,
    {
        let shared = Arc::new(state::shared(&self.limits));
        shared.lock().write_settings();
        let max_list = self.limits.max_header_list as usize;
        Connection {
            io,
            shared,
            handler,
            streams: FuturesUnordered::new(),
            decoder: hpack::Decoder::new(HEADER_TABLE_SIZE, max_list),
            reader: FrameReader::new(max_list.saturating_mul(2).max(frame::DEFAULT_MAX_FRAME)),
            writer: Writer::new(),
            keepalive: self.keepalive.map(Keepalive::new),
            got_settings: false,
        }
    }
}

/// What answers the calls of a connection: a function from a request to the future of
/// its response.
pub trait Handler {
    type Body: Body<Data = Bytes>;
    type Call: Future<Output = Response<Self::Body>>;

    fn call(&mut self, request: Request<RecvBody>) -> Self::Call;
}

impl<H, F, B> Handler for H
where
    H: FnMut(Request<RecvBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
{
    type Body = B;
    type Call = F;

    fn call(&mut self, request: Request<RecvBody>) -> F {
        self(request)
    }
}

/// Why a connection ended other than cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("the connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the client broke the HTTP/2 protocol ({0:?}): {1}")]
    Protocol(Reason, &'static str),
    #[error("the client did not answer a keep-alive PING within {0:?}")]
    Unanswered(Duration),
}

/// One served connection: resolves when it closed (after a graceful shutdown, once its
/// last call ended, or when the client closed it), or failed. Dropping it closes the
/// socket and drops its calls.
pub struct Connection<T, H: Handler> {
    io: T,
    shared: Arc<Shared<Server>>,
    handler: H,
    streams: FuturesUnordered<Call<H::Call, H::Body>>,
    decoder: hpack::Decoder,
    reader: FrameReader,
    writer: Writer,
    keepalive: Option<Keepalive>,
    /// The client's first frame must be its SETTINGS.
    got_settings: bool,
}

impl<T, H> Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    /// Sends GOAWAY: no new call is accepted, the ones in flight finish, then the
    /// connection closes.
    pub fn graceful_shutdown(&mut self) {
        let mut state = self.shared.lock();
        state.write_goaway(Reason::NO_ERROR);
        state.wake_driver();
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.writer.poll_write(&mut self.io, &self.shared, cx)
    }

    /// Reads once and handles every whole frame read; ready with `false` at the end of
    /// the client's stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ConnectionError>> {
        if ready!(self.reader.poll_fill(&mut self.io, cx))? == 0 {
            return Poll::Ready(Ok(false));
        }
        let protocol = |(reason, why): ProtocolError| ConnectionError::Protocol(reason, why);
        while let Some(frame) = self.reader.next_frame().map_err(protocol)? {
            match frame {
                ReadFrame::HeaderBlock { id, end, block } => self.header_block(id, end, &block),
                ReadFrame::Other(head, payload) => self.handle(head, payload),
            }
            .map_err(protocol)?;
        }
        Poll::Ready(Ok(true))
    }

    fn handle(&mut self, head: Head, payload: BytesMut) -> Result<(), ProtocolError> {
        check_stream(&head)?;
        if !self.got_settings {
            if head.kind != frame::SETTINGS || head.has(frame::ACK) {
                return Err((Reason::PROTOCOL_ERROR, "its first frame was not SETTINGS"));
            }
            self.got_settings = true;
        }
        let id = head.stream_id;
        match head.kind {
            frame::DATA => {
                let flow_length = payload.len();
                let data = frame::unpadded(&head, payload.freeze())
                    .ok_or((Reason::PROTOCOL_ERROR, "a DATA frame's padding is too long"))?;
                self.shared
                    .lock()
                    .on_data(id, flow_length, data, head.has(frame::END_STREAM))
            }
            frame::RST_STREAM => {
                if payload.len() != 4 {
                    return Err(BAD_LENGTH);
                }
                self.shared
                    .lock()
                    .on_reset(id, Reason::from(frame::word(&payload, 0)))
            }
            frame::SETTINGS => {
                if head.has(frame::ACK) {
                    return if payload.is_empty() {
                        Ok(())
                    } else {
                        Err(BAD_LENGTH)
                    };
                }
                if !payload.len().is_multiple_of(6) {
                    return Err(BAD_LENGTH);
                }
                let mut state = self.shared.lock();
                state.check_control_flood()?;
                state
                    .on_settings(&payload)
                    .map_err(|reason| (reason, "its SETTINGS are invalid"))
            }
            frame::PING => {
                let payload: [u8; 8] = payload[..].try_into().map_err(|_| BAD_LENGTH)?;
                if head.has(frame::ACK) {
                    if let Some(keepalive) = &mut self.keepalive {
                        keepalive.on_ack();
                    }
                    return Ok(());
                }
                let mut state = self.shared.lock();
                state.check_control_flood()?;
                state.write_ping(true, payload);
                Ok(())
            }
            frame::GOAWAY => {
                if payload.len() < 8 {
                    return Err(BAD_LENGTH);
                }
                // The client opens no more streams; the ones it has finish.
                self.shared.lock().go_away();
                Ok(())
            }
            frame::WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err(BAD_LENGTH);
                }
                self.shared
                    .lock()
                    .on_window_update(id, frame::word(&payload, 0) & 0x7fff_ffff)
            }
            frame::PUSH_PROMISE => Err((Reason::PROTOCOL_ERROR, "a client cannot push")),
            // PRIORITY and unknown frames are ignored.
            _ => Ok(()),
        }
    }

    /// Decodes a whole header block (always: the dynamic table must stay in step); a
    /// new request starts its call.
    fn header_block(&mut self, id: u32, end: bool, block: &Bytes) -> Result<(), ProtocolError> {
        if !self.got_settings {
            return Err((Reason::PROTOCOL_ERROR, "its first frame was not SETTINGS"));
        }
        let (decoded, head) = request::decode(&mut self.decoder, block)?;
        let opened = self.shared.lock().on_header_block(id, end, decoded)?;
        if let (Opened::Request(id), Some(head)) = (opened, head) {
            let body = RecvBody::new(StreamRef::opened(&self.shared, id), end);
            let call = self.handler.call(Request::from_parts(head, body));
            let stream = StreamRef::opened(&self.shared, id);
            self.streams.push(Call::Calling {
                call,
                stream: Some(stream),
            });
        }
        Ok(())
    }

    /// Ends the connection: every call still open fails, and the client hears why
    /// (GOAWAY) as far as the socket takes it without waiting.
    fn finish(&mut self, error: Option<ConnectionError>) -> Poll<Result<(), ConnectionError>> {
        let message = match &error {
            Some(e) => e.to_string(),
            None => "the client closed the connection".to_owned(),
        };
        let last = {
            let mut state = self.shared.lock();
            state.fail_streams(&StreamError::connection(message));
            let reason = match &error {
                Some(ConnectionError::Protocol(reason, _)) => Some(*reason),
                Some(ConnectionError::Unanswered(_)) => Some(Reason::NO_ERROR),
                _ => None,
            };
            if let Some(reason) = reason {
                state.write_goaway(reason);
            }
            // After the frame being written, so a GOAWAY starts a frame of its own.
            self.writer.take_rest(&mut state.out)
        };
        if error
            .as_ref()
            .is_some_and(|e| !matches!(e, ConnectionError::Io(_)))
        {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            let mut written = 0;
            while written < last.len() {
                match Pin::new(&mut self.io).poll_write(&mut cx, &last[written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => written += n,
                    _ => break,
                }
            }
        }
        self.streams.clear();
        Poll::Ready(error.map_or(Ok(()), Err))
    }
}

impl<T, H> Future for Connection<T, H>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Handler + Unpin,
    <H::Body as Body>::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = Result<(), ConnectionError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        for _ in 0..READS_PER_POLL {
            // The calls served in this pass take their times from one clock reading.
            let _pass = crate::clock::Pass::begin();
            // The calls first, so what they write goes out in the same pass below.
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if let Err(e) = this.poll_write(cx) {
                return this.finish(Some(e.into()));
            }
            match this.poll_read(cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) => return this.finish(None),
                Poll::Ready(Err(e)) => return this.finish(Some(e)),
                Poll::Pending => {}
            }
            if let Some(keepalive) = &mut this.keepalive {
                match keepalive.poll_due(cx) {
                    Poll::Pending => {}
                    Poll::Ready(Due::Ping) => this.shared.lock().write_ping(false, PING_PAYLOAD),
                    Poll::Ready(Due::Unanswered) => {
                        let timeout = keepalive.settings().timeout;
                        tracing::debug!(
                            ?timeout,
                            "client connection closed: no answer to a keep-alive PING (listener_limits.keepalive_timeout_seconds)"
                        );
                        return this.finish(Some(ConnectionError::Unanswered(timeout)));
                    }
                }
            }
            if let Err(e) = this.poll_write(cx) {
                return this.finish(Some(e.into()));
            }
            let done = this.shared.lock().is_done() && this.streams.is_empty();
            if done && this.writer.is_idle() {
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

// === impl Call ===

pin_project_lite::pin_project! {
    /// One call of a connection, from its request to the end of its answer.
    #[project = CallProj]
    enum Call<F, B> {
        Calling {
            #[pin]
            call: F,
            // Taken over by `Sending`.
            stream: Option<StreamRef<Server>>,
        },
        Sending {
            #[pin]
            body: B,
            stream: StreamRef<Server>,
            // A DATA frame's payload the windows did not take yet, and whether it ends
            // the answer.
            pending: Option<(Bytes, bool)>,
        },
    }
}

impl<F, B> Future for Call<F, B>
where
    F: Future<Output = Response<B>>,
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let (body, stream) = match self.as_mut().project() {
            CallProj::Calling { call, stream } => {
                // The client may cancel while the call runs: drop it then, before it
                // can see the reset itself (its request body fails) and answer, so the
                // call counts as cancelled before its answer.
                let handle = stream.as_ref().expect("a call holds its stream");
                if let Some(error) = handle.shared.lock().poll_failed(handle.id, cx) {
                    tracing::trace!(%error, "call cancelled by the client");
                    return Poll::Ready(());
                }
                let Poll::Ready(response) = call.poll(cx) else {
                    return Poll::Pending;
                };
                let (head, body) = response.into_parts();
                let end = body.is_end_stream();
                let stream = stream.take().expect("a call holds its stream");
                stream.shared.lock().send_head(stream.id, &head, end);
                if end {
                    return Poll::Ready(());
                }
                (body, stream)
            }
            CallProj::Sending {
                body,
                stream,
                pending,
            } => {
                if let Err(e) = ready!(poll_send_body(body, stream, pending, cx)) {
                    tracing::debug!(error = %e, "an answer was not sent to its end");
                }
                return Poll::Ready(());
            }
        };
        // The call's future is dropped here; its body goes on alone.
        self.set(Call::Sending {
            body,
            stream,
            pending: None,
        });
        self.poll(cx)
    }
}

/// A request's DATA frames and trailers; once dropped, what the client still sends is
/// given back at once.
pub type RecvBody = IncomingBody<Server>;

#[cfg(test)]
mod tests;
