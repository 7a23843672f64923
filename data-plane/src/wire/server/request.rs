//! A client's header block, decoded and checked against RFC 9113's rules for requests
//! (section 8.3): the pseudo-headers `:method`, `:scheme` and `:path` present once each
//! and before the headers, `:authority` at most once, nothing connection-specific. A
//! block without pseudo-headers is trailers.

use bytes::Bytes;
use h2::Reason;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Uri, request};

use super::state::Decoded;
use crate::wire::headers::is_connection_specific;
use crate::wire::hpack::{self, DecodeError, FieldName, Pseudo};
use crate::wire::reader::ProtocolError;

/// The pseudo-headers of a request, as they came.
#[derive(Default)]
struct Pseudos {
    method: Option<HeaderValue>,
    scheme: Option<HeaderValue>,
    authority: Option<HeaderValue>,
    path: Option<HeaderValue>,
}

/// Decodes `block`: what it is, and for a well-formed request its head. Only a block
/// that cannot be decoded (leaving HPACK out of step) is a connection error.
pub fn decode(
    decoder: &mut hpack::Decoder,
    block: &Bytes,
) -> Result<(Decoded, Option<request::Parts>), ProtocolError> {
    let mut pseudos = Pseudos::default();
    let mut any_pseudo = false;
    let mut headers = HeaderMap::new();
    let mut malformed = false;
    let decoded = decoder.decode(block, |field| match field.name {
        FieldName::Header(name) => {
            malformed |= is_connection_specific(&name, &field.value);
            headers.append(name, field.value);
        }
        FieldName::Pseudo(pseudo) => {
            any_pseudo = true;
            let slot = match pseudo {
                Pseudo::Method => &mut pseudos.method,
                Pseudo::Scheme => &mut pseudos.scheme,
                Pseudo::Authority => &mut pseudos.authority,
                Pseudo::Path => &mut pseudos.path,
                Pseudo::Status | Pseudo::Protocol => {
                    malformed = true;
                    return;
                }
            };
            // Pseudo-headers come first, once each.
            malformed |= !headers.is_empty() || slot.is_some();
            *slot = Some(field.value);
        }
    });
    match decoded {
        Ok(()) => {}
        Err(DecodeError::ListTooLarge(_)) => return Ok((Decoded::TooLarge, None)),
        Err(_) => {
            return Err((
                Reason::COMPRESSION_ERROR,
                "a header block could not be decoded",
            ));
        }
    }
    if malformed {
        return Ok((Decoded::Malformed, None));
    }
    if !any_pseudo {
        return Ok((Decoded::Trailers(headers), None));
    }
    Ok(match head(pseudos, headers) {
        Some(head) => (Decoded::Request, Some(head)),
        None => (Decoded::Malformed, None),
    })
}

/// A request's head from its pseudo-headers, `None` when they do not make one (CONNECT,
/// which the proxy does not serve, has no `:path` and is refused so).
fn head(pseudos: Pseudos, headers: HeaderMap) -> Option<request::Parts> {
    let method = Method::from_bytes(pseudos.method?.as_bytes()).ok()?;
    let path = pseudos.path?;
    if path.is_empty() {
        return None;
    }
    let scheme = Scheme::try_from(pseudos.scheme?.as_bytes()).ok()?;
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(PathAndQuery::try_from(path.as_bytes()).ok()?);
    // http's `Uri` has a scheme only with an authority.
    if let Some(authority) = pseudos.authority {
        uri.authority = Some(Authority::try_from(authority.as_bytes()).ok()?);
        uri.scheme = Some(scheme);
    }
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = method;
    head.uri = Uri::from_parts(uri).ok()?;
    head.version = http::Version::HTTP_2;
    head.headers = headers;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(fields: &[(&str, &str)]) -> Bytes {
        let mut out = Vec::new();
        for (name, value) in fields {
            match Pseudo::from_bytes(name.as_bytes()) {
                Some(pseudo) => hpack::encode_pseudo(&mut out, pseudo, value.as_bytes()),
                None => {
                    hpack::encode_header(&mut out, &name.parse().unwrap(), &value.parse().unwrap())
                }
            }
        }
        Bytes::from(out)
    }

    fn decode_fields(fields: &[(&str, &str)]) -> (Decoded, Option<request::Parts>) {
        let mut decoder = hpack::Decoder::new(4096, 1024);
        decode(&mut decoder, &block(fields)).unwrap()
    }

    const REQUEST: [(&str, &str); 5] = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "proxy:443"),
        (":path", "/demo.v1.Echo/Say?x=1"),
        ("content-type", "application/grpc"),
    ];

    #[test]
    fn a_request_becomes_its_head() {
        let (decoded, head) = decode_fields(&REQUEST);
        assert!(matches!(decoded, Decoded::Request));
        let head = head.unwrap();
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri, "http://proxy:443/demo.v1.Echo/Say?x=1");
        assert_eq!(head.headers["content-type"], "application/grpc");
        assert_eq!(head.version, http::Version::HTTP_2);
    }

    #[test]
    fn a_block_without_pseudo_headers_is_trailers() {
        let (decoded, head) = decode_fields(&[("grpc-status", "0")]);
        assert!(matches!(decoded, Decoded::Trailers(t) if t["grpc-status"] == "0"));
        assert!(head.is_none());
    }

    #[test]
    fn requests_breaking_the_rules_are_malformed() {
        let mut late_pseudo = REQUEST.to_vec();
        late_pseudo.swap(3, 4);
        let mut twice = REQUEST.to_vec();
        twice.push((":path", "/again"));
        twice.swap(4, 5);
        let cases: Vec<Vec<(&str, &str)>> = vec![
            late_pseudo,
            twice,
            REQUEST.iter().copied().filter(|f| f.0 != ":path").collect(),
            REQUEST
                .iter()
                .copied()
                .filter(|f| f.0 != ":method")
                .collect(),
            REQUEST
                .iter()
                .copied()
                .filter(|f| f.0 != ":scheme")
                .collect(),
            [&REQUEST[..], &[("connection", "keep-alive")]].concat(),
            [&REQUEST[..], &[("te", "gzip")]].concat(),
            [&[(":status", "200")], &REQUEST[..]].concat(),
            vec![(":method", "CONNECT"), (":authority", "node:443")],
        ];
        for fields in cases {
            let (decoded, head) = decode_fields(&fields);
            assert!(
                matches!(decoded, Decoded::Malformed) && head.is_none(),
                "{fields:?} is malformed"
            );
        }
        let (decoded, _) = decode_fields(&[&REQUEST[..], &[("te", "trailers")]].concat());
        assert!(
            matches!(decoded, Decoded::Request),
            "te: trailers is allowed"
        );
    }

    #[test]
    fn a_list_over_the_limit_is_too_large_and_garbage_is_a_connection_error() {
        let big = "x".repeat(2000);
        let (decoded, _) = decode_fields(&[&REQUEST[..], &[("big", big.as_str())]].concat());
        assert!(matches!(decoded, Decoded::TooLarge));
        let mut decoder = hpack::Decoder::new(4096, 1024);
        let garbage = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decode(&mut decoder, &garbage).unwrap_err().0,
            Reason::COMPRESSION_ERROR
        );
    }
}
