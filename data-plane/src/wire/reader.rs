//! Reading frames off a connection, for both sides of the proxy: fills a buffer from the
//! socket, cuts whole frames from it, and assembles each header block from its HEADERS
//! and CONTINUATION frames (padding and priority removed), so the connection sees a
//! header block as one piece.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::Reason;
use tokio::io::AsyncRead;

use super::frame::{self, Head};

/// A connection error found while reading: the reason for the GOAWAY, and why.
pub type ProtocolError = (Reason, &'static str);

pub const BAD_LENGTH: ProtocolError = (Reason::FRAME_SIZE_ERROR, "a frame has the wrong length");

/// A frame as the connection handles it.
#[derive(Debug)]
pub enum Frame {
    /// A whole header block: its stream, whether it ends the stream, the encoded block.
    HeaderBlock { id: u32, end: bool, block: Bytes },
    /// Any other frame, with its payload.
    Other(Head, BytesMut),
}

/// The frames read so far from one connection.
#[derive(Debug)]
pub struct FrameReader {
    read: BytesMut,
    /// A header block waiting for its CONTINUATION frames: its stream, END_STREAM, the
    /// block so far and the frames it came in.
    continuation: Option<(u32, bool, BytesMut, usize)>,
    /// The largest encoded header block accepted, and the most frames it may come in.
    max_block: usize,
    max_block_frames: usize,
}

impl FrameReader {
    /// A reader accepting header blocks of up to `max_block` octets.
    pub fn new(max_block: usize) -> Self {
        FrameReader {
            read: BytesMut::with_capacity(frame::DEFAULT_MAX_FRAME + frame::HEAD_LEN),
            continuation: None,
            max_block,
            // A block split into frames of at least 1 KiB, and a few more.
            max_block_frames: max_block / 1024 + 8,
        }
    }

    /// Reads once from `io`; ready with the octets read, 0 at the end of the stream.
    pub fn poll_fill<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < 4096 {
            self.read
                .reserve(frame::DEFAULT_MAX_FRAME + frame::HEAD_LEN);
        }
        tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut self.read)
    }

    /// The next whole frame in what was read, `None` when more must be read first.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if self.read.len() < frame::HEAD_LEN {
                return Ok(None);
            }
            let head = Head::parse(&self.read[..frame::HEAD_LEN]);
            if head.length > frame::DEFAULT_MAX_FRAME {
                return Err((Reason::FRAME_SIZE_ERROR, "a frame is larger than allowed"));
            }
            let whole = frame::HEAD_LEN + head.length;
            if self.read.len() < whole {
                self.read.reserve(whole - self.read.len());
                return Ok(None);
            }
            let mut payload = self.read.split_to(whole);
            payload.advance(frame::HEAD_LEN);
            if let Some(frame) = self.assemble(head, payload)? {
                return Ok(Some(frame));
            }
        }
    }

    /// A frame, or a header block once whole; `None` while a block waits for more.
    fn assemble(&mut self, head: Head, payload: BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if let Some((id, end, mut block, frames)) = self.continuation.take() {
            if head.kind != frame::CONTINUATION || head.stream_id != id {
                return Err((Reason::PROTOCOL_ERROR, "a header block was interrupted"));
            }
            block.extend_from_slice(&payload);
            if block.len() > self.max_block || frames + 1 > self.max_block_frames {
                return Err((Reason::PROTOCOL_ERROR, "a header block is too large"));
            }
            if !head.has(frame::END_HEADERS) {
                self.continuation = Some((id, end, block, frames + 1));
                return Ok(None);
            }
            let block = block.freeze();
            return Ok(Some(Frame::HeaderBlock { id, end, block }));
        }
        match head.kind {
            frame::HEADERS => {
                let id = head.stream_id;
                if id == 0 {
                    return Err((Reason::PROTOCOL_ERROR, "a frame is on the wrong stream"));
                }
                let mut block = frame::unpadded(&head, payload.freeze()).ok_or((
                    Reason::PROTOCOL_ERROR,
                    "a HEADERS frame's padding is too long",
                ))?;
                if head.has(frame::PRIORITY) {
                    if block.len() < 5 {
                        return Err(BAD_LENGTH);
                    }
                    block.advance(5);
                }
                let end = head.has(frame::END_STREAM);
                if head.has(frame::END_HEADERS) {
                    return Ok(Some(Frame::HeaderBlock { id, end, block }));
                }
                self.continuation = Some((id, end, BytesMut::from(&block[..]), 1));
                Ok(None)
            }
            frame::CONTINUATION => Err((
                Reason::PROTOCOL_ERROR,
                "a CONTINUATION frame follows no header block",
            )),
            _ => Ok(Some(Frame::Other(head, payload))),
        }
    }
}

