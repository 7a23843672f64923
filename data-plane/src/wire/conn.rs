//! What a connection's task and its streams share behind one lock, on either side of the
//! proxy: the frames waiting to be written, every open stream's incoming body as it
//! arrives, both directions' flow-control windows, and the streams' handles and
//! wakers. The connection's task feeds in what it reads; the calls write their frames
//! into `out` themselves (HPACK encoding needs no per-connection state, see
//! [`crate::wire::hpack`]), and the task writes `out` in one go.
//!
//! What differs between a connection to a node and one from a client (opening streams,
//! header blocks, the stream limit, GOAWAY) is the [`Role`]'s: `Conn<Client>` and
//! `Conn<Server>` add their own methods, and keep their own state in [`Conn::role`] and
//! each stream's [`Stream::role`].

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::Reason;
use http::HeaderMap;
use http_body::Frame;

use super::StreamError;
use super::frame::{self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, MAX_WINDOW, StreamMap};
use super::hpack;
use super::reader::ProtocolError;

/// Outgoing DATA waits while this much is queued and not yet taken by the connection's
/// task: with what the task is writing, at most twice this is buffered per connection,
/// whatever windows the peer grants.
pub const MAX_QUEUED_DATA: usize = 256 * 1024;

/// The side of a connection this end plays.
pub trait Role: Debug + Sized {
    /// What this role keeps per stream beside the common part.
    type Stream: Debug;
    /// Whether the calls write from tasks other than the connection's (so each write
    /// must wake it): a node connection's calls do; a client connection's calls run in
    /// its own task, which writes once it has polled them.
    const CALLS_ELSEWHERE: bool;

    /// The reset for a stream whose last handle went while it was open, by whether this
    /// side had ended it.
    fn reset_on_drop(local_end: bool) -> Reason;

    /// The incoming body's reader went before its end.
    fn body_dropped(conn: &mut Conn<Self>, id: u32);
}

/// The connection's shared half.
#[derive(Debug)]
pub struct Shared<R: Role> {
    conn: Mutex<Conn<R>>,
    /// No new stream can start: the peer sent GOAWAY, or the connection failed.
    closed: AtomicBool,
}

