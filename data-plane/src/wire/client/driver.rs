//! The task that drives one client connection: it writes the frames the calls queued,
//! reads the node's frames and hands them to the streams, answers SETTINGS and PINGs,
//! and PINGs an idle node to find out whether it is still there.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::StreamError;
use super::state::{Client, HeaderBlock};
use crate::wire::conn::Shared;
use crate::wire::frame::{self, Head};
use crate::wire::headers::is_connection_specific;
use crate::wire::hpack::{self, DecodeError, FieldName, Pseudo};
use crate::wire::keepalive::{Due, Keepalive, KeepaliveSettings, PING_PAYLOAD};
use crate::wire::reader::{BAD_LENGTH, Frame, FrameReader, ProtocolError, check_stream};
use crate::wire::writer::Writer;

/// The largest header list a node may send (SETTINGS_MAX_HEADER_LIST_SIZE).
pub const MAX_HEADER_LIST: u32 = 64 * 1024;
/// The dynamic table a node's encoder may use: HPACK's default.
const HEADER_TABLE_SIZE: usize = 4096;
/// How many reads one poll makes before letting other tasks run.
const READS_PER_POLL: usize = 16;
/// A node whose SETTINGS and PINGs, each answered, find this much of the answers still
/// unwritten sends them faster than it reads the answers: it is dropped rather than
/// buffered for.
const MAX_UNWRITTEN_FOR_CONTROL: usize = 1024 * 1024;
const CONTROL_FLOOD: (Reason, &str) = (
    Reason::ENHANCE_YOUR_CALM,
    "it sends SETTINGS or PINGs faster than it reads the answers",
);

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    Io(io::Error),
    Closed,
    /// This side found the node in breach of the protocol.
    Protocol(Reason, &'static str),
    Unanswered,
    /// Went away (GOAWAY) and every stream it took is done.
    Done,
    /// Nothing holds the connection any more (its pool let it go).
    Unused,
}

pub struct Driver<T> {
    io: T,
    shared: Arc<Shared<Client>>,
    address: String,
    decoder: hpack::Decoder,
    reader: FrameReader,
    writer: Writer,
    keepalive: Keepalive,
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub fn new(
        io: T,
        shared: Arc<Shared<Client>>,
        address: String,
        keepalive: KeepaliveSettings,
    ) -> Self {
        Driver {
            io,
            shared,
            address,
            decoder: hpack::Decoder::new(HEADER_TABLE_SIZE, MAX_HEADER_LIST as usize),
            reader: FrameReader::new(MAX_HEADER_LIST as usize * 2),
            writer: Writer::new(),
            keepalive: Keepalive::new(keepalive),
        }
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        for _ in 0..READS_PER_POLL {
            if let Err(e) = self.poll_write(cx) {
                return Poll::Ready(Ended::Io(e));
            }
            match self.poll_read(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(ended)) => return Poll::Ready(ended),
                Poll::Pending => {
                    if let Poll::Ready(ended) = self.poll_keepalive(cx) {
                        return Poll::Ready(ended);
                    }
                    if let Err(e) = self.poll_write(cx) {
                        return Poll::Ready(Ended::Io(e));
                    }
                    // No handle but the driver's own: no call can come (checked when
                    // the connection is next woken, at the latest by the keepalive timer).
                    if Arc::strong_count(&self.shared) == 1 {
                        return Poll::Ready(Ended::Unused);
                    }
                    let state = self.shared.lock();
                    let done =
                        self.shared.is_closed() && !state.has_streams() && state.out.is_empty();
                    return if done && self.writer.is_idle() {
                        Poll::Ready(Ended::Done)
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.writer.poll_write(&mut self.io, &self.shared, cx)
    }

    /// Reads once and handles every whole frame read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        match self.reader.poll_fill(&mut self.io, cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Ended::Io(e))),
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(Ended::Closed)),
            Poll::Ready(Ok(_)) => {}
        }
        let protocol = |(reason, why): ProtocolError| Ended::Protocol(reason, why);
        while let Some(frame) = self.reader.next_frame().map_err(protocol)? {
            match frame {
                Frame::HeaderBlock { id, end, block } => self.header_block(id, end, block),
                Frame::Other(head, payload) => self.handle(head, payload),
            }
            .map_err(protocol)?;
        }
        Poll::Ready(Ok(()))
    }

