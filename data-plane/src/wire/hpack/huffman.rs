//! HPACK's Huffman code (RFC 7541, Appendix B), decoding only: the proxy never
//! Huffman-encodes what it sends (see [`super::encoder`]). The code is canonical, so it
//! is fully given by each symbol's code length; the decoding tables are built from those
//! lengths at compile time. Only the strings a peer sends as literals are decoded here:
//! what it repeats comes from the dynamic table (but nghttp2, h2load's library, never
//! indexes `:path` or `content-length`, so those are decoded on every request).

use super::DecodeError;

/// The code length in bits of each symbol: the 256 octets, then EOS (256).
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LENGTH: usize = 30;

/// How many codes there are of each length.
const COUNTS: [u16; MAX_LENGTH + 1] = {
    let mut counts = [0u16; MAX_LENGTH + 1];
    let mut symbol = 0;
    while symbol < CODE_LENGTHS.len() {
        counts[CODE_LENGTHS[symbol] as usize] += 1;
        symbol += 1;
    }
    counts
};

/// The symbols in code order: by code length, then by symbol.
const SYMBOLS: [u16; 257] = {
    let mut symbols = [0u16; 257];
    let mut next = 0;
    let mut length = 1;
    while length <= MAX_LENGTH {
        let mut symbol = 0;
        while symbol < CODE_LENGTHS.len() {
            if CODE_LENGTHS[symbol] as usize == length {
                symbols[next] = symbol as u16;
                next += 1;
            }
            symbol += 1;
        }
        length += 1;
    }
    symbols
};

/// Per code length: the first code of that length, and the index in `SYMBOLS` of its
/// symbol (the canonical code's definition, RFC 1951 section 3.2.2).
const FIRST: [(u32, u16); MAX_LENGTH + 1] = {
    let mut first = [(0u32, 0u16); MAX_LENGTH + 1];
    let (mut code, mut index) = (0u32, 0u16);
    let mut length = 1;
    while length <= MAX_LENGTH {
        code = (code + COUNTS[length - 1] as u32) << 1;
        index += COUNTS[length - 1];
        first[length] = (code, index);
        length += 1;
    }
    first
};

/// Per code length: the end of its codes, with the code left-aligned in 32 bits. The
/// length of the code starting a 32-bit window is the first whose end is past it.
const LIMITS: [u64; MAX_LENGTH + 1] = {
    let mut limits = [0u64; MAX_LENGTH + 1];
    let mut length = 1;
    while length <= MAX_LENGTH {
        limits[length] = ((FIRST[length].0 + COUNTS[length] as u32) as u64) << (32 - length);
        length += 1;
    }
    limits
};

/// The symbol and code length of every code of 8 bits or fewer, by the 8 bits that
/// start with it (length 0: the code is longer).
const SHORT: [(u16, u8); 256] = {
    let mut short = [(0u16, 0u8); 256];
    let mut prefix = 0;
    while prefix < 256 {
        let window = (prefix as u64) << 24;
        let mut length = 1;
        while length <= 8 {
            if window < LIMITS[length] {
                let code = (window >> (32 - length)) as u32;
                let index = FIRST[length].1 as usize + (code - FIRST[length].0) as usize;
                short[prefix] = (SYMBOLS[index], length as u8);
                break;
            }
            length += 1;
        }
        prefix += 1;
    }
    short
};

/// The symbol and length of the code that starts `window` (32 bits, left-aligned).
fn lookup(window: u32) -> (u16, u32) {
    let (symbol, length) = SHORT[(window >> 24) as usize];
    if length != 0 {
        return (symbol, u32::from(length));
    }
    let mut length = 9;
    while length < MAX_LENGTH && u64::from(window) >= LIMITS[length] {
        length += 1;
    }
    let (first, index) = FIRST[length];
    let code = window >> (32 - length);
    (
        SYMBOLS[usize::from(index) + (code - first) as usize],
        length as u32,
    )
}

