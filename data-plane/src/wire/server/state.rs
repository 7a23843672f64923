//! What a client connection adds to the shared connection state
//! ([`crate::wire::conn`]): the client opens the streams, within this side's stream limit;
//! a header block is a request or its trailers; requests that break the rules are
//! refused or reset (and counted, so a client that keeps breaking them is dropped); and
//! GOAWAY names the last request taken.

use h2::Reason;
use http::{HeaderMap, response};

use crate::wire::conn::{Conn, DataAccepted, MAX_QUEUED_DATA, Role, Shared, WindowUpdate};
use crate::wire::frame::{self, DEFAULT_MAX_FRAME};
use crate::wire::headers::is_connection_specific;
use crate::wire::hpack::{self, Pseudo};
use crate::wire::reader::ProtocolError;

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

/// What this side allows a client (its SETTINGS).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list: u32,
    pub stream_window: u32,
    pub connection_window: u32,
}

/// The client connection's own state.
#[derive(Debug)]
pub struct Server {
    /// The highest stream id the client opened.
    last_id: u32,
    limits: Limits,
    /// A header table size the client lowered to, to confirm at the start of the next
    /// header block.
    table_size_update: Option<usize>,
    local_error_resets: usize,
}

/// What a client's stream keeps beside the common part.
#[derive(Debug)]
pub struct ServerStream {
    /// The request body is still read: without a reader, what arrives is given back.
    reading: bool,
}

impl Role for Server {
    type Stream = ServerStream;
    const CALLS_ELSEWHERE: bool = false;

    /// NO_ERROR when the answer is whole and only the request goes on.
    fn reset_on_drop(local_end: bool) -> Reason {
        if local_end {
            Reason::NO_ERROR
        } else {
            Reason::CANCEL
        }
    }

    /// The request body's reader is gone: what it left and what still comes is given
    /// back at once.
    fn body_dropped(conn: &mut Conn<Server>, id: u32) {
        let stream = conn.stream(id);
        stream.role.reading = false;
        stream.trailers = None;
        let held: usize = stream.data.drain(..).map(|d| d.len()).sum();
        conn.give_back(id, held as u32);
    }
}