/// Checks that a frame which belongs to a stream has one, and a connection frame has none.
pub fn check_stream(head: &Head) -> Result<(), ProtocolError> {
    let needs_stream = matches!(head.kind, frame::DATA | frame::RST_STREAM);
    let connection_only = matches!(head.kind, frame::SETTINGS | frame::PING | frame::GOAWAY);
    if needs_stream && head.stream_id == 0 || connection_only && head.stream_id != 0 {
        return Err((Reason::PROTOCOL_ERROR, "a frame is on the wrong stream"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader_with(frames: &[(usize, u8, u8, u32, &[u8])]) -> FrameReader {
        let mut reader = FrameReader::new(1024);
        for &(length, kind, flags, id, payload) in frames {
            let mut out = Vec::new();
            frame::write_head(&mut out, length, kind, flags, id);
            out.extend_from_slice(payload);
            reader.read.extend_from_slice(&out);
        }
        reader
    }

    #[test]
    fn a_header_block_is_assembled_from_its_continuation_frames() {
        let mut reader = reader_with(&[
            (3, frame::HEADERS, frame::END_STREAM, 1, b"abc"),
            (2, frame::CONTINUATION, 0, 1, b"de"),
            (1, frame::CONTINUATION, frame::END_HEADERS, 1, b"f"),
            (8, frame::PING, 0, 0, b"12345678"),
        ]);
        let Some(Frame::HeaderBlock { id, end, block }) = reader.next_frame().unwrap() else {
            panic!("a header block first");
        };
        assert_eq!((id, end, &block[..]), (1, true, &b"abcdef"[..]));
        let Some(Frame::Other(head, payload)) = reader.next_frame().unwrap() else {
            panic!("then the PING");
        };
        assert_eq!((head.kind, &payload[..]), (frame::PING, &b"12345678"[..]));
        assert!(reader.next_frame().unwrap().is_none(), "nothing more");
    }

    #[test]
    fn an_interrupted_or_endless_header_block_is_a_connection_error() {
        let mut interrupted = reader_with(&[
            (3, frame::HEADERS, 0, 1, b"abc"),
            (8, frame::PING, 0, 0, b"12345678"),
        ]);
        assert_eq!(
            interrupted.next_frame().unwrap_err().0,
            Reason::PROTOCOL_ERROR
        );
        // Empty CONTINUATION frames grow no block, but their number is bounded too.
        let mut frames = vec![(0, frame::HEADERS, 0, 1, &b""[..])];
        frames.extend(std::iter::repeat_n(
            (0, frame::CONTINUATION, 0, 1, &b""[..]),
            100,
        ));
        let mut endless = reader_with(&frames);
        assert_eq!(endless.next_frame().unwrap_err().0, Reason::PROTOCOL_ERROR);
    }

    #[test]
    fn a_frame_over_the_maximum_size_is_refused() {
        let mut reader = reader_with(&[(frame::DEFAULT_MAX_FRAME + 1, frame::DATA, 0, 1, b"")]);
        assert_eq!(reader.next_frame().unwrap_err().0, Reason::FRAME_SIZE_ERROR);
    }
}
