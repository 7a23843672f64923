//! Decoding a header block into fields, keeping the dynamic table in step with the peer.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use super::table::DynamicTable;
use super::{DecodeError, Field, FieldName, Pseudo, decode_integer, decode_string};

/// How many Huffman-coded literal values a decoder remembers, and the longest it does.
const RECENT_VALUES: usize = 4;
const MAX_RECENT_VALUE: usize = 128;

/// The decoding side of one connection's HPACK context.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    max_list_size: usize,
    scratch: Vec<u8>,
    /// The last Huffman-coded literal values, as sent and decoded: nghttp2 (h2load,
    /// curl, Envoy) never indexes `:path` or `content-length`, so each request sends
    /// them again, and a repeat is found here instead of decoded.
    recent: Vec<(Box<[u8]>, HeaderValue)>,
    next_recent: usize,
}

impl Decoder {
    /// A decoder whose peer may use up to `table_size` octets of dynamic table (the
    /// SETTINGS_HEADER_TABLE_SIZE this side sent) and send header lists of up to
    /// `max_list_size` octets (its SETTINGS_MAX_HEADER_LIST_SIZE).
    pub fn new(table_size: usize, max_list_size: usize) -> Self {
        Decoder {
            table: DynamicTable::new(table_size),
            max_list_size,
            scratch: Vec::new(),
            recent: Vec::with_capacity(RECENT_VALUES),
            next_recent: 0,
        }
    }

    /// Decodes a whole header block, giving each field to `on_field` in order. A list
    /// larger than allowed is decoded to its end all the same (the table must stay in
    /// step), and then refused with [`DecodeError::ListTooLarge`].
    pub fn decode(
        &mut self,
        block: &Bytes,
        mut on_field: impl FnMut(Field),
    ) -> Result<(), DecodeError> {
        let (mut at, mut list_size, mut seen_a_field) = (0, 0, false);
        while at < block.len() {
            let first = block[at];
            let field = if first & 0x80 != 0 {
                let index = self.integer(block, &mut at, 7)?;
                self.table.get(index)?.clone()
            } else if first & 0xc0 == 0x40 {
                let field = self.literal(block, &mut at, 6)?;
                // A copy of its own: a slice of the block would hold the whole read
                // buffer it came in for as long as the entry stays in the table.
                let value = HeaderValue::from_bytes(field.value.as_bytes())
                    .map_err(|_| DecodeError::InvalidValue)?;
                self.table.insert(Field {
                    name: field.name.clone(),
                    value,
                });
                field
            } else if first & 0xe0 == 0x20 {
                if seen_a_field {
                    return Err(DecodeError::LateTableSizeUpdate);
                }
                let size = self.integer(block, &mut at, 5)?;
                self.table.resize(size)?;
                continue;
            } else {
                // Without indexing (0000) or never indexed (0001).
                self.literal(block, &mut at, 4)?
            };
            seen_a_field = true;
            list_size += field.size();
            if list_size <= self.max_list_size {
                on_field(field);
            }
        }
        if list_size > self.max_list_size {
            return Err(DecodeError::ListTooLarge(self.max_list_size));
        }
        Ok(())
    }

    fn integer(
        &self,
        block: &Bytes,
        at: &mut usize,
        prefix_bits: u8,
    ) -> Result<usize, DecodeError> {
        let mut input = &block[*at..];
        let value = decode_integer(&mut input, prefix_bits)?;
        *at = block.len() - input.len();
        Ok(value)
    }

    /// A literal field whose name is indexed (`index` > 0) or follows as a string.
    fn literal(
        &mut self,
        block: &Bytes,
        at: &mut usize,
        prefix_bits: u8,
    ) -> Result<Field, DecodeError> {
        let index = self.integer(block, at, prefix_bits)?;
        let name = if index == 0 {
            let name = decode_string(block, at, &mut self.scratch)?;
            field_name(&name)?
        } else {
            self.table.get(index)?.name.clone()
        };
        let value = self.value(block, at)?;
        Ok(Field { name, value })
    }

    /// A field's value; a Huffman-coded one sent again is taken from `recent`.
    fn value(&mut self, block: &Bytes, at: &mut usize) -> Result<HeaderValue, DecodeError> {
        let mut input = &block[*at..];
        let huffman = input.first().ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let length = decode_integer(&mut input, 7)?;
        let encoded = input.get(..length).ok_or(DecodeError::Truncated)?;
        if huffman && let Some((_, value)) = self.recent.iter().find(|(sent, _)| **sent == *encoded)
        {
            *at = block.len() - input.len() + length;
            return Ok(value.clone());
        }
        let remember = huffman && length <= MAX_RECENT_VALUE;
        let encoded: Option<Box<[u8]>> = remember.then(|| encoded.into());
        let value = decode_string(block, at, &mut self.scratch)?;
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| DecodeError::InvalidValue)?;
        if let Some(encoded) = encoded {
            let entry = (encoded, value.clone());
            if self.recent.len() < RECENT_VALUES {
                self.recent.push(entry);
            } else {
                self.recent[self.next_recent] = entry;
                self.next_recent = (self.next_recent + 1) % RECENT_VALUES;
            }
        }
        Ok(value)
    }
}

