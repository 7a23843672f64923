//! HPACK's header tables (RFC 7541, section 2.3): the static table every peer knows, and
//! the dynamic table a decoder keeps of the fields its peer asked it to remember. Entries
//! hold `http`'s own types, so a field the peer repeats by index is a reference-count
//! increment, not a parse.

use std::collections::VecDeque;

use http::{HeaderName, HeaderValue};

use super::DecodeError;

/// An HTTP/2 pseudo-header (RFC 9113, section 8.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pseudo {
    Authority,
    Method,
    Path,
    Scheme,
    Status,
    Protocol,
}

impl Pseudo {
    pub fn as_str(self) -> &'static str {
        match self {
            Pseudo::Authority => ":authority",
            Pseudo::Method => ":method",
            Pseudo::Path => ":path",
            Pseudo::Scheme => ":scheme",
            Pseudo::Status => ":status",
            Pseudo::Protocol => ":protocol",
        }
    }

    pub fn from_bytes(name: &[u8]) -> Option<Pseudo> {
        Some(match name {
            b":authority" => Pseudo::Authority,
            b":method" => Pseudo::Method,
            b":path" => Pseudo::Path,
            b":scheme" => Pseudo::Scheme,
            b":status" => Pseudo::Status,
            b":protocol" => Pseudo::Protocol,
            _ => return None,
        })
    }
}

/// A field's name: a pseudo-header or a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldName {
    Pseudo(Pseudo),
    Header(HeaderName),
}

impl FieldName {
    fn len(&self) -> usize {
        match self {
            FieldName::Pseudo(pseudo) => pseudo.as_str().len(),
            FieldName::Header(name) => name.as_str().len(),
        }
    }
}

/// One decoded header field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: FieldName,
    pub value: HeaderValue,
}

impl Field {
    /// Its size in a table: name and value octets plus 32 (RFC 7541, section 4.1).
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + 32
    }
}

const fn pseudo(pseudo: Pseudo, value: &'static str) -> Field {
    Field {
        name: FieldName::Pseudo(pseudo),
        value: HeaderValue::from_static(value),
    }
}

const fn header(name: &'static str, value: &'static str) -> Field {
    Field {
        name: FieldName::Header(HeaderName::from_static(name)),
        value: HeaderValue::from_static(value),
    }
}

/// RFC 7541, Appendix A; index 1 is `STATIC[0]`.
pub static STATIC: [Field; 61] = [
    pseudo(Pseudo::Authority, ""),
    pseudo(Pseudo::Method, "GET"),
    pseudo(Pseudo::Method, "POST"),
    pseudo(Pseudo::Path, "/"),
    pseudo(Pseudo::Path, "/index.html"),
    pseudo(Pseudo::Scheme, "http"),
    pseudo(Pseudo::Scheme, "https"),
    pseudo(Pseudo::Status, "200"),
    pseudo(Pseudo::Status, "204"),
    pseudo(Pseudo::Status, "206"),
    pseudo(Pseudo::Status, "304"),
    pseudo(Pseudo::Status, "400"),
    pseudo(Pseudo::Status, "404"),
    pseudo(Pseudo::Status, "500"),
    header("accept-charset", ""),
    header("accept-encoding", "gzip, deflate"),
    header("accept-language", ""),
    header("accept-ranges", ""),
    header("accept", ""),
    header("access-control-allow-origin", ""),
    header("age", ""),
    header("allow", ""),
    header("authorization", ""),
    header("cache-control", ""),
    header("content-disposition", ""),
    header("content-encoding", ""),
    header("content-language", ""),
    header("content-length", ""),
    header("content-location", ""),
    header("content-range", ""),
    header("content-type", ""),
    header("cookie", ""),
    header("date", ""),
    header("etag", ""),
    header("expect", ""),
    header("expires", ""),
    header("from", ""),
    header("host", ""),
    header("if-match", ""),
    header("if-modified-since", ""),
    header("if-none-match", ""),
    header("if-range", ""),
    header("if-unmodified-since", ""),
    header("last-modified", ""),
    header("link", ""),
    header("location", ""),
    header("max-forwards", ""),
    header("proxy-authenticate", ""),
    header("proxy-authorization", ""),
    header("range", ""),
    header("referer", ""),
    header("refresh", ""),
    header("retry-after", ""),
    header("server", ""),
    header("set-cookie", ""),
    header("strict-transport-security", ""),
    header("transfer-encoding", ""),
    header("user-agent", ""),
    header("vary", ""),
    header("via", ""),
    header("www-authenticate", ""),
];

/// The fields a peer asked this decoder to remember, newest first, within the size the
/// peer last set (at most the size this side allows).
#[derive(Debug)]
pub struct DynamicTable {
    entries: VecDeque<Field>,
    size: usize,
    max_size: usize,
    allowed_size: usize,
}

impl DynamicTable {
    pub fn new(allowed_size: usize) -> Self {
        DynamicTable {
            entries: VecDeque::new(),
            size: 0,
            max_size: allowed_size,
            allowed_size,
        }
    }

    /// The field at HPACK index `index` (1-based, static table first).
    pub fn get(&self, index: usize) -> Result<&Field, DecodeError> {
        match index {
            0 => Err(DecodeError::Index(0)),
            1..=61 => Ok(&STATIC[index - 1]),
            _ => self
                .entries
                .get(index - 62)
                .ok_or(DecodeError::Index(index)),
        }
    }

    /// Remembers `field`, evicting the oldest entries to make room; a field larger than
    /// the whole table empties it (RFC 7541, section 4.4).
    pub fn insert(&mut self, field: Field) {
        let size = field.size();
        while self.size + size > self.max_size {
            match self.entries.pop_back() {
                Some(evicted) => self.size -= evicted.size(),
                None => return,
            }
        }
        self.size += size;
        self.entries.push_front(field);
    }

    /// A size update from the peer: at most what this side allows.
    pub fn resize(&mut self, max_size: usize) -> Result<(), DecodeError> {
        if max_size > self.allowed_size {
            return Err(DecodeError::TableSize(max_size));
        }
        self.max_size = max_size;
        while self.size > max_size {
            let evicted = self.entries.pop_back().expect("size counts entries");
            self.size -= evicted.size();
        }
        Ok(())
    }
}
