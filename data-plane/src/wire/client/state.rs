//! What a connection to a node adds to the shared connection state
//! ([`crate::wire::conn`]): this side opens the streams (odd ids, waiting for the node's
//! SETTINGS_MAX_CONCURRENT_STREAMS), reads answers' heads before their bodies, and stops
//! opening streams once the node sends GOAWAY or the connection fails.

use std::task::{Context, Poll};

use h2::Reason;
use http::{HeaderMap, Response, request};

use super::StreamError;
use crate::wire::conn::{Conn, DataAccepted, Role, Shared, WindowUpdate};
use crate::wire::frame;
use crate::wire::headers::is_connection_specific;
use crate::wire::hpack::{self, Pseudo};
use crate::wire::reader::ProtocolError;

/// The node connection's own state.
#[derive(Debug)]
pub struct Client {
    next_id: u32,
    /// The node's SETTINGS_MAX_CONCURRENT_STREAMS.
    max_concurrent_streams: usize,
    /// Why no new stream can start.
    ended: Option<StreamError>,
}

/// What a stream to a node keeps beside the common part: the answer's head until the
/// call takes it.
#[derive(Debug)]
pub struct ClientStream {
    head: Option<(Response<()>, bool)>,
    got_head: bool,
}

impl Role for Client {
    type Stream = ClientStream;
    const CALLS_ELSEWHERE: bool = true;

    /// This side gave up on the answer.
    fn reset_on_drop(_local_end: bool) -> Reason {
        Reason::CANCEL
    }

    /// An answer dropped before its end resets its stream, so the node stops sending and
    /// a request body still streaming stops too (its sender holds the stream open).
    fn body_dropped(conn: &mut Conn<Client>, id: u32) {
        conn.reset(id, Reason::CANCEL);
    }
}

/// A new node connection's shared state, whose streams and connection take the given
/// windows from the node.
pub fn shared(stream_window: u32, connection_window: u32) -> Shared<Client> {
    let client = Client {
        next_id: 1,
        max_concurrent_streams: usize::MAX,
        ended: None,
    };
    Shared::new(Conn::new(stream_window, connection_window, client))
}

