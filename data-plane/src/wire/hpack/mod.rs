//! HPACK (RFC 7541), the header compression of the proxy's own HTTP/2 connections, to
//! nodes ([`super::client`]) and from clients ([`super::server`]). Decoding is
//! complete: a peer's encoder may use the dynamic table and Huffman strings. Encoding is deliberately stateless, as HAProxy's is: names
//! from the static table where it has them, values as plain literals, never Huffman,
//! never added to the peer's dynamic table. That costs some octets on the wire and saves
//! the table lookups and Huffman coding h2's encoder spent on every header it sent.

mod decoder;
mod encoder;
mod huffman;
mod table;

use bytes::{Buf, Bytes};

pub use decoder::Decoder;
pub use encoder::{encode_header, encode_pseudo, encode_table_size};
pub use table::{Field, FieldName, Pseudo};

/// Why a header block could not be decoded. All but [`DecodeError::ListTooLarge`] leave
/// the decoder out of step with its peer: the connection must end (COMPRESSION_ERROR).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error("an integer in the header block overflows")]
    IntegerOverflow,
    #[error("a Huffman-coded string is malformed")]
    Huffman,
    #[error("the header block refers to table index {0}, which does not exist")]
    Index(usize),
    #[error("the peer set its header table to {0} octets, more than allowed")]
    TableSize(usize),
    #[error("a header table size update came after a field")]
    LateTableSizeUpdate,
    #[error("a header name holds characters HTTP does not allow")]
    InvalidName,
    #[error("a header value holds characters HTTP does not allow")]
    InvalidValue,
    #[error("the header list is larger than {0} octets")]
    ListTooLarge(usize),
}

/// Reads an integer with an `prefix_bits`-bit prefix (RFC 7541, section 5.1) from the
/// front of `input`.
fn decode_integer(input: &mut &[u8], prefix_bits: u8) -> Result<usize, DecodeError> {
    let mask = ((1u16 << prefix_bits) - 1) as u8;
    let first = *input.first().ok_or(DecodeError::Truncated)? & mask;
    input.advance(1);
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0u32;
    loop {
        let octet = *input.first().ok_or(DecodeError::Truncated)?;
        input.advance(1);
        // Four continuation octets reach 2^28: far past any size this side allows.
        if shift > 21 {
            return Err(DecodeError::IntegerOverflow);
        }
        value += usize::from(octet & 0x7f) << shift;
        shift += 7;
        if octet & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Writes `value` with an `prefix_bits`-bit prefix after the representation's `flags`.
fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix_bits: u8, value: usize) {
    let mask = (1usize << prefix_bits) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Reads a string literal (RFC 7541, section 5.2) at `*at` in `block`: a slice of the
/// block when it is plain, else its Huffman decoding (through `scratch`).
fn decode_string(
    block: &Bytes,
    at: &mut usize,
    scratch: &mut Vec<u8>,
) -> Result<Bytes, DecodeError> {
    let mut input = &block[*at..];
    let huffman = input.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
    let length = decode_integer(&mut input, 7)?;
    if input.len() < length {
        return Err(DecodeError::Truncated);
    }
    let start = block.len() - input.len();
    *at = start + length;
    if !huffman {
        return Ok(block.slice(start..start + length));
    }
    scratch.clear();
    huffman::decode(&input[..length], scratch)?;
    Ok(Bytes::copy_from_slice(scratch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_round_trip_at_every_prefix() {
        for prefix in 1..=8 {
            for value in [0, 1, 30, 31, 126, 127, 128, 255, 1337, 16_384, 1 << 20] {
                let mut out = Vec::new();
                encode_integer(&mut out, 0, prefix, value);
                let mut input = &out[..];
                assert_eq!(
                    decode_integer(&mut input, prefix),
                    Ok(value),
                    "{value}/{prefix}"
                );
                assert!(input.is_empty());
            }
        }
    }

    #[test]
    fn the_rfc_integer_examples() {
        // RFC 7541, C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        encode_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
    }

    #[test]
    fn an_endless_integer_is_refused() {
        let mut input = &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..];
        assert_eq!(
            decode_integer(&mut input, 5),
            Err(DecodeError::IntegerOverflow)
        );
        let mut input = &[0x1f, 0xff][..];
        assert_eq!(decode_integer(&mut input, 5), Err(DecodeError::Truncated));
    }
}