impl<R: Role> Shared<R> {
    pub fn new(conn: Conn<R>) -> Shared<R> {
        Shared {
            conn: Mutex::new(conn),
            closed: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Conn<R>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Conn<R: Role> {
    /// Frames for the connection's task to write.
    pub out: Vec<u8>,
    driver: Option<Waker>,
    pub(super) streams: StreamMap<Stream<R::Stream>>,
    /// Streams that count against the stream limit (open at least one way).
    pub(super) active: usize,
    /// Calls waiting for a stream to come free (a node's limit; a client over this
    /// side's limit is refused instead).
    pub(super) openers: Vec<Waker>,
    /// Outgoing bodies waiting for `out` to be taken.
    queue_waiters: Vec<Waker>,
    /// Octets in `out` that the peer's own frames asked for (SETTINGS and PING
    /// acknowledgements, refusals).
    pub control_replies: usize,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    pub(super) peer_initial_window: i64,
    pub(super) peer_max_frame: usize,
    /// Room left in the peer's connection window.
    send_window: i64,
    /// This side's windows: the size each stream and the connection start with, what
    /// the peer may still send on the connection, and what was read but not yet given
    /// back to it.
    stream_window: u32,
    connection_window: u32,
    recv_window: i64,
    unreleased: u32,
    /// No new stream: the connection ends once the open ones are over.
    pub(super) going_away: bool,
    pub role: R,
}

/// One open stream.
#[derive(Debug)]
pub struct Stream<S> {
    pub data: VecDeque<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub remote_end: bool,
    pub local_end: bool,
    pub error: Option<StreamError>,
    /// The incoming body's reader (or a call waiting for its answer's head), and the
    /// outgoing body's writer (which also waits for the stream to fail).
    reader: Option<Waker>,
    writer: Option<Waker>,
    send_window: i64,
    recv_window: i64,
    unreleased: u32,
    active: bool,
    /// Handles to this stream: it is forgotten at 0.
    refs: u32,
    pub role: S,
}

impl<S> Stream<S> {
    pub fn is_closed(&self) -> bool {
        self.error.is_some() || (self.local_end && self.remote_end)
    }

    fn wake(&mut self) {
        self.wake_reader();
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    pub fn wake_reader(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
    }

    pub fn register_reader(&mut self, cx: &Context<'_>) {
        register(&mut self.reader, cx);
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// What became of a DATA frame's flow-control octets.
#[derive(Debug, PartialEq)]
pub enum DataAccepted {
    /// Counted against the stream's window: the stream takes the data.
    Accepted,
    /// No stream takes it (over, reset or never opened): given back at once.
    NoStream,
    /// More than the stream's window: given back at once; the stream is to be reset.
    OverWindow,
}

/// What became of a WINDOW_UPDATE.
#[derive(Debug, PartialEq)]
pub enum WindowUpdate {
    Applied,
    /// For a stream not kept (over, or never opened).
    NoStream,
    /// Invalid for its stream, which is to be reset with this reason.
    ResetStream(Reason),
}

impl<R: Role> Conn<R> {
    /// A connection whose streams start with `stream_window` and which itself takes
    /// `connection_window` from the peer.
    pub fn new(stream_window: u32, connection_window: u32, role: R) -> Conn<R> {
        Conn {
            out: Vec::with_capacity(4096),
            driver: None,
            streams: StreamMap::default(),
            active: 0,
            openers: Vec::new(),
            queue_waiters: Vec::new(),
            control_replies: 0,
            peer_initial_window: i64::from(DEFAULT_WINDOW),
            peer_max_frame: DEFAULT_MAX_FRAME,
            send_window: i64::from(DEFAULT_WINDOW),
            stream_window,
            connection_window,
            recv_window: i64::from(connection_window.max(DEFAULT_WINDOW)),
            unreleased: 0,
            going_away: false,
            role,
        }
    }

    /// This side's stream window, for its SETTINGS.
    pub fn stream_window(&self) -> u32 {
        self.stream_window
    }

    /// The WINDOW_UPDATE that opens the connection window beyond the default, if needed.
    pub fn write_connection_window(&mut self) {
        if let Some(more) = self
            .connection_window
            .checked_sub(DEFAULT_WINDOW)
            .filter(|&m| m > 0)
        {
            frame::write_words(&mut self.out, frame::WINDOW_UPDATE, 0, &[more]);
        }
    }

    pub fn wake_driver(&mut self) {
        if let Some(waker) = self.driver.take() {
            waker.wake();
        }
    }

    pub fn register_driver(&mut self, cx: &Context<'_>) {
        register(&mut self.driver, cx);
    }

    /// The task takes what is queued (leaving `spare`, emptied, in its place).
    pub fn take_out(&mut self, spare: &mut Vec<u8>) {
        std::mem::swap(&mut self.out, spare);
        self.control_replies = 0;
        for waiter in self.queue_waiters.drain(..) {
            waiter.wake();
        }
    }

    pub fn has_streams(&self) -> bool {
        !self.streams.is_empty()
    }

    /// Keeps a new stream, open both ways unless `remote_end` or `local_end`, with
    /// `refs` handles to it.
    pub(super) fn insert(
        &mut self,
        id: u32,
        remote_end: bool,
        local_end: bool,
        refs: u32,
        role: R::Stream,
    ) {
        self.active += 1;
        self.streams.insert(
            id,
            Stream {
                data: VecDeque::new(),
                trailers: None,
                remote_end,
                local_end,
                error: None,
                reader: None,
                writer: None,
                send_window: self.peer_initial_window,
                recv_window: i64::from(self.stream_window),
                unreleased: 0,
                active: true,
                refs,
                role,
            },
        );
    }

    /// The stream of a live handle.
    pub(super) fn stream(&mut self, id: u32) -> &mut Stream<R::Stream> {
        self.streams
            .get_mut(&id)
            .expect("a handle keeps its stream")
    }

    // ---- the incoming body ----

    /// The incoming body's next DATA or its trailers; `None` at its end. What is taken
    /// is given back to the peer's windows.
    pub fn poll_data(
        &mut self,
        id: u32,
        cx: &Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let stream = self.stream(id);
        if let Some(data) = stream.data.pop_front() {
            let taken = data.len() as u32;
            self.release_stream_window(id, taken);
            self.release_connection_window(taken);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = stream.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        // A body the peer ended is whole, whatever happened to the stream since.
        if stream.remote_end {
            return Poll::Ready(None);
        }
        if let Some(error) = &stream.error {
            return Poll::Ready(Some(Err(error.clone())));
        }
        stream.register_reader(cx);
        Poll::Pending
    }

    /// Whether the incoming body was read to its end: the peer ended it and nothing is
    /// left.
    pub fn body_read(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.remote_end && s.data.is_empty() && s.trailers.is_none())
    }

    /// Gives `taken` octets back to the stream's window, in a WINDOW_UPDATE once half of
    /// the window is owed (and only while the peer may still send).
    pub(super) fn release_stream_window(&mut self, id: u32, taken: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.unreleased += taken;
        if stream.remote_end || stream.unreleased < self.stream_window / 2 {
            return;
        }
        let update = std::mem::take(&mut stream.unreleased);
        stream.recv_window += i64::from(update);
        frame::write_words(&mut self.out, frame::WINDOW_UPDATE, id, &[update]);
        self.wake_driver();
    }

    pub(super) fn release_connection_window(&mut self, taken: u32) {
        self.unreleased += taken;
        if self.unreleased >= self.connection_window / 2 {
            let update = std::mem::take(&mut self.unreleased);
            self.recv_window += i64::from(update);
            frame::write_words(&mut self.out, frame::WINDOW_UPDATE, 0, &[update]);
            self.wake_driver();
        }
    }

    /// Counts a DATA frame of `flow_length` octets (padding included) against the
    /// windows; a frame over the connection window is a connection error.
    pub(super) fn accept_data(
        &mut self,
        id: u32,
        flow_length: usize,
    ) -> Result<DataAccepted, ProtocolError> {
        let flow = flow_length as i64;
        if flow > self.recv_window {
            return Err((
                Reason::FLOW_CONTROL_ERROR,
                "it sent more DATA than the connection window allows",
            ));
        }
        self.recv_window -= flow;
        let Some(stream) = self
            .streams
            .get_mut(&id)
            .filter(|s| !s.remote_end && s.error.is_none())
        else {
            self.release_connection_window(flow_length as u32);
            return Ok(DataAccepted::NoStream);
        };
        if flow > stream.recv_window {
            self.release_connection_window(flow_length as u32);
            return Ok(DataAccepted::OverWindow);
        }
        stream.recv_window -= flow;
        Ok(DataAccepted::Accepted)
    }

    /// Gives back at once what the reader never sees (padding, or all of it once nobody
    /// reads).
    pub(super) fn give_back(&mut self, id: u32, octets: u32) {
        if octets > 0 {
            self.release_stream_window(id, octets);
            self.release_connection_window(octets);
        }
    }

    /// A frame of the incoming body on `id` arrived, its last when `end`: the reader
    /// wakes, and a stream over both ways no longer counts against the limit.
    pub(super) fn arrived(&mut self, id: u32, end: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.remote_end |= end;
        stream.wake_reader();
        if end && stream.local_end {
            self.deactivate(id);
        }
    }

    // ---- the outgoing body ----

    /// Whether the stream failed; the writer is woken when it does.
    pub fn poll_failed(&mut self, id: u32, cx: &Context<'_>) -> Option<StreamError> {
        let stream = self.stream(id);
        if stream.error.is_none() {
            register(&mut stream.writer, cx);
        }
        stream.error.clone()
    }

    /// Writes `data` as DATA frames as far as the windows allow (ending the stream with
    /// the last when `end`); pending, with `data` holding what is left, until they allow
    /// the rest.
    pub fn poll_send_data(
        &mut self,
        id: u32,
        cx: &Context<'_>,
        data: &mut Bytes,
        end: bool,
    ) -> Poll<Result<(), StreamError>> {
        let max_frame = self.peer_max_frame;
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if let Some(error) = &stream.error {
            return Poll::Ready(Err(error.clone()));
        }
        loop {
            if self.out.len() >= MAX_QUEUED_DATA && !data.is_empty() {
                if !self.queue_waiters.iter().any(|w| w.will_wake(cx.waker())) {
                    self.queue_waiters.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let room = stream
                .send_window
                .min(self.send_window)
                .min(max_frame as i64);
            if room <= 0 && !data.is_empty() {
                register(&mut stream.writer, cx);
                return Poll::Pending;
            }
            let length = data.len().min(room.max(0) as usize);
            let last = length == data.len();
            let flags = if last && end { frame::END_STREAM } else { 0 };
            frame::write_head(&mut self.out, length, frame::DATA, flags, id);
            self.out.extend_from_slice(&data.split_to(length));
            stream.send_window -= length as i64;
            self.send_window -= length as i64;
            if R::CALLS_ELSEWHERE
                && let Some(waker) = self.driver.take()
            {
                waker.wake();
            }
            if last {
                stream.local_end |= end;
                if end && stream.remote_end {
                    self.deactivate(id);
                }
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes the trailers of the outgoing body, ending its stream.
    pub fn send_trailers(&mut self, id: u32, trailers: &HeaderMap) {
        let max_frame = self.peer_max_frame;
        let stream = self.stream(id);
        if stream.error.is_some() {
            return;
        }
        stream.local_end = true;
        let remote_end = stream.remote_end;
        frame::write_header_block(&mut self.out, id, true, max_frame, |out| {
            for (name, value) in trailers {
                hpack::encode_header(out, name, value);
            }
        });
        if remote_end {
            self.deactivate(id);
        }
        if R::CALLS_ELSEWHERE {
            self.wake_driver();
        }
    }

    // ---- resets, handles and the stream limit ----

    /// Resets the stream (unless it is already over).
    pub fn reset(&mut self, id: u32, reason: Reason) {
        let stream = self.stream(id);
        if stream.is_closed() {
            return;
        }
        stream.error = Some(StreamError::Reset(reason));
        stream.wake();
        frame::write_words(&mut self.out, frame::RST_STREAM, id, &[reason.into()]);
        self.deactivate(id);
        self.wake_driver();
    }

    /// The peer reset the stream; `false` when it is not kept.
    pub(super) fn on_peer_reset(&mut self, id: u32, reason: Reason) -> bool {
        let Some(stream) = self.streams.get_mut(&id) else {
            return false;
        };
        if !stream.is_closed() {
            stream.error = Some(StreamError::Reset(reason));
            stream.wake();
            self.deactivate(id);
        }
        true
    }

    pub fn add_ref(&mut self, id: u32) {
        self.stream(id).refs += 1;
    }

    /// A handle is gone; with the last one the stream is forgotten, reset first if it is
    /// still open ([`Role::reset_on_drop`]), and what it still held of the connection
    /// window is given back.
    pub fn drop_ref(&mut self, id: u32) {
        let stream = self.stream(id);
        stream.refs -= 1;
        if stream.refs > 0 {
            return;
        }
        if !stream.is_closed() {
            let reason = R::reset_on_drop(stream.local_end);
            self.reset(id, reason);
        }
        let stream = self.streams.remove(&id).expect("present above");
        let held: usize = stream.data.iter().map(Bytes::len).sum();
        if held > 0 {
            self.release_connection_window(held as u32);
        }
        if stream.active {
            self.deactivate_counted();
        }
        if self.going_away && self.streams.is_empty() {
            self.wake_driver();
        }
    }

    /// The incoming body's reader went before its end.
    pub fn body_dropped(&mut self, id: u32) {
        R::body_dropped(self, id);
    }

    pub(super) fn deactivate(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id)
            && std::mem::take(&mut stream.active)
        {
            self.deactivate_counted();
        }
    }

    /// A stream no longer counts against the limit: the calls waiting for one all try
    /// again (a waiting call may have registered more than once).
    fn deactivate_counted(&mut self) {
        self.active -= 1;
        self.wake_openers();
    }

    pub(super) fn wake_openers(&mut self) {
        for opener in self.openers.drain(..) {
            opener.wake();
        }
    }

    /// The connection is over: every stream still open fails with `error`.
    pub(super) fn fail_streams(&mut self, error: &StreamError) {
        self.going_away = true;
        let ids: Vec<u32> = self.streams.keys().copied().collect();
        for id in ids {
            let stream = self.streams.get_mut(&id).expect("listed above");
            if !stream.is_closed() {
                stream.error = Some(error.clone());
                stream.wake();
                self.deactivate(id);
            }
        }
    }

    // ---- the peer's SETTINGS, WINDOW_UPDATE and PING ----

    /// Applies a setting both sides handle alike; `false` for one the role handles.
    pub(super) fn apply_setting(&mut self, id: u16, value: u32) -> Result<bool, Reason> {
        match id {
            frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                if i64::from(value) > MAX_WINDOW {
                    return Err(Reason::FLOW_CONTROL_ERROR);
                }
                let delta = i64::from(value) - self.peer_initial_window;
                if self
                    .streams
                    .values()
                    .any(|s| s.send_window + delta > MAX_WINDOW)
                {
                    return Err(Reason::FLOW_CONTROL_ERROR);
                }
                self.peer_initial_window = i64::from(value);
                for stream in self.streams.values_mut() {
                    stream.send_window += delta;
                    if delta > 0
                        && let Some(writer) = stream.writer.take()
                    {
                        writer.wake();
                    }
                }
            }
            frame::SETTINGS_MAX_FRAME_SIZE => {
                if !(DEFAULT_MAX_FRAME as u32..=(1 << 24) - 1).contains(&value) {
                    return Err(Reason::PROTOCOL_ERROR);
                }
                self.peer_max_frame = value as usize;
            }
            frame::SETTINGS_ENABLE_PUSH if value > 1 => return Err(Reason::PROTOCOL_ERROR),
            _ => return Ok(false),
        }
        Ok(true)
    }

    pub(super) fn write_settings_ack(&mut self) {
        frame::write_head(&mut self.out, 0, frame::SETTINGS, frame::ACK, 0);
        self.control_replies += frame::HEAD_LEN;
    }

    /// A WINDOW_UPDATE: errors on the connection's window end the connection.
    pub(super) fn apply_window_update(
        &mut self,
        id: u32,
        increment: u32,
    ) -> Result<WindowUpdate, ProtocolError> {
        let increment = i64::from(increment);
        if id == 0 {
            if increment == 0 {
                return Err((Reason::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
            }
            if self.send_window + increment > MAX_WINDOW {
                return Err((
                    Reason::FLOW_CONTROL_ERROR,
                    "a WINDOW_UPDATE overflows the connection window",
                ));
            }
            self.send_window += increment;
            for stream in self.streams.values_mut() {
                if let Some(writer) = stream.writer.take() {
                    writer.wake();
                }
            }
            return Ok(WindowUpdate::Applied);
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(WindowUpdate::NoStream);
        };
        if increment == 0 {
            return Ok(WindowUpdate::ResetStream(Reason::PROTOCOL_ERROR));
        }
        if stream.send_window + increment > MAX_WINDOW {
            return Ok(WindowUpdate::ResetStream(Reason::FLOW_CONTROL_ERROR));
        }
        stream.send_window += increment;
        if let Some(writer) = stream.writer.take() {
            writer.wake();
        }
        Ok(WindowUpdate::Applied)
    }

    pub fn write_ping(&mut self, ack: bool, payload: [u8; 8]) {
        let flags = if ack { frame::ACK } else { 0 };
        frame::write_head(&mut self.out, 8, frame::PING, flags, 0);
        self.out.extend_from_slice(&payload);
        if ack {
            self.control_replies += frame::HEAD_LEN + 8;
        }
    }
}
