//! What a client connection's task and its streams share, behind one lock: the frames
//! waiting to be written, every open stream's request body as it arrives, both
//! directions' flow-control windows and the stream limit. The connection's task feeds in
//! what it reads ([`State::on_data`] and the other `on_` methods); the calls write their
//! answers into `out` themselves, and the task writes `out` in one go.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use h2::Reason;
use http::{HeaderMap, response};
use http_body::Frame;

use crate::wire::StreamError;
use crate::wire::frame::{self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, MAX_WINDOW, StreamMap};
use crate::wire::headers::is_connection_specific;
use crate::wire::hpack::{self, Pseudo};
use crate::wire::reader::ProtocolError;

/// Answer DATA waits while this much is queued and not yet taken by the connection's
/// task: with what the task is writing, at most twice this is buffered per connection,
/// whatever windows the client grants.
const MAX_QUEUED_DATA: usize = 256 * 1024;
/// A client whose requests this side reset for breaking the protocol this many times
/// is dropped (ENHANCE_YOUR_CALM), as h2 did.
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// A client whose SETTINGS, PINGs and refused streams, each answered, find this much of
/// the answers still unwritten sends them faster than it reads the answers: it is
/// dropped rather than buffered for.
const MAX_UNWRITTEN_FOR_CONTROL: usize = 1024 * 1024;
/// New streams are refused while this much waits to be written: answer DATA alone stops
/// at [`MAX_QUEUED_DATA`], so the rest is answers' HEADERS (an empty answer has no DATA
/// to wait with) of a client that opens streams and does not read what comes back.
const MAX_QUEUED_FOR_NEW_STREAMS: usize = 2 * MAX_QUEUED_DATA;

/// The connection's shared half.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub fn new(limits: &Limits) -> Shared {
        Shared {
            state: Mutex::new(State::new(limits)),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What this side allows a client (its SETTINGS).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list: u32,
    pub stream_window: u32,
    pub connection_window: u32,
}

/// What the client said in its SETTINGS.
#[derive(Debug)]
struct PeerSettings {
    initial_window: i64,
    max_frame: usize,
    /// A header table size the client lowered to, to confirm at the start of the next
    /// header block.
    table_size_update: Option<usize>,
}

#[derive(Debug)]
pub struct State {
    /// Frames for the connection's task to write.
    pub out: Vec<u8>,
    driver: Option<Waker>,
    streams: StreamMap<Stream>,
    /// The highest stream id the client opened.
    last_id: u32,
    /// Streams open at least one way: they count against the stream limit.
    active: usize,
    limits: Limits,
    peer: PeerSettings,
    /// Room left in the client's connection window.
    send_window: i64,
    /// What the client may still send on the connection, and what was read but not yet
    /// given back to it.
    recv_window: i64,
    unreleased: u32,
    /// Answer bodies waiting for `out` to be taken.
    queue_waiters: Vec<Waker>,
    /// Octets in `out` that the client's own frames asked for (SETTINGS and PING
    /// acknowledgements, refusals): a client that provokes them faster than it reads is
    /// dropped rather than buffered for.
    pub control_replies: usize,
    local_error_resets: usize,
    /// GOAWAY went out (or came in): no new stream is taken.
    going_away: bool,
}

#[derive(Debug)]
struct Stream {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    remote_end: bool,
    local_end: bool,
    error: Option<StreamError>,
    /// The request body's reader, and the answer's writer (which also waits for a reset).
    reader: Option<Waker>,
    writer: Option<Waker>,
    /// The request body is still read: without a reader, what arrives is given back.
    reading: bool,
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

/// What a new header block from the client turned out to be.
#[derive(Debug)]
pub enum Opened {
    /// A new request on this stream.
    Request(u32),
    /// Trailers, a refused or malformed request, or a stream already gone: nothing more
    /// to do.
    Handled,
}

impl State {
    fn new(limits: &Limits) -> State {
        State {
            out: Vec::with_capacity(4096),
            driver: None,
            streams: StreamMap::default(),
            last_id: 0,
            active: 0,
            limits: *limits,
            peer: PeerSettings {
                initial_window: i64::from(DEFAULT_WINDOW),
                max_frame: DEFAULT_MAX_FRAME,
                table_size_update: None,
            },
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: i64::from(limits.connection_window.max(DEFAULT_WINDOW)),
            unreleased: 0,
            queue_waiters: Vec::new(),
            control_replies: 0,
            local_error_resets: 0,
            going_away: false,
        }
    }

