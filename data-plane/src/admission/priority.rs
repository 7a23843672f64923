//! A call's priority, 0 to 9 (9 most important), for shedding under overload.
//!
//! Forwarded calls carry it in the `x-meridian-priority` header (absent: 5; anything but
//! one digit is refused with INVALID_ARGUMENT, so a typo does not silently demote a
//! call). A RouteMessage carries it in its message's `priority`, mapped onto the same
//! scale so that both kinds of traffic compete fairly in one service's queue:
//!
//! | `meridian.v1.Priority` | priority |
//! | --- | --- |
//! | `PRIORITY_LOW` | 0 |
//! | `PRIORITY_NORMAL` | 5 |
//! | `PRIORITY_HIGH` | 7 |
//! | `PRIORITY_CRITICAL` | 9 |
//! | `PRIORITY_UNSPECIFIED` | the `x-meridian-priority` header, else 5 |

use http::{HeaderMap, HeaderName};
use meridian_proto::v1 as pb;

use crate::error::RequestError;

pub const PRIORITY_HEADER: HeaderName = HeaderName::from_static("x-meridian-priority");

/// Labels for the metrics, by priority.
const LABELS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Default for Priority {
    fn default() -> Self {
        Priority::NORMAL
    }
}

impl Priority {
    pub const LOWEST: Priority = Priority(0);
    pub const NORMAL: Priority = Priority(5);
    pub const HIGH: Priority = Priority(7);
    pub const HIGHEST: Priority = Priority(9);

    /// `value` if it is 0 to 9.
    pub fn new(value: u8) -> Option<Priority> {
        (value <= 9).then_some(Priority(value))
    }

    pub fn value(self) -> u8 {
        self.0
    }

    /// "0" to "9", for metric labels.
    pub fn label(self) -> &'static str {
        LABELS[usize::from(self.0)]
    }

    /// The priority a forwarded call's headers ask for.
    pub fn of_call(headers: &HeaderMap) -> Result<Priority, RequestError> {
        match headers.get(PRIORITY_HEADER) {
            None => Ok(Priority::NORMAL),
            Some(value) => match value.as_bytes() {
                [digit @ b'0'..=b'9'] => Ok(Priority(digit - b'0')),
                _ => Err(RequestError::MalformedPriority {
                    value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
                }),
            },
        }
    }

    /// The priority of a RouteMessage: its message's, else its headers'.
    pub fn of_message(
        message: &pb::FederationMessage,
        headers: &HeaderMap,
    ) -> Result<Priority, RequestError> {
        match pb::Priority::try_from(message.priority) {
            Ok(pb::Priority::Low) => Ok(Priority::LOWEST),
            Ok(pb::Priority::Normal) => Ok(Priority::NORMAL),
            Ok(pb::Priority::High) => Ok(Priority::HIGH),
            Ok(pb::Priority::Critical) => Ok(Priority::HIGHEST),
            Ok(pb::Priority::Unspecified) => Priority::of_call(headers),
            Err(_) => Err(RequestError::BadRequest(format!(
                "message.priority {} is not a meridian.v1.Priority (LOW 1, NORMAL 2, HIGH 3, CRITICAL 4)",
                message.priority
            ))),
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(PRIORITY_HEADER, http::HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn the_header_gives_0_to_9_and_refuses_anything_else() {
        assert_eq!(Priority::of_call(&headers(None)).unwrap(), Priority::NORMAL);
        assert_eq!(Priority::of_call(&headers(Some("0"))).unwrap().value(), 0);
        assert_eq!(Priority::of_call(&headers(Some("9"))).unwrap().value(), 9);
        for bad in ["10", "-1", "high", ""] {
            let error = Priority::of_call(&headers(Some(bad))).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn a_messages_priority_maps_onto_the_same_scale_and_falls_back_to_the_header() {
        let message = |priority: pb::Priority| pb::FederationMessage {
            priority: priority.into(),
            ..Default::default()
        };
        let none = headers(Some("8"));
        let of = |p| Priority::of_message(&message(p), &none).unwrap().value();
        assert_eq!(of(pb::Priority::Low), 0);
        assert_eq!(of(pb::Priority::Normal), 5);
        assert_eq!(of(pb::Priority::High), 7);
        assert_eq!(of(pb::Priority::Critical), 9);
        assert_eq!(of(pb::Priority::Unspecified), 8, "the header's");
        let unknown = pb::FederationMessage {
            priority: 12,
            ..Default::default()
        };
        assert!(Priority::of_message(&unknown, &none).is_err());
    }
}