    fn handle(&mut self, head: Head, payload: BytesMut) -> Result<(), ProtocolError> {
        check_stream(&head)?;
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
                if state.control_replies > MAX_UNWRITTEN_FOR_CONTROL {
                    return Err(CONTROL_FLOOD);
                }
                state
                    .on_settings(&payload)
                    .map_err(|reason| (reason, "the node's SETTINGS are invalid"))
            }
            frame::PING => {
                let payload: [u8; 8] = payload[..].try_into().map_err(|_| BAD_LENGTH)?;
                if head.has(frame::ACK) {
                    self.keepalive.on_ack();
                } else {
                    let mut state = self.shared.lock();
                    if state.control_replies > MAX_UNWRITTEN_FOR_CONTROL {
                        return Err(CONTROL_FLOOD);
                    }
                    state.write_ping(true, payload);
                }
                Ok(())
            }
            frame::GOAWAY => {
                if payload.len() < 8 {
                    return Err(BAD_LENGTH);
                }
                let last_id = frame::word(&payload, 0) & 0x7fff_ffff;
                let reason = Reason::from(frame::word(&payload, 4));
                let detail = String::from_utf8_lossy(&payload[8..]);
                tracing::debug!(address = %self.address, %reason, %detail, last_id, "the node is closing the connection (GOAWAY)");
                let mut state = self.shared.lock();
                state.on_goaway(last_id, &self.shared);
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
            frame::PUSH_PROMISE => Err((
                Reason::PROTOCOL_ERROR,
                "the node pushed, which this side disabled",
            )),
            // PRIORITY and unknown frames are ignored.
            _ => Ok(()),
        }
    }

    /// Decodes a whole header block (always: the dynamic table must stay in step) and
    /// gives it to its stream.
    fn header_block(&mut self, id: u32, end: bool, block: Bytes) -> Result<(), ProtocolError> {
        let mut status = None;
        let mut headers = HeaderMap::new();
        let mut malformed = false;
        let decoded = self.decoder.decode(&block, |field| match field.name {
            FieldName::Header(name) => {
                // Connection-specific headers are malformed in HTTP/2 (RFC 9113, 8.2.2).
                malformed |= is_connection_specific(&name, &field.value);
                headers.append(name, field.value);
            }
            FieldName::Pseudo(Pseudo::Status) if status.is_none() && headers.is_empty() => {
                status = StatusCode::from_bytes(field.value.as_bytes()).ok();
                // 101 (Switching Protocols) has no place in HTTP/2 (RFC 9113, 8.6).
                malformed |= status.is_none_or(|s| s == StatusCode::SWITCHING_PROTOCOLS);
            }
            _ => malformed = true,
        });
        let block = match decoded {
            Err(DecodeError::ListTooLarge(_)) => Err(Reason::PROTOCOL_ERROR),
            Err(_) => {
                return Err((
                    Reason::COMPRESSION_ERROR,
                    "a header block could not be decoded",
                ));
            }
            Ok(()) if malformed => Err(Reason::PROTOCOL_ERROR),
            Ok(()) => Ok(match status {
                None => HeaderBlock::Trailers(headers),
                Some(status) if status.is_informational() => HeaderBlock::Informational,
                Some(status) => {
                    let mut head = Response::new(());
                    *head.status_mut() = status;
                    *head.version_mut() = http::Version::HTTP_2;
                    *head.headers_mut() = headers;
                    HeaderBlock::Head(head)
                }
            }),
        };
        self.shared.lock().on_header_block(id, end, block)
    }

    fn poll_keepalive(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        match self.keepalive.poll_due(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Due::Unanswered) => Poll::Ready(Ended::Unanswered),
            Poll::Ready(Due::Ping) => {
                self.shared.lock().write_ping(false, PING_PAYLOAD);
                Poll::Pending
            }
        }
    }

    /// Ends the connection: every open stream fails, and a node in breach of the
    /// protocol hears why (GOAWAY) as far as the socket still takes it.
    async fn finish(&mut self, ended: Ended) {
        let error = match &ended {
            Ended::Io(e) => {
                StreamError::connection(format!("the connection to {} failed: {e}", self.address))
            }
            Ended::Closed => {
                StreamError::connection(format!("{} closed the connection", self.address))
            }
            Ended::Protocol(reason, why) => StreamError::connection(format!(
                "{} broke the HTTP/2 protocol ({reason}): {why}",
                self.address
            )),
            Ended::Unanswered => StreamError::connection(format!(
                "{} did not answer a keepalive PING within {:?}",
                self.address,
                self.keepalive.settings().timeout
            )),
            Ended::Done => {
                StreamError::connection(format!("{} closed the connection (GOAWAY)", self.address))
            }
            Ended::Unused => StreamError::connection(format!(
                "the connection to {} is no longer used",
                self.address
            )),
        };
        tracing::debug!(address = %self.address, %error, "upstream connection closed");
        let goaway = {
            let mut state = self.shared.lock();
            state.fail_all(error, &self.shared);
            let Ended::Protocol(reason, _) = ended else {
                return;
            };
            state.write_goaway(reason);
            self.writer.take_rest(&mut state.out)
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.write_all(&goaway)).await;
    }

    /// Drives the connection until it ends.
    pub async fn run(mut self) {
        let ended = std::future::poll_fn(|cx| self.poll_drive(cx)).await;
        self.finish(ended).await;
    }
}