impl Conn<Client> {
    /// The connection preface: the magic, this side's SETTINGS and the connection
    /// window beyond the default.
    pub fn write_preface(&mut self, max_header_list: u32) {
        self.out.extend_from_slice(frame::PREFACE);
        let stream_window = self.stream_window();
        frame::write_settings(
            &mut self.out,
            &[
                (frame::SETTINGS_ENABLE_PUSH, 0),
                (frame::SETTINGS_INITIAL_WINDOW_SIZE, stream_window),
                (frame::SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list),
            ],
        );
        self.write_connection_window();
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
        if let Some(error) = &self.role.ended {
            return Poll::Ready(Err(error.clone()));
        }
        if self.active >= self.role.max_concurrent_streams {
            if !self.openers.iter().any(|w| w.will_wake(cx.waker())) {
                self.openers.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let id = self.role.next_id;
        if id > frame::MAX_WINDOW as u32 {
            return Poll::Ready(Err(StreamError::connection(
                "the connection ran out of stream ids",
            )));
        }
        self.role.next_id += 2;
        let max_frame = self.peer_max_frame;
        frame::write_header_block(&mut self.out, id, end, max_frame, |out| {
            encode_request(out, request);
        });
        let stream = ClientStream {
            head: None,
            got_head: false,
        };
        self.insert(id, false, end, 1, stream);
        self.wake_driver();
        Poll::Ready(Ok(id))
    }

    /// The answer's head, with whether the answer ends with it.
    pub fn poll_head(
        &mut self,
        id: u32,
        cx: &Context<'_>,
    ) -> Poll<Result<(Response<()>, bool), StreamError>> {
        let stream = self.stream(id);
        if let Some(head) = stream.role.head.take() {
            return Poll::Ready(Ok(head));
        }
        if let Some(error) = &stream.error {
            return Poll::Ready(Err(error.clone()));
        }
        stream.register_reader(cx);
        Poll::Pending
    }

    // ---- the driver's side ----

    /// The head or the trailers of an answer; `Err` for a stream error to reset with.
    pub fn on_header_block(
        &mut self,
        id: u32,
        end: bool,
        block: Result<HeaderBlock, Reason>,
    ) -> Result<(), ProtocolError> {
        let Some(stream) = self.streams.get_mut(&id) else {
            return self.check_was_opened(id);
        };
        if stream.remote_end || stream.error.is_some() {
            return Ok(());
        }
        let block = block.and_then(|block| match block {
            HeaderBlock::Head(head) if !stream.role.got_head => Ok(Some(head)),
            HeaderBlock::Trailers(trailers) if stream.role.got_head && end => {
                stream.trailers = Some(trailers);
                Ok(None)
            }
            HeaderBlock::Informational if !stream.role.got_head && !end => Ok(None),
            _ => Err(Reason::PROTOCOL_ERROR),
        });
        match block {
            Ok(Some(head)) => {
                stream.role.got_head = true;
                stream.role.head = Some((head, end));
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

    /// Frames on a stream this side never opened (even ids are the server's, which it may
    /// only open by PUSH_PROMISE, disabled) are a connection error.
    fn check_was_opened(&self, id: u32) -> Result<(), ProtocolError> {
        if id >= self.role.next_id || id.is_multiple_of(2) {
            Err((Reason::PROTOCOL_ERROR, "a frame on a stream never opened"))
        } else {
            Ok(())
        }
    }

    /// A DATA frame of `flow_length` octets (padding included) carrying `data`.
    pub fn on_data(
        &mut self,
        id: u32,
        flow_length: usize,
        data: bytes::Bytes,
        end: bool,
    ) -> Result<(), ProtocolError> {
        let padding = (flow_length - data.len()) as u32;
        match self.accept_data(id, flow_length)? {
            DataAccepted::NoStream => return self.check_was_opened(id),
            DataAccepted::OverWindow => {
                self.reset(id, Reason::FLOW_CONTROL_ERROR);
                return Ok(());
            }
            DataAccepted::Accepted => {}
        }
        let stream = self.stream(id);
        if !stream.role.got_head {
            self.release_connection_window(flow_length as u32);
            self.reset(id, Reason::PROTOCOL_ERROR);
            return Ok(());
        }
        if !data.is_empty() {
            stream.data.push_back(data);
        }
        self.arrived(id, end);
        // Padding is given back at once: the reader never sees it.
        self.give_back(id, padding);
        Ok(())
    }

    pub fn on_reset(&mut self, id: u32, reason: Reason) -> Result<(), ProtocolError> {
        if self.on_peer_reset(id, reason) {
            return Ok(());
        }
        self.check_was_opened(id)
    }

    /// The node's SETTINGS: applied, then acknowledged.
    pub fn on_settings(&mut self, settings: &[u8]) -> Result<(), Reason> {
        for setting in settings.chunks_exact(6) {
            let id = u16::from_be_bytes([setting[0], setting[1]]);
            let value = frame::word(setting, 2);
            if !self.apply_setting(id, value)? && id == frame::SETTINGS_MAX_CONCURRENT_STREAMS {
                self.role.max_concurrent_streams = value as usize;
                self.wake_openers();
            }
            // The encoder never uses the node's table; the list size is the node's to
            // enforce.
        }
        self.write_settings_ack();
        Ok(())
    }

    pub fn on_window_update(&mut self, id: u32, increment: u32) -> Result<(), ProtocolError> {
        match self.apply_window_update(id, increment)? {
            WindowUpdate::Applied | WindowUpdate::NoStream => {}
            WindowUpdate::ResetStream(reason) => self.reset(id, reason),
        }
        Ok(())
    }

    /// The node is going away: streams it did not take are refused (the node never
    /// processed them), and no new stream starts.
    pub fn on_goaway(&mut self, last_id: u32, shared: &Shared<Client>) {
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
            self.on_peer_reset(id, Reason::REFUSED_STREAM);
        }
    }

    /// No new stream starts; `error` says why.
    pub fn end(&mut self, error: StreamError, shared: &Shared<Client>) {
        shared.close();
        self.going_away = true;
        if self.role.ended.is_none() {
            self.role.ended = Some(error);
        }
        self.wake_openers();
    }

    /// The connection is over: every stream still open fails with `error`.
    pub fn fail_all(&mut self, error: StreamError, shared: &Shared<Client>) {
        self.end(error.clone(), shared);
        self.fail_streams(&error);
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