    /// This side's SETTINGS and the connection window beyond the default.
    pub fn write_settings(&mut self) {
        frame::write_settings(
            &mut self.out,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    self.limits.max_concurrent_streams,
                ),
                (
                    frame::SETTINGS_INITIAL_WINDOW_SIZE,
                    self.limits.stream_window,
                ),
                (frame::SETTINGS_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME as u32),
                (
                    frame::SETTINGS_MAX_HEADER_LIST_SIZE,
                    self.limits.max_header_list,
                ),
            ],
        );
        if let Some(more) = self
            .limits
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

    /// Whether the connection is going away and every stream is over.
    pub fn is_done(&self) -> bool {
        self.going_away && self.streams.is_empty() && self.out.is_empty()
    }

    // ---- the connection's side: what the client sent ----

    /// A whole header block on stream `id`: a request, or trailers. `request` says what
    /// decoding it found (the block is always decoded first, to keep HPACK in step).
    pub fn on_header_block(
        &mut self,
        id: u32,
        end: bool,
        block: Decoded,
    ) -> Result<Opened, ProtocolError> {
        if let Some(stream) = self.streams.get_mut(&id) {
            if stream.remote_end || stream.error.is_some() {
                return Ok(Opened::Handled);
            }
            match block {
                Decoded::Trailers(trailers) if end => {
                    stream.trailers = Some(trailers);
                    self.arrived(id, true);
                }
                _ => self.reset_for_error(id, Reason::PROTOCOL_ERROR)?,
            }
            return Ok(Opened::Handled);
        }
        if id.is_multiple_of(2) {
            return Err((
                Reason::PROTOCOL_ERROR,
                "a client opened an even-numbered stream",
            ));
        }
        // A stream already over (this side may have reset it): ignored.
        if id <= self.last_id {
            return Ok(Opened::Handled);
        }
        self.last_id = id;
        if self.going_away {
            return Ok(Opened::Handled);
        }
        match block {
            Decoded::Request => {}
            Decoded::TooLarge => {
                // As h2 did: 431, then REFUSED_STREAM for whatever DATA follows.
                let before = self.out.len();
                let max_frame = self.peer.max_frame;
                frame::write_header_block(&mut self.out, id, true, max_frame, |out| {
                    hpack::encode_pseudo(out, Pseudo::Status, b"431");
                });
                frame::write_words(
                    &mut self.out,
                    frame::RST_STREAM,
                    id,
                    &[Reason::REFUSED_STREAM.into()],
                );
                self.control_replies += self.out.len() - before;
                self.check_control_flood()?;
                return Ok(Opened::Handled);
            }
            Decoded::Trailers(_) | Decoded::Malformed => {
                self.write_reset(id, Reason::PROTOCOL_ERROR);
                self.count_error_reset()?;
                self.check_control_flood()?;
                return Ok(Opened::Handled);
            }
        }
        if self.active >= self.limits.max_concurrent_streams as usize
            || self.out.len() >= MAX_QUEUED_FOR_NEW_STREAMS
        {
            self.write_reset(id, Reason::REFUSED_STREAM);
            self.check_control_flood()?;
            return Ok(Opened::Handled);
        }
        self.active += 1;
        self.streams.insert(
            id,
            Stream {
                data: VecDeque::new(),
                trailers: None,
                remote_end: end,
                local_end: false,
                error: None,
                reader: None,
                writer: None,
                reading: true,
                send_window: self.peer.initial_window,
                recv_window: i64::from(self.limits.stream_window),
                unreleased: 0,
                active: true,
                // The request body and the call.
                refs: 2,
            },
        );
        Ok(Opened::Request(id))
    }

