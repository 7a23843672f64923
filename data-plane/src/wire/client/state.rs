//! What the calls on one client connection and the task driving it share, behind one
//! lock: the frames waiting to be written, every open stream's answer as it arrives,
//! and both directions' flow-control windows. Calls write their frames into `out`
//! themselves (HPACK encoding needs no per-connection state, see [`crate::wire::hpack`])
//! and wake the driver, which writes `out` in one go and feeds what it reads back in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::Reason;
use http::{HeaderMap, Response, request};
use http_body::Frame;

use super::StreamError;
use crate::wire::frame::{self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, MAX_WINDOW, StreamMap};
use crate::wire::headers::is_connection_specific;
use crate::wire::hpack::{self, Pseudo};

/// Request DATA waits while this much is queued and not yet taken by the driver: with
/// what the driver is writing, at most twice this is buffered per connection, whatever
/// windows the node grants.
const MAX_QUEUED_DATA: usize = 256 * 1024;

/// The connection's shared half.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
    /// No new stream can start: the node sent GOAWAY, or the connection failed.
    closed: AtomicBool,
}

impl Shared {
    pub fn new(stream_window: u32, connection_window: u32) -> Shared {
        Shared {
            state: Mutex::new(State::new(stream_window, connection_window)),
            closed: AtomicBool::new(false),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// What the node said in its SETTINGS.
#[derive(Debug)]
struct PeerSettings {
    max_concurrent_streams: usize,
    initial_window: i64,
    max_frame: usize,
}

#[derive(Debug)]
pub struct State {
    /// Frames for the driver to write.
    pub out: Vec<u8>,
    driver: Option<Waker>,
    streams: StreamMap<Stream>,
    next_id: u32,
    /// Streams that count against the node's SETTINGS_MAX_CONCURRENT_STREAMS.
    active: usize,
    /// Calls waiting for the node to allow another stream.
    openers: Vec<Waker>,
    /// Request bodies waiting for `out` to be taken by the driver.
    queue_waiters: Vec<Waker>,
    /// Octets of answers to the node's SETTINGS and PINGs in `out`.
    pub control_replies: usize,
    peer: PeerSettings,
    /// Room left in the node's connection window.
    send_window: i64,
    /// This side's windows: the size each stream and the connection start with, what
    /// the node may still send on the connection, and what was read but not yet given
    /// back to it.
    stream_window: u32,
    connection_window: u32,
    recv_window: i64,
    unreleased: u32,
    /// Why no new stream can start.
    ended: Option<StreamError>,
}

#[derive(Debug)]
struct Stream {
    head: Option<(Response<()>, bool)>,
    got_head: bool,
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    remote_end: bool,
    local_end: bool,
    error: Option<StreamError>,
    /// The call or the answer's reader, and the request body's writer.
    reader: Option<Waker>,
    writer: Option<Waker>,
    send_window: i64,
    recv_window: i64,
    unreleased: u32,
    active: bool,
    /// Handles ([`super::StreamRef`]) to this stream: it is forgotten at 0.
    refs: u32,
}

impl Stream {
    fn is_closed(&self) -> bool {
        self.error.is_some() || (self.local_end && self.remote_end)
    }

    fn wake(&mut self) {
        if let Some(waker) = self.reader.take() {
            waker.wake();
        }
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl State {
    fn new(stream_window: u32, connection_window: u32) -> State {
        State {
            out: Vec::with_capacity(4096),
            driver: None,
            streams: StreamMap::default(),
            next_id: 1,
            active: 0,
            openers: Vec::new(),
            queue_waiters: Vec::new(),
            control_replies: 0,
            peer: PeerSettings {
                max_concurrent_streams: usize::MAX,
                initial_window: i64::from(DEFAULT_WINDOW),
                max_frame: DEFAULT_MAX_FRAME,
            },
            send_window: i64::from(DEFAULT_WINDOW),
            stream_window,
            connection_window,
            recv_window: i64::from(connection_window.max(DEFAULT_WINDOW)),
            unreleased: 0,
            ended: None,
        }
    }

    /// The connection preface: the magic, this side's SETTINGS and the connection
    /// window beyond the default.
    pub fn write_preface(&mut self, max_header_list: u32) {
        self.out.extend_from_slice(frame::PREFACE);
        frame::write_settings(
            &mut self.out,
            &[
                (frame::SETTINGS_ENABLE_PUSH, 0),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, self.stream_window),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list),
            ],
        );
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

    /// The driver takes what is queued (leaving `spare`, emptied, in its place).
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

    // ---- the calls' side ----

    /// Opens a stream for `request` and writes its HEADERS (ending the stream when
    /// `end`), or waits for the node to allow another stream.
    pub fn poll_open(
        &mut self,
        cx: &Context<'_>,
        request: &request::Parts,
        end: bool,
    ) -> Poll<Result<u32, StreamError>> {
        if let Some(error) = &self.ended {
            return Poll::Ready(Err(error.clone()));
        }
        if self.active >= self.peer.max_concurrent_streams {
            if !self.openers.iter().any(|w| w.will_wake(cx.waker())) {
                self.openers.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let id = self.next_id;
        if id > frame::MAX_WINDOW as u32 {
            return Poll::Ready(Err(StreamError::connection(
                "the connection ran out of stream ids",
            )));
        }
        self.next_id += 2;
        self.write_headers(id, end, |out| encode_request(out, request));
        self.active += 1;
        self.streams.insert(
            id,
            Stream {
                head: None,
                got_head: false,
                data: VecDeque::new(),
                trailers: None,
                remote_end: false,
                local_end: end,
                error: None,
                reader: None,
                writer: None,
                send_window: self.peer.initial_window,
                recv_window: i64::from(self.stream_window),
                unreleased: 0,
                active: true,
                refs: 1,
            },
        );
        self.wake_driver();
        Poll::Ready(Ok(id))
    }

    /// Writes a header block as HEADERS (and CONTINUATION frames past the node's frame
    /// size), encoding it in place.
    fn write_headers(&mut self, id: u32, end: bool, encode: impl FnOnce(&mut Vec<u8>)) {
        frame::write_header_block(&mut self.out, id, end, self.peer.max_frame, encode);
    }

    /// The answer's head, with whether the answer ends with it.
    pub fn poll_head(
        &mut self,
        id: u32,
        cx: &Context<'_>,
    ) -> Poll<Result<(Response<()>, bool), StreamError>> {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if let Some(head) = stream.head.take() {
            return Poll::Ready(Ok(head));
        }
        if let Some(error) = &stream.error {
            return Poll::Ready(Err(error.clone()));
        }
        register(&mut stream.reader, cx);
        Poll::Pending
    }

    /// The answer's next DATA or its trailers; `None` at its end. What is taken is given
    /// back to the node's windows.
    pub fn poll_data(
        &mut self,
        id: u32,
        cx: &Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if let Some(data) = stream.data.pop_front() {
            let taken = data.len() as u32;
            self.release_stream_window(id, taken);
            self.release_connection_window(taken);
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = stream.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        // An answer the node ended is whole, whatever happened to the stream since.
        if stream.remote_end {
            return Poll::Ready(None);
        }
        if let Some(error) = &stream.error {
            return Poll::Ready(Some(Err(error.clone())));
        }
        register(&mut stream.reader, cx);
        Poll::Pending
    }

    /// Whether the answer was read to its end: the node ended it and nothing is left.
    pub fn answer_read(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.remote_end && s.data.is_empty() && s.trailers.is_none())
    }

    /// Gives `taken` octets back to the stream's window, in a WINDOW_UPDATE once half of
    /// the window is owed (and only while the node may still send).
    fn release_stream_window(&mut self, id: u32, taken: u32) {
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

    fn release_connection_window(&mut self, taken: u32) {
        self.unreleased += taken;
        if self.unreleased >= self.connection_window / 2 {
            let update = std::mem::take(&mut self.unreleased);
            self.recv_window += i64::from(update);
            frame::write_words(&mut self.out, frame::WINDOW_UPDATE, 0, &[update]);
            self.wake_driver();
        }
    }

    /// Whether the stream failed; the writer is woken when it does.
    pub fn poll_failed(&mut self, id: u32, cx: &Context<'_>) -> Option<StreamError> {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
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
        let max_frame = self.peer.max_frame;
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
            if let Some(waker) = self.driver.take() {
                waker.wake();
            }
            if last {
                stream.local_end |= end;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes the request's trailers, ending its stream.
    pub fn send_trailers(&mut self, id: u32, trailers: &HeaderMap) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if stream.error.is_some() {
            return;
        }
        stream.local_end = true;
        self.write_headers(id, true, |out| {
            for (name, value) in trailers {
                hpack::encode_header(out, name, value);
            }
        });
        self.wake_driver();
    }

    /// Resets the stream (unless it is already over).
    pub fn reset(&mut self, id: u32, reason: Reason) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if stream.is_closed() {
            return;
        }
        stream.error = Some(StreamError::Reset(reason));
        stream.wake();
        frame::write_words(&mut self.out, frame::RST_STREAM, id, &[reason.into()]);
        self.deactivate(id);
        self.wake_driver();
    }

    pub fn add_ref(&mut self, id: u32) {
        self.streams
            .get_mut(&id)
            .expect("a handle keeps its stream")
            .refs += 1;
    }

    /// A handle is gone; with the last one the stream is forgotten, reset first if the
    /// node may still send on it, and what it still held of the connection window is
    /// given back.
    pub fn drop_ref(&mut self, id: u32) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        stream.refs -= 1;
        if stream.refs > 0 {
            return;
        }
        if !stream.is_closed() {
            self.reset(id, Reason::CANCEL);
        }
        let stream = self.streams.remove(&id).expect("present above");
        let held: usize = stream.data.iter().map(Bytes::len).sum();
        if held > 0 {
            self.release_connection_window(held as u32);
        }
        if stream.active {
            self.deactivate_counted();
        }
        if self.ended.is_some() && self.streams.is_empty() {
            self.wake_driver();
        }
    }

    fn deactivate(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id)
            && std::mem::take(&mut stream.active)
        {
            self.deactivate_counted();
        }
    }

    /// A stream no longer counts against the node's limit: the calls waiting for one
    /// all try again (a waiting call may have registered more than once).
    fn deactivate_counted(&mut self) {
        self.active -= 1;
        for opener in self.openers.drain(..) {
            opener.wake();
        }
    }

    // ---- the driver's side ----

    /// The head or the trailers of an answer; `Err` for a stream error to reset with.
    pub fn on_header_block(
        &mut self,
        id: u32,
        end: bool,
        block: Result<HeaderBlock, Reason>,
    ) -> Result<(), Reason> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.check_was_opened(id);
        };
        if stream.remote_end || stream.error.is_some() {
            return Ok(());
        }
        let block = block.and_then(|block| match block {
            HeaderBlock::Head(head) if !stream.got_head => Ok(Some(head)),
            HeaderBlock::Trailers(trailers) if stream.got_head && end => {
                stream.trailers = Some(trailers);
                Ok(None)
            }
            HeaderBlock::Informational if !stream.got_head && !end => Ok(None),
            _ => Err(Reason::PROTOCOL_ERROR),
        });
        match block {
            Ok(Some(head)) => {
                stream.got_head = true;
                stream.head = Some((head, end));
            }
            Ok(None) => {}
            Err(reason) => {
                self.reset(id, reason);
                return Ok(());
            }
        }
        self.arrived(id, end);
        Ok(())
    }

    /// A frame of the node's answer on `id` arrived, its last when `end`: the reader wakes,
    /// and a stream over both ways no longer counts against the node's limit.
    fn arrived(&mut self, id: u32, end: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.remote_end |= end;
        let over = end && stream.local_end;
        stream.wake();
        if over {
            self.deactivate(id);
        }
    }

    /// Frames on a stream this side never opened (even ids are the server's, which it may
    /// only open by PUSH_PROMISE, disabled) are a connection error.
    fn check_was_opened(&self, id: u32) -> Result<(), Reason> {
        if id >= self.next_id || id.is_multiple_of(2) {
            Err(Reason::PROTOCOL_ERROR)
        } else {
            Ok(())
        }
    }

    /// A DATA frame of `flow_length` octets (padding included) carrying `data`.
    pub fn on_data(
        &mut self,
        id: u32,
        flow_length: usize,
        data: Bytes,
        end: bool,
    ) -> Result<(), Reason> {
        let flow_length = flow_length as i64;
        if flow_length > self.recv_window {
            return Err(Reason::FLOW_CONTROL_ERROR);
        }
        self.recv_window -= flow_length;
        let padding = (flow_length as usize - data.len()) as u32;
        let Some(stream) = self
            .streams
            .get_mut(&id)
            .filter(|s| !s.remote_end && s.error.is_none())
        else {
            self.check_was_opened(id)?;
            // A stream this side reset or dropped: its data is given back at once.
            self.release_connection_window(flow_length as u32);
            return Ok(());
        };
        if !stream.got_head || flow_length > stream.recv_window {
            let reason = if stream.got_head {
                Reason::FLOW_CONTROL_ERROR
            } else {
                Reason::PROTOCOL_ERROR
            };
            self.release_connection_window(flow_length as u32);
            self.reset(id, reason);
            return Ok(());
        }
        stream.recv_window -= flow_length;
        if !data.is_empty() {
            stream.data.push_back(data);
        }
        self.arrived(id, end);
        // Padding is given back at once: the reader never sees it.
        if padding > 0 {
            self.release_stream_window(id, padding);
            self.release_connection_window(padding);
        }
        Ok(())
    }

    pub fn on_reset(&mut self, id: u32, reason: Reason) -> Result<(), Reason> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.check_was_opened(id);
        };
        if !stream.is_closed() {
            stream.error = Some(StreamError::Reset(reason));
            stream.wake();
            self.deactivate(id);
        }
        Ok(())
    }

    /// The node's SETTINGS: applied, then acknowledged.
    pub fn on_settings(&mut self, settings: &[u8]) -> Result<(), Reason> {
        for setting in settings.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = frame::word(setting, 2);
            match id {
                frame::SETTINGS_MAX_CONCURRENT_STREAMS => {
                    self.peer.max_concurrent_streams = value as usize;
                    for opener in self.openers.drain(..) {
                        opener.wake();
                    }
                }
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(Reason::FLOW_CONTROL_ERROR);
                    }
                    let delta = i64::from(value) - self.peer.initial_window;
                    if self
                        .streams
                        .values()
                        .any(|s| s.send_window + delta > MAX_WINDOW)
                    {
                        return Err(Reason::FLOW_CONTROL_ERROR);
                    }
                    self.peer.initial_window = i64::from(value);
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if delta > 0 {
                            stream.wake();
                        }
                    }
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME as u32..=(1 << 24) - 1).contains(&value) {
                        return Err(Reason::PROTOCOL_ERROR);
                    }
                    self.peer.max_frame = value as usize;
                }
                frame::SETTINGS_ENABLE_PUSH if value > 1 => return Err(Reason::PROTOCOL_ERROR),
                // The encoder never uses the node's table; the list size is the node's
                // to enforce.
                frame::SETTINGS_HEADER_TABLE_SIZE | frame::SETTINGS_MAX_HEADER_LIST_SIZE => {}
                _ => {}
            }
        }
        frame::write_head(&mut self.out, 0, frame::SETTINGS, frame::ACK, 0);
        self.control_replies += frame::HEAD_LEN;
        Ok(())
    }

    pub fn on_window_update(&mut self, id: u32, increment: u32) -> Result<(), Reason> {
        let increment = i64::from(increment);
        if id == 0 {
            if increment == 0 {
                return Err(Reason::PROTOCOL_ERROR);
            }
            if self.send_window + increment > MAX_WINDOW {
                return Err(Reason::FLOW_CONTROL_ERROR);
            }
            self.send_window += increment;
            for stream in self.streams.values_mut() {
                if let Some(writer) = stream.writer.take() {
                    writer.wake();
                }
            }
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        if increment == 0 || stream.send_window + increment > MAX_WINDOW {
            let reason = if increment == 0 {
                Reason::PROTOCOL_ERROR
            } else {
                Reason::FLOW_CONTROL_ERROR
            };
            self.reset(id, reason);
            return Ok(());
        }
        stream.send_window += increment;
        if let Some(writer) = stream.writer.take() {
            writer.wake();
        }
        Ok(())
    }

    /// The node is going away: streams it did not take are refused (the node never
    /// processed them), and no new stream starts.
    pub fn on_goaway(&mut self, last_id: u32, shared: &Shared) {
        self.end(
            StreamError::connection("the node closed the connection (GOAWAY)"),
            shared,
        );
        let refused: Vec<u32> = self
            .streams
            .keys()
            .copied()
            .filter(|&id| id > last_id)
            .collect();
        for id in refused {
            // Listed from the open streams: never an error.
            let _ = self.on_reset(id, Reason::REFUSED_STREAM);
        }
    }

    /// No new stream starts; `error` says why.
    pub fn end(&mut self, error: StreamError, shared: &Shared) {
        shared.closed.store(true, Ordering::Relaxed);
        if self.ended.is_none() {
            self.ended = Some(error);
        }
        for opener in self.openers.drain(..) {
            opener.wake();
        }
    }

    /// The connection is over: every stream still open fails with `error`.
    pub fn fail_all(&mut self, error: StreamError, shared: &Shared) {
        self.end(error.clone(), shared);
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

    pub fn write_ping(&mut self, ack: bool, payload: [u8; 8]) {
        frame::write_head(
            &mut self.out,
            8,
            frame::PING,
            if ack { frame::ACK } else { 0 },
            0,
        );
        self.out.extend_from_slice(&payload);
        if ack {
            self.control_replies += frame::HEAD_LEN + 8;
        }
    }

    pub fn write_goaway(&mut self, reason: Reason) {
        frame::write_words(&mut self.out, frame::GOAWAY, 0, &[0, reason.into()]);
    }
}

/// A decoded header block, sorted by what it can be.
#[derive(Debug)]
pub enum HeaderBlock {
    /// An answer's head (`:status` 200 and up).
    Head(Response<()>),
    /// A 1xx head, to be skipped.
    Informational,
    /// No pseudo-header: trailers.
    Trailers(HeaderMap),
}

fn encode_request(out: &mut Vec<u8>, request: &request::Parts) {
    let uri = &request.uri;
    hpack::encode_pseudo(out, Pseudo::Method, request.method.as_str().as_bytes());
    hpack::encode_pseudo(
        out,
        Pseudo::Scheme,
        uri.scheme_str().unwrap_or("http").as_bytes(),
    );
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    hpack::encode_pseudo(out, Pseudo::Path, path.as_bytes());
    if let Some(authority) = uri.authority() {
        hpack::encode_pseudo(out, Pseudo::Authority, authority.as_str().as_bytes());
    }
    for (name, value) in &request.headers {
        if is_connection_specific(name, value) {
            continue;
        }
        hpack::encode_header(out, name, value);
    }
}