/// Appends the decoding of `encoded` to `out`. The last octet's unused bits must be the
/// start of EOS (all ones) and fewer than 8; EOS itself must not appear. Decodes a code
/// per step from a 64-bit window of the input: codes of up to 8 bits (most of what
/// headers hold) by one table lookup, longer ones by the canonical code's limits.
pub fn decode(encoded: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    // The bits not decoded yet, left-aligned, and how many there are.
    let (mut bits, mut count) = (0u64, 0u32);
    let mut input = encoded.iter();
    out.reserve(encoded.len() * 8 / 5);
    loop {
        while count <= 56 {
            let Some(&octet) = input.next() else { break };
            bits |= u64::from(octet) << (56 - count);
            count += 8;
        }
        if count == 0 {
            return Ok(());
        }
        // Past the input, the window is padded with ones: EOS's prefix.
        let window = ((bits | u64::MAX.checked_shr(count).unwrap_or(0)) >> 32) as u32;
        let (symbol, length) = lookup(window);
        if length > count {
            let padding_is_eos_prefix = count < 8 && window >> (32 - count) == (1 << count) - 1;
            return if padding_is_eos_prefix {
                Ok(())
            } else {
                Err(DecodeError::Huffman)
            };
        }
        if symbol == EOS {
            return Err(DecodeError::Huffman);
        }
        out.push(symbol as u8);
        bits <<= length;
        count -= length;
    }
}

/// The canonical code of every symbol, built from the lengths: what a peer's encoder
/// sends, so the tests can encode.
#[cfg(test)]
pub fn codes() -> [(u32, u8); 257] {
    let mut codes = [(0u32, 0u8); 257];
    let (mut code, mut previous_length) = (0u32, 0u8);
    for (i, &symbol) in SYMBOLS.iter().enumerate() {
        let length = CODE_LENGTHS[symbol as usize];
        if i > 0 {
            code = (code + 1) << (length - previous_length);
        }
        previous_length = length;
        codes[symbol as usize] = (code, length);
    }
    codes
}

#[cfg(test)]
pub fn encode(plain: &[u8]) -> Vec<u8> {
    let codes = codes();
    let (mut bits, mut pending, mut out) = (0u64, 0u32, Vec::new());
    for &octet in plain {
        let (code, length) = codes[octet as usize];
        bits = (bits << length) | u64::from(code);
        pending += u32::from(length);
        while pending >= 8 {
            pending -= 8;
            out.push((bits >> pending) as u8);
        }
    }
    if pending > 0 {
        let padding = 8 - pending;
        out.push(((bits << padding) | ((1 << padding) - 1)) as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    fn decoded(encoded: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        decode(encoded, &mut out).map(|()| out)
    }

    #[test]
    fn decodes_the_rfc_examples() {
        for (encoded, plain) in [
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            (
                "d07abe941054d444a8200595040b8166e082a62d1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29ad171863c78f0b97c8e9ae82ae43d3",
                "https://www.example.com",
            ),
        ] {
            assert_eq!(decoded(&hex(encoded)).unwrap(), plain.as_bytes(), "{plain}");
        }
    }

    #[test]
    fn every_octet_survives_a_round_trip() {
        let plain: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        assert_eq!(decoded(&encode(&plain)).unwrap(), plain);
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    #[test]
    fn rejects_bad_padding_and_eos() {
        // "0" is 00000 (5 bits): padding with zeros is not a prefix of EOS.
        assert_eq!(decoded(&[0b0000_0000]), Err(DecodeError::Huffman));
        // A whole octet of padding is too long.
        assert_eq!(decoded(&[0b0000_0111, 0xff]), Err(DecodeError::Huffman));
        // EOS (30 ones) inside the string.
        assert_eq!(
            decoded(&[0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Huffman)
        );
        assert_eq!(decoded(&[0b0000_0111]).unwrap(), b"0");
    }
}