/// A new client connection's shared state.
pub fn shared(limits: &Limits) -> Shared<Server> {
    let server = Server {
        last_id: 0,
        limits: *limits,
        table_size_update: None,
        local_error_resets: 0,
    };
    Shared::new(Conn::new(
        limits.stream_window,
        limits.connection_window,
        server,
    ))
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

impl Conn<Server> {
    /// This side's SETTINGS and the connection window beyond the default.
    pub fn write_settings(&mut self) {
        let limits = self.role.limits;
        frame::write_settings(
            &mut self.out,
            &[
                (
                    frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                    limits.max_concurrent_streams,
                ),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, limits.stream_window),
                (frame::SETTINGS_MAX_FRAME_SIZE, DEFAULT_MAX_FRAME as u32),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, limits.max_header_list),
            ],
        );
        self.write_connection_window();
    }

    /// Whether the connection is going away and every stream is over.
    pub fn is_done(&self) -> bool {
        self.going_away && !self.has_streams() && self.out.is_empty()
    }

    // ---- the connection's side: what the client sent ----

    /// A whole header block on stream `id`: a request, or trailers. `block` says what
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
        if id <= self.role.last_id {
            return Ok(Opened::Handled);
        }
        self.role.last_id = id;
        if self.going_away {
            return Ok(Opened::Handled);
        }
        match block {
            Decoded::Request => {}
            Decoded::TooLarge => {
                // As h2 did: 431, then REFUSED_STREAM for whatever DATA follows.
                let before = self.out.len();
                let max_frame = self.peer_max_frame;
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
        if self.active >= self.role.limits.max_concurrent_streams as usize
            || self.out.len() >= MAX_QUEUED_FOR_NEW_STREAMS
        {
            self.write_reset(id, Reason::REFUSED_STREAM);
            self.check_control_flood()?;
            return Ok(Opened::Handled);
        }
        // Two handles: the request body and the call.
        self.insert(id, end, false, 2, ServerStream { reading: true });
        Ok(Opened::Request(id))
    }

    /// A frame for a stream no longer kept is ignored when the stream was opened (it is
    /// over, or this side reset it); on a stream never opened it is a connection error.
    fn check_opened(&self, id: u32, what: &'static str) -> Result<(), ProtocolError> {
        if id > self.role.last_id {
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
        self.role.local_error_resets += 1;
        if self.role.local_error_resets > MAX_LOCAL_ERROR_RESETS {
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

    /// A DATA frame of `flow_length` octets (padding included) carrying `data`.
    pub fn on_data(
        &mut self,
        id: u32,
        flow_length: usize,
        data: bytes::Bytes,
        end: bool,
    ) -> Result<(), ProtocolError> {
        match self.accept_data(id, flow_length)? {
            DataAccepted::NoStream => {
                return self.check_opened(id, "DATA on a stream never opened");
            }
            DataAccepted::OverWindow => {
                return self.reset_for_error(id, Reason::FLOW_CONTROL_ERROR);
            }
            DataAccepted::Accepted => {}
        }
        let padding = (flow_length - data.len()) as u32;
        let stream = self.stream(id);
        let reading = stream.role.reading;
        if reading && !data.is_empty() {
            stream.data.push_back(data);
        }
        self.arrived(id, end);
        // Padding, and all of it once nobody reads, is given back at once.
        let given_back = if reading { padding } else { flow_length as u32 };
        self.give_back(id, given_back);
        Ok(())
    }

    pub fn on_reset(&mut self, id: u32, reason: Reason) -> Result<(), ProtocolError> {
        if self.on_peer_reset(id, reason) {
            return Ok(());
        }
        self.check_opened(id, "RST_STREAM on a stream never opened")
    }

    /// The client's SETTINGS: applied, then acknowledged.
    pub fn on_settings(&mut self, settings: &[u8]) -> Result<(), Reason> {
        for setting in settings.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = frame::word(setting, 2);
            // The encoder's table is always empty; a client that lowers it below the
            // default hears that confirmed. This side never pushes, nor sends header
            // lists a client could refuse.
            if !self.apply_setting(id, value)?
                && id == frame::SETTINGS_HEADER_TABLE_SIZE
                && (value as usize) < 4096
            {
                self.role.table_size_update = Some(value as usize);
            }
        }
        self.write_settings_ack();
        Ok(())
    }

    pub fn on_window_update(&mut self, id: u32, increment: u32) -> Result<(), ProtocolError> {
        match self.apply_window_update(id, increment)? {
            WindowUpdate::Applied => Ok(()),
            WindowUpdate::NoStream => {
                self.check_opened(id, "WINDOW_UPDATE on a stream never opened")
            }
            WindowUpdate::ResetStream(reason) => self.reset_for_error(id, reason),
        }
    }

    /// No new stream is taken; the connection ends once the open ones are over.
    pub fn go_away(&mut self) {
        self.going_away = true;
    }

    /// Sends GOAWAY (once) with the last stream taken: no new stream is taken.
    pub fn write_goaway(&mut self, reason: Reason) {
        if !std::mem::replace(&mut self.going_away, true) || reason != Reason::NO_ERROR {
            let last_id = self.role.last_id;
            frame::write_words(&mut self.out, frame::GOAWAY, 0, &[last_id, reason.into()]);
        }
    }

    // ---- the streams' side ----

    /// Writes the answer's head (ending the stream when `end`), with a `date` when it has
    /// none (a node's answer has its own). Written by the connection's own task: the
    /// driver need not be woken.
    pub fn send_head(&mut self, id: u32, head: &response::Parts, end: bool) {
        let stream = self.stream(id);
        if stream.error.is_some() {
            return;
        }
        stream.local_end = end;
        let remote_end = stream.remote_end;
        let table_size = self.role.table_size_update.take();
        frame::write_header_block(&mut self.out, id, end, self.peer_max_frame, |out| {
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
        if end && remote_end {
            self.deactivate(id);
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
