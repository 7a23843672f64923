//! HTTP/2 frames (RFC 9113, section 4 and 6) as the proxy's own connections
//! ([`super::client`], [`super::server`]) write them: the 9-octet frame header, the
//! frame types and flags, and the SETTINGS parameters.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;

/// The octets every client connection starts with (RFC 9113, section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEAD_LEN: usize = 9;
/// The largest frame payload a peer may send before it hears otherwise, and the largest
/// this side accepts (it never raises SETTINGS_MAX_FRAME_SIZE).
pub const DEFAULT_MAX_FRAME: usize = 16_384;
/// Every window starts at this many octets (RFC 9113, section 6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
pub const MAX_WINDOW: i64 = (1 << 31) - 1;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub length: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream_id: u32,
}

impl Head {
    pub fn parse(octets: &[u8]) -> Head {
        Head {
            length: usize::from(octets[0]) << 16
                | usize::from(octets[1]) << 8
                | usize::from(octets[2]),
            kind: octets[3],
            flags: octets[4],
            stream_id: u32::from_be_bytes([octets[5], octets[6], octets[7], octets[8]])
                & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header.
pub fn write_head(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream_id: u32) {
    out.extend_from_slice(&head(length, kind, flags, stream_id));
}

/// A frame header's octets (for a header written in place after its payload).
pub fn head(length: usize, kind: u8, flags: u8, stream_id: u32) -> [u8; HEAD_LEN] {
    let [_, l0, l1, l2] = (length as u32).to_be_bytes();
    let [s0, s1, s2, s3] = stream_id.to_be_bytes();
    [l0, l1, l2, kind, flags, s0, s1, s2, s3]
}

/// Appends a frame whose payload is 32-bit words (RST_STREAM, WINDOW_UPDATE, GOAWAY).
pub fn write_words(out: &mut Vec<u8>, kind: u8, stream_id: u32, words: &[u32]) {
    write_head(out, words.len() * 4, kind, 0, stream_id);
    for word in words {
        out.extend_from_slice(&word.to_be_bytes());
    }
}

/// Appends a SETTINGS frame with `settings`.
pub fn write_settings(out: &mut Vec<u8>, settings: &[(u16, u32)]) {
    write_head(out, settings.len() * 6, SETTINGS, 0, 0);
    for (id, value) in settings {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a header block as a HEADERS frame (ending the stream when `end`), followed by
/// CONTINUATION frames past `max_frame` octets; `encode` writes the block in place.
pub fn write_header_block(
    out: &mut Vec<u8>,
    id: u32,
    end: bool,
    max_frame: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEAD_LEN]);
    encode(out);
    let end_flag = if end { END_STREAM } else { 0 };
    let length = out.len() - start - HEAD_LEN;
    if length <= max_frame {
        let head = head(length, HEADERS, end_flag | END_HEADERS, id);
        out[start..start + HEAD_LEN].copy_from_slice(&head);
        return;
    }
    let block = out.split_off(start + HEAD_LEN);
    out.truncate(start);
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = HEADERS;
    let mut flags = end_flag;
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        write_head(out, chunk.len(), kind, flags, id);
        out.extend_from_slice(chunk);
        (kind, flags) = (CONTINUATION, 0);
    }
}

/// The payload of a frame that may be PADDED, without its padding; `None` when the
/// padding is longer than the frame (a PROTOCOL_ERROR).
pub fn unpadded(head: &Head, payload: Bytes) -> Option<Bytes> {
    if !head.has(PADDED) {
        return Some(payload);
    }
    let padding = usize::from(*payload.first()?);
    let end = payload.len().checked_sub(padding)?;
    (end >= 1).then(|| payload.slice(1..end))
}

/// The 32-bit word at `at` of a payload.
pub fn word(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}

/// A map from stream ids to what a connection keeps per stream.
pub type StreamMap<V> = HashMap<u32, V, BuildHasherDefault<StreamIdHasher>>;

/// Stream ids are odd and increasing: a multiplication spreads them over the table.
#[derive(Default)]
pub struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_round_trips() {
        let mut out = Vec::new();
        write_head(
            &mut out,
            70_000,
            HEADERS,
            END_STREAM | END_HEADERS,
            0x7fff_ffff,
        );
        assert_eq!(out.len(), HEAD_LEN);
        let head = Head::parse(&out);
        assert_eq!(
            head,
            Head {
                length: 70_000,
                kind: HEADERS,
                flags: 0x5,
                stream_id: 0x7fff_ffff
            }
        );
        assert!(head.has(END_HEADERS) && !head.has(PADDED));
    }

    #[test]
    fn padding_is_stripped_and_checked() {
        let padded = Head {
            length: 6,
            kind: DATA,
            flags: PADDED,
            stream_id: 1,
        };
        assert_eq!(
            unpadded(&padded, Bytes::from_static(b"\x02abc\0\0")).unwrap(),
            "abc"
        );
        assert_eq!(unpadded(&padded, Bytes::from_static(b"\x09abc")), None);
        assert_eq!(unpadded(&padded, Bytes::new()), None);
    }
}
