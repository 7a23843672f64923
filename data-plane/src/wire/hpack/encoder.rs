//! Encoding header fields, statelessly: each field is a literal "without indexing"
//! ("never indexed" for values marked sensitive), its name an index into the static
//! table when the table has it, and a field the static table has whole (`:method POST`,
//! `:scheme http`) is one octet.

use http::{HeaderName, HeaderValue};

use super::{Pseudo, encode_integer};

/// Appends a pseudo-header field.
pub fn encode_pseudo(out: &mut Vec<u8>, pseudo: Pseudo, value: &[u8]) {
    let whole = match (pseudo, value) {
        (Pseudo::Method, b"GET") => Some(2),
        (Pseudo::Method, b"POST") => Some(3),
        (Pseudo::Path, b"/") => Some(4),
        (Pseudo::Scheme, b"http") => Some(6),
        (Pseudo::Scheme, b"https") => Some(7),
        (Pseudo::Status, b"200") => Some(8),
        _ => None,
    };
    if let Some(index) = whole {
        return out.push(0x80 | index);
    }
    let name_index = match pseudo {
        Pseudo::Authority => 1,
        Pseudo::Method => 2,
        Pseudo::Path => 4,
        Pseudo::Scheme => 6,
        Pseudo::Status => 8,
        Pseudo::Protocol => 0,
    };
    literal(out, 0x00, name_index, pseudo.as_str().as_bytes(), value);
}

/// Appends a dynamic table size update (RFC 7541, section 6.3): the encoder's table is
/// always empty, but a peer that lowers SETTINGS_HEADER_TABLE_SIZE hears it confirmed.
pub fn encode_table_size(out: &mut Vec<u8>, size: usize) {
    encode_integer(out, 0x20, 5, size);
}

/// Appends a header field.
pub fn encode_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    let flags = if value.is_sensitive() { 0x10 } else { 0x00 };
    let name = name.as_str();
    literal(
        out,
        flags,
        static_name_index(name),
        name.as_bytes(),
        value.as_bytes(),
    );
}

fn literal(out: &mut Vec<u8>, flags: u8, name_index: usize, name: &[u8], value: &[u8]) {
    encode_integer(out, flags, 4, name_index);
    if name_index == 0 {
        encode_integer(out, 0x00, 7, name.len());
        out.extend_from_slice(name);
    }
    encode_integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// The static table's index of a header name, 0 when it has none.
fn static_name_index(name: &str) -> usize {
    match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::table::STATIC;
    use super::super::{Decoder, FieldName};
    use super::*;

    #[test]
    fn every_static_name_is_found_at_its_index() {
        for (i, field) in STATIC.iter().enumerate() {
            if let FieldName::Header(name) = &field.name {
                assert_eq!(static_name_index(name.as_str()), i + 1, "{name}");
            }
        }
        assert_eq!(static_name_index("grpc-status"), 0);
    }

    #[test]
    fn what_is_encoded_decodes_to_the_same_fields() {
        let mut out = Vec::new();
        encode_pseudo(&mut out, Pseudo::Method, b"POST");
        encode_pseudo(&mut out, Pseudo::Scheme, b"http");
        encode_pseudo(&mut out, Pseudo::Path, b"/demo.v1.Echo/Say");
        encode_pseudo(&mut out, Pseudo::Authority, b"127.0.0.1:18000");
        let mut secret = HeaderValue::from_static("Bearer x");
        secret.set_sensitive(true);
        let headers = [
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/grpc"),
            ),
            (
                HeaderName::from_static("te"),
                HeaderValue::from_static("trailers"),
            ),
            (HeaderName::from_static("authorization"), secret),
            (
                HeaderName::from_static("x-long"),
                HeaderValue::from_str(&"v".repeat(300)).unwrap(),
            ),
        ];
        for (name, value) in &headers {
            encode_header(&mut out, name, value);
        }
        assert_eq!(&out[..2], [0x83, 0x86], "whole static fields are one octet");
        let mut decoded = Vec::new();
        Decoder::new(4096, 16_384)
            .decode(&Bytes::from(out), |field| decoded.push(field))
            .unwrap();
        assert_eq!(decoded.len(), 8);
        assert_eq!(decoded[2].name, FieldName::Pseudo(Pseudo::Path));
        assert_eq!(decoded[2].value, "/demo.v1.Echo/Say");
        for (field, (name, value)) in decoded[4..].iter().zip(&headers) {
            assert_eq!(field.name, FieldName::Header(name.clone()));
            assert_eq!(field.value, value);
        }
    }
}
