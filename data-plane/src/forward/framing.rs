//! gRPC message framing as DATA frames stream through: every message is a 5-byte prefix
//! (a compressed flag, then the length as a big-endian `u32`) followed by that many
//! bytes. [`MessageFrames`] follows the prefixes across frames without copying or
//! buffering a byte: a prefix may be split over frames, a frame may hold several
//! messages, a message may span many frames. It reports a message whose prefix announces
//! more than the limit as soon as its prefix is complete, before any of its payload is
//! passed on, and counts the messages begun (how the retry buffer tells a stream from a
//! single message).
//!
//! [`Oversize`] is what one call's request and response bodies share when either ends
//! the call for an oversized message: the body that saw it records it, the attempt and
//! the response body turn it into `RESOURCE_EXHAUSTED` for the caller.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes in a gRPC message prefix.
const PREFIX_BYTES: u8 = 5;

/// A message announced more bytes than the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {direction} message of {length} bytes is over the limit of {limit} bytes")]
pub struct TooLarge {
    pub direction: Direction,
    pub length: u32,
    pub limit: u32,
}

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Request,
    Response,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the stream is in its current message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// `read` bytes of a prefix seen; `length` holds the length bytes seen so far.
    Prefix { read: u8, length: u32 },
    /// Inside a message's payload, `remaining` bytes to go.
    Payload { remaining: u32 },
}

/// Follows the message prefixes of one direction of one call.
#[derive(Debug, Clone, Copy)]
pub struct MessageFrames {
    position: Position,
    limit: u32,
    direction: Direction,
    /// Messages whose prefix has begun.
    begun: u32,
}

impl MessageFrames {
    pub fn new(direction: Direction, limit: u32) -> Self {
        MessageFrames {
            position: Position::Prefix { read: 0, length: 0 },
            limit,
            direction,
            begun: 0,
        }
    }

    /// Follows the bytes of one DATA frame; `Err` as soon as a prefix announces a
    /// message over the limit.
    pub fn observe(&mut self, mut data: &[u8]) -> Result<(), TooLarge> {
        while !data.is_empty() {
            match &mut self.position {
                Position::Payload { remaining } => {
                    let skipped = (*remaining as usize).min(data.len());
                    data = &data[skipped..];
                    *remaining -= skipped as u32;
                    if *remaining == 0 {
                        self.position = Position::Prefix { read: 0, length: 0 };
                    }
                }
                Position::Prefix { read, length } => {
                    if *read == 0 {
                        self.begun = self.begun.saturating_add(1);
                    }
                    // Byte 0 is the compressed flag; bytes 1..5 the length.
                    if *read > 0 {
                        *length = (*length << 8) | u32::from(data[0]);
                    }
                    *read += 1;
                    data = &data[1..];
                    if *read == PREFIX_BYTES {
                        let length = *length;
                        if length > self.limit {
                            return Err(TooLarge {
                                direction: self.direction,
                                length,
                                limit: self.limit,
                            });
                        }
                        self.position = match length {
                            0 => Position::Prefix { read: 0, length: 0 },
                            remaining => Position::Payload { remaining },
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// Messages begun so far (the current one included, even if only part of its prefix
    /// has been seen).
    pub fn messages_begun(&self) -> u32 {
        self.begun
    }

    /// Whether the bytes seen end exactly at a message's end.
    pub fn at_message_boundary(&self) -> bool {
        self.position == Position::Prefix { read: 0, length: 0 }
    }
}

/// The oversized message that ended one call, if any: set once by the body that saw it,
/// read by whoever answers the caller. Lock-free: one atomic word.
#[derive(Debug, Default)]
pub struct Oversize(AtomicU64);

impl Oversize {
    /// Records `too_large` unless another was recorded first.
    pub fn record(&self, too_large: TooLarge) {
        let direction = match too_large.direction {
            Direction::Request => 1u64,
            Direction::Response => 2u64,
        };
        // Limits are at most 256 MiB (checked where they are set): 30 bits are plenty.
        let limit = u64::from(too_large.limit.min((1 << 30) - 1));
        let word = direction | (u64::from(too_large.length) << 2) | (limit << 34);
        let _ = self
            .0
            .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire);
    }

    /// What was recorded.
    pub fn get(&self) -> Option<TooLarge> {
        let word = self.0.load(Ordering::Acquire);
        let direction = match word & 3 {
            0 => return None,
            1 => Direction::Request,
            _ => Direction::Response,
        };
        Some(TooLarge {
            direction,
            length: ((word >> 2) & u64::from(u32::MAX)) as u32,
            limit: (word >> 34) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gRPC framing of one message with `len` payload bytes.
    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, len));
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_whole_and_in_pieces() {
        let mut frames = MessageFrames::new(Direction::Request, 100);
        frames.observe(&message(100)).unwrap();
        assert!(frames.at_message_boundary());
        let bytes = message(60);
        for piece in bytes.chunks(7) {
            frames.observe(piece).unwrap();
        }
        assert!(frames.at_message_boundary());
        assert_eq!(frames.messages_begun(), 2);
    }

    #[test]
    fn a_prefix_split_across_frames_is_read_whole() {
        // 0x00 0x00 0x01 0x00 = 256, split after every byte of the prefix.
        let bytes = message(256);
        let mut frames = MessageFrames::new(Direction::Response, 255);
        for (i, byte) in bytes[..4].iter().enumerate() {
            frames
                .observe(std::slice::from_ref(byte))
                .unwrap_or_else(|e| panic!("refused after {} prefix bytes: {e}", i + 1));
        }
        let refused = frames.observe(&bytes[4..]).unwrap_err();
        assert_eq!(
            refused,
            TooLarge {
                direction: Direction::Response,
                length: 256,
                limit: 255
            }
        );
        let mut frames = MessageFrames::new(Direction::Response, 256);
        frames.observe(&bytes[..3]).unwrap();
        frames.observe(&bytes[3..]).unwrap();
        assert!(frames.at_message_boundary());
    }

    #[test]
    fn several_messages_in_one_frame_are_each_checked() {
        let mut frame = message(10);
        frame.extend(message(0));
        frame.extend(message(20));
        let mut frames = MessageFrames::new(Direction::Request, 20);
        frames.observe(&frame).unwrap();
        assert_eq!(frames.messages_begun(), 3);
        assert!(frames.at_message_boundary());

        // The third message of a frame is over the limit: refused though the first two
        // were fine.
        frame.extend(message(21));
        let mut frames = MessageFrames::new(Direction::Request, 20);
        let refused = frames.observe(&frame).unwrap_err();
        assert_eq!(refused.length, 21);
        assert_eq!(frames.messages_begun(), 4);
    }

    #[test]
    fn a_message_spanning_frames_ends_where_its_length_says() {
        let mut frames = MessageFrames::new(Direction::Request, 1 << 20);
        let mut stream = message(40_000);
        stream.extend(message(5));
        for piece in stream.chunks(16_384) {
            frames.observe(piece).unwrap();
        }
        assert_eq!(frames.messages_begun(), 2);
        assert!(frames.at_message_boundary());
        frames.observe(&[0, 0]).unwrap();
        assert!(!frames.at_message_boundary());
    }

    #[test]
    fn the_first_oversize_recorded_is_kept() {
        let oversize = Oversize::default();
        assert_eq!(oversize.get(), None);
        let first = TooLarge {
            direction: Direction::Response,
            length: u32::MAX,
            limit: 268_435_456,
        };
        oversize.record(first);
        oversize.record(TooLarge {
            direction: Direction::Request,
            length: 5,
            limit: 4,
        });
        assert_eq!(oversize.get(), Some(first));
    }
}