    /// A frame for a stream no longer kept is ignored when the stream was opened (it is
    /// over, or this side reset it); on a stream never opened it is a connection error.
    fn check_opened(&self, id: u32, what: &'static str) -> Result<(), ProtocolError> {
        if id > self.last_id {
            return Err((Reason::PROTOCOL_ERROR, what));
        }
        Ok(())
    }

    /// A client that provokes answers (SETTINGS and PING acknowledgements, refusals)
    /// faster than it reads them is dropped.
    pub fn check_control_flood(&self) -> Result<(), ProtocolError> {
        if self.control_replies > MAX_UNWRITTEN_FOR_CONTROL {
            return Err((
                Reason::ENHANCE_YOUR_CALM,
                "it sends SETTINGS, PINGs or refused streams faster than it reads the answers",
            ));
        }
        Ok(())
    }

    /// A RST_STREAM this side sends because of the client, counted as a refusal.
    fn write_reset(&mut self, id: u32, reason: Reason) {
        frame::write_words(&mut self.out, frame::RST_STREAM, id, &[reason.into()]);
        self.control_replies += frame::HEAD_LEN + 4;
    }

    fn count_error_reset(&mut self) -> Result<(), ProtocolError> {
        self.local_error_resets += 1;
        if self.local_error_resets > MAX_LOCAL_ERROR_RESETS {
            return Err((
                Reason::ENHANCE_YOUR_CALM,
                "too many of its streams broke the protocol",
            ));
        }
        Ok(())
    }

    /// Resets an open stream that broke the protocol.
    fn reset_for_error(&mut self, id: u32, reason: Reason) -> Result<(), ProtocolError> {
        self.reset(id, reason);
        self.count_error_reset()
    }