fn field_name(name: &[u8]) -> Result<FieldName, DecodeError> {
    if name.first() == Some(&b':') {
        return Pseudo::from_bytes(name)
            .map(FieldName::Pseudo)
            .ok_or(DecodeError::InvalidName);
    }
    HeaderName::from_bytes(name)
        .map(FieldName::Header)
        .map_err(|_| DecodeError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::super::huffman;
    use super::*;

    fn hex(text: &str) -> Bytes {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect::<Vec<u8>>()
            .into()
    }

    fn decode(decoder: &mut Decoder, block: &Bytes) -> Result<Vec<(String, String)>, DecodeError> {
        let mut fields = Vec::new();
        decoder.decode(block, |field| {
            let name = match &field.name {
                FieldName::Pseudo(pseudo) => pseudo.as_str().to_owned(),
                FieldName::Header(name) => name.as_str().to_owned(),
            };
            fields.push((name, field.value.to_str().unwrap().to_owned()));
        })?;
        Ok(fields)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// RFC 7541, C.6: three responses with Huffman coding and a 256-octet table, so the
    /// third evicts entries the first added.
    #[test]
    fn decodes_the_rfc_response_sequence() {
        let mut decoder = Decoder::new(256, 16_384);
        let first = hex(
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0
             82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        );
        assert_eq!(
            decode(&mut decoder, &first).unwrap(),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        let second = hex("4883 640e ffc1 c0bf");
        assert_eq!(
            decode(&mut decoder, &second).unwrap(),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com"),
            ])
        );
        let third = hex(
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b
             d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27
             0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        );
        assert_eq!(
            decode(&mut decoder, &third).unwrap(),
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
    }

    /// A `:path` (static index 4) sent as a Huffman-coded literal without indexing.
    fn huffman_path(path: &str) -> Vec<u8> {
        let encoded = huffman::encode(path.as_bytes());
        let mut block = vec![0x04];
        super::super::encode_integer(&mut block, 0x80, 7, encoded.len());
        block.extend_from_slice(&encoded);
        block
    }

    #[test]
    fn huffman_values_sent_again_decode_the_same_as_the_first_time() {
        let mut decoder = Decoder::new(4096, 16_384);
        let paths = [
            "/demo.v1.Echo/Say",
            "/a",
            "/b",
            "/c",
            "/d",
            "/demo.v1.Echo/Say",
        ];
        for round in 0..3 {
            for path in paths {
                let block = Bytes::from(huffman_path(path));
                assert_eq!(
                    decode(&mut decoder, &block).unwrap(),
                    pairs(&[(":path", path)]),
                    "round {round}"
                );
            }
        }
        // A value differing in its last octet only is not taken for a remembered one.
        let mut near = huffman_path("/demo.v1.Echo/Sa");
        let last = near.len() - 1;
        near[last] ^= 0x10;
        let decoded = decode(&mut decoder, &Bytes::from(near));
        assert_ne!(decoded, Ok(pairs(&[(":path", "/demo.v1.Echo/Say")])));
    }

    #[test]
    fn refuses_what_a_peer_must_not_send() {
        let mut decoder = Decoder::new(4096, 16_384);
        // Index 0, an index past both tables, a table larger than allowed, a size
        // update after a field, a name with a space.
        assert_eq!(decode(&mut decoder, &hex("80")), Err(DecodeError::Index(0)));
        assert_eq!(
            decode(&mut decoder, &hex("be")),
            Err(DecodeError::Index(62))
        );
        let mut too_large = Vec::new();
        super::super::encode_integer(&mut too_large, 0x20, 5, 4097);
        assert_eq!(
            decode(&mut decoder, &Bytes::from(too_large)),
            Err(DecodeError::TableSize(4097))
        );
        assert_eq!(
            decode(&mut decoder, &hex("88 20")),
            Err(DecodeError::LateTableSizeUpdate)
        );
        assert_eq!(
            decode(&mut decoder, &hex("0003 6120 6201 76")),
            Err(DecodeError::InvalidName)
        );
        assert_eq!(
            decode(&mut decoder, &hex("0005 61")),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            decode(&mut decoder, &hex("0001 6101 0a")),
            Err(DecodeError::InvalidValue)
        );
    }

    #[test]
    fn a_list_too_large_is_refused_but_still_indexed() {
        let mut decoder = Decoder::new(4096, 100);
        let value = "v".repeat(80);
        let mut block = vec![0x40, 0x01, b'a', 80];
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(&[0x40, 0x01, b'b', 0x01, b'w']);
        assert_eq!(
            decode(&mut decoder, &Bytes::from(block)),
            Err(DecodeError::ListTooLarge(100))
        );
        // Both fields went into the table: "b" is index 62, "a" 63.
        assert_eq!(
            decode(&mut decoder, &hex("be")).unwrap(),
            pairs(&[("b", "w")])
        );
    }

    #[test]
    fn huffman_names_and_values() {
        let mut block = vec![0x00];
        for text in ["grpc-status", "0"] {
            let coded = huffman::encode(text.as_bytes());
            block.push(0x80 | coded.len() as u8);
            block.extend_from_slice(&coded);
        }
        let mut decoder = Decoder::new(4096, 16_384);
        assert_eq!(
            decode(&mut decoder, &Bytes::from(block)).unwrap(),
            pairs(&[("grpc-status", "0")])
        );
    }
}