    /// A frame of the request on `id` arrived, its last when `end`: the reader wakes,
    /// and a stream over both ways no longer counts against the limit.
    fn arrived(&mut self, id: u32, end: bool) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.remote_end |= end;
        if let Some(waker) = stream.reader.take() {
            waker.wake();
        }
        if end && stream.local_end {
            self.deactivate(id);
        }
    }

    /// A DATA frame of `flow_length` octets (padding included) carrying `data`.
    pub fn on_data(
        &mut self,
        id: u32,
        flow_length: usize,
        data: Bytes,
        end: bool,
    ) -> Result<(), ProtocolError> {
        let flow = flow_length as i64;
        if flow > self.recv_window {
            return Err((
                Reason::FLOW_CONTROL_ERROR,
                "it sent more DATA than the connection window allows",
            ));
        }
        self.recv_window -= flow;
        let padding = (flow_length - data.len()) as u32;
        let Some(stream) = self
            .streams
            .get_mut(&id)
            .filter(|s| !s.remote_end && s.error.is_none())
        else {
            self.check_opened(id, "DATA on a stream never opened")?;
            // A stream over or reset: its data is given back at once.
            self.release_connection_window(flow_length as u32);
            return Ok(());
        };
        if flow > stream.recv_window {
            self.release_connection_window(flow_length as u32);
            return self.reset_for_error(id, Reason::FLOW_CONTROL_ERROR);
        }
        stream.recv_window -= flow;
        let reading = stream.reading;
        if reading && !data.is_empty() {
            stream.data.push_back(data);
        }
        self.arrived(id, end);
        // Padding, and all of it once nobody reads, is given back at once.
        let given_back = if reading { padding } else { flow_length as u32 };
        if given_back > 0 {
            self.release_stream_window(id, given_back);
            self.release_connection_window(given_back);
        }
        Ok(())
    }

    pub fn on_reset(&mut self, id: u32, reason: Reason) -> Result<(), ProtocolError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.check_opened(id, "RST_STREAM on a stream never opened");
        };
        if !stream.is_closed() {
            stream.error = Some(StreamError::Reset(reason));
            stream.wake();
            self.deactivate(id);
        }
        Ok(())
    }

    /// The client's SETTINGS: applied, then acknowledged.
    pub fn on_settings(&mut self, settings: &[u8]) -> Result<(), Reason> {
        for setting in settings.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = frame::word(setting, 2);
            match id {
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
                    self.peer.max_frame = value as usize;
                }
                frame::SETTINGS_ENABLE_PUSH if value > 1 => return Err(Reason::PROTOCOL_ERROR),
                // The encoder's table is always empty; a client that lowers it below the
                // default hears that confirmed.
                frame::SETTINGS_HEADER_TABLE_SIZE if (value as usize) < 4096 => {
                    self.peer.table_size_update = Some(value as usize);
                }
                // This side never pushes, nor sends header lists a client could refuse.
                _ => {}
            }
        }
        frame::write_head(&mut self.out, 0, frame::SETTINGS, frame::ACK, 0);
        self.control_replies += frame::HEAD_LEN;
        Ok(())
    }

    pub fn on_window_update(&mut self, id: u32, increment: u32) -> Result<(), ProtocolError> {
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
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.check_opened(id, "WINDOW_UPDATE on a stream never opened");
        };
        if increment == 0 {
            return self.reset_for_error(id, Reason::PROTOCOL_ERROR);
        }
        if stream.send_window + increment > MAX_WINDOW {
            return self.reset_for_error(id, Reason::FLOW_CONTROL_ERROR);
        }
        stream.send_window += increment;
        if let Some(writer) = stream.writer.take() {
            writer.wake();
        }
        Ok(())
    }

    /// No new stream is taken; the connection ends once the open ones are over.
    pub fn go_away(&mut self) {
        self.going_away = true;
    }

    /// Sends GOAWAY (once) with the last stream taken: no new stream is taken.
    pub fn write_goaway(&mut self, reason: Reason) {
        if !std::mem::replace(&mut self.going_away, true) || reason != Reason::NO_ERROR {
            let last_id = self.last_id;
            frame::write_words(&mut self.out, frame::GOAWAY, 0, &[last_id, reason.into()]);
        }
    }

    /// The connection is over: every stream still open fails with `error`.
    pub fn fail_all(&mut self, error: &StreamError) {
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

    pub fn write_ping(&mut self, ack: bool, payload: [u8; 8]) {
        let flags = if ack { frame::ACK } else { 0 };
        frame::write_head(&mut self.out, 8, frame::PING, flags, 0);
        self.out.extend_from_slice(&payload);
        if ack {
            self.control_replies += frame::HEAD_LEN + 8;
        }
    }

    // ---- the streams' side ----

    /// Whether the stream failed (the client reset it, or the connection ended); the
    /// writer is woken when it does.
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

    /// Writes the answer's head (ending the stream when `end`), with a `date` when it has
    /// none (a node's answer has its own). Written by the connection's own task: the
    /// driver need not be woken.
    pub fn send_head(&mut self, id: u32, head: &response::Parts, end: bool) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if stream.error.is_some() {
            return;
        }
        stream.local_end = end;
        let table_size = self.peer.table_size_update.take();
        frame::write_header_block(&mut self.out, id, end, self.peer.max_frame, |out| {
            if let Some(size) = table_size {
                hpack::encode_table_size(out, size);
            }
            hpack::encode_pseudo(out, Pseudo::Status, head.status.as_str().as_bytes());
            for (name, value) in &head.headers {
                if !is_connection_specific(name, value) {
                    hpack::encode_header(out, name, value);
                }
            }
            if !head.headers.contains_key(http::header::DATE) {
                hpack::encode_header(out, &http::header::DATE, &super::date::now());
            }
        });
        if end && self.streams[&id].remote_end {
            self.deactivate(id);
        }
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
            if last {
                stream.local_end |= end;
                if end && stream.remote_end {
                    self.deactivate(id);
                }
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Writes the answer's trailers, ending its stream.
    pub fn send_trailers(&mut self, id: u32, trailers: &HeaderMap) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        if stream.error.is_some() {
            return;
        }
        stream.local_end = true;
        let remote_end = stream.remote_end;
        frame::write_header_block(&mut self.out, id, true, self.peer.max_frame, |out| {
            for (name, value) in trailers {
                hpack::encode_header(out, name, value);
            }
        });
        if remote_end {
            self.deactivate(id);
        }
    }

    /// The request's next DATA or its trailers; `None` at its end. What is taken is
    /// given back to the client's windows.
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
        // A request the client ended is whole, whatever happened to the stream since.
        if stream.remote_end {
            return Poll::Ready(None);
        }
        if let Some(error) = &stream.error {
            return Poll::Ready(Some(Err(error.clone())));
        }
        register(&mut stream.reader, cx);
        Poll::Pending
    }

    /// Whether the request was read to its end.
    pub fn request_read(&self, id: u32) -> bool {
        self.streams
            .get(&id)
            .is_some_and(|s| s.remote_end && s.data.is_empty() && s.trailers.is_none())
    }

    /// Gives `taken` octets back to the stream's window, in a WINDOW_UPDATE once half of
    /// the window is owed (and only while the client may still send).
    fn release_stream_window(&mut self, id: u32, taken: u32) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        stream.unreleased += taken;
        if stream.remote_end || stream.unreleased < self.limits.stream_window / 2 {
            return;
        }
        let update = std::mem::take(&mut stream.unreleased);
        stream.recv_window += i64::from(update);
        frame::write_words(&mut self.out, frame::WINDOW_UPDATE, id, &[update]);
        self.wake_driver();
    }

    fn release_connection_window(&mut self, taken: u32) {
        self.unreleased += taken;
        if self.unreleased >= self.limits.connection_window / 2 {
            let update = std::mem::take(&mut self.unreleased);
            self.recv_window += i64::from(update);
            frame::write_words(&mut self.out, frame::WINDOW_UPDATE, 0, &[update]);
            self.wake_driver();
        }
    }

    /// The request body's reader is gone: what it left and what still comes is given
    /// back at once.
    pub fn stop_reading(&mut self, id: u32) {
        let stream = self
            .streams
            .get_mut(&id)
            .expect("a handle keeps its stream");
        stream.reading = false;
        stream.trailers = None;
        let held: usize = stream.data.drain(..).map(|d| d.len()).sum();
        if held > 0 {
            self.release_stream_window(id, held as u32);
            self.release_connection_window(held as u32);
        }
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

    /// A handle is gone; with the last one the stream is forgotten, reset first if it is
    /// still open (NO_ERROR when the answer is whole and only the request goes on), and
    /// what it still held of the connection window is given back.
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
            let reason = if stream.local_end {
                Reason::NO_ERROR
            } else {
                Reason::CANCEL
            };
            self.reset(id, reason);
        }
        let stream = self.streams.remove(&id).expect("present above");
        let held: usize = stream.data.iter().map(Bytes::len).sum();
        if held > 0 {
            self.release_connection_window(held as u32);
        }
        if stream.active {
            self.active -= 1;
        }
        if self.going_away && self.streams.is_empty() {
            self.wake_driver();
        }
    }

    fn deactivate(&mut self, id: u32) {
        if let Some(stream) = self.streams.get_mut(&id)
            && std::mem::take(&mut stream.active)
        {
            self.active -= 1;
        }
    }
}

/// A decoded header block from the client, sorted by what it can be. A request's head
/// is handed to the connection separately (it becomes the call's `Request`).
#[derive(Debug)]
pub enum Decoded {
    /// A well-formed request head.
    Request,
    /// No pseudo-header: trailers.
    Trailers(HeaderMap),
    /// The header list is over this side's SETTINGS_MAX_HEADER_LIST_SIZE.
    TooLarge,
    /// Breaks RFC 9113's rules for a request (section 8.3).
    Malformed,
}
