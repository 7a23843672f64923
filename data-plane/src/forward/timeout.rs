//! The `grpc-timeout` header: parsing the caller's budget and writing the remaining one
//! for the next hop (gRPC over HTTP/2: an integer of at most 8 digits and a unit,
//! H M S m u n).

use std::time::Duration;

use http::HeaderValue;

/// The budget in a `grpc-timeout` value, `None` when malformed.
pub fn parse(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `remaining`, in the finest unit that fits in 8 digits.
/// Marked sensitive, which HPACK sends as a literal "never indexed": a value new on every
/// call would otherwise enter both ends' header tables and push the headers that do
/// repeat (content-type, te, the node's name) out of them.
pub fn format(remaining: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = remaining.as_nanos();
    let text = if nanos <= MAX {
        format!("{nanos}n")
    } else if nanos / 1_000 <= MAX {
        format!("{}u", nanos / 1_000)
    } else if nanos / 1_000_000 <= MAX {
        format!("{}m", nanos / 1_000_000)
    } else {
        format!("{}S", (remaining.as_secs()).min(MAX as u64))
    };
    let mut value =
        HeaderValue::from_str(&text).expect("digits and a unit letter are a valid header value");
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_garbage() {
        let p = |s: &str| parse(&HeaderValue::from_str(s).unwrap());
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("3S"), Some(Duration::from_secs(3)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p("9n"), Some(Duration::from_nanos(9)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1S"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_a_value_that_parses_back_to_about_the_same() {
        for d in [
            Duration::from_nanos(5),
            Duration::from_millis(1500),
            Duration::from_secs(400_000),
        ] {
            let back = parse(&format(d)).unwrap();
            assert!(
                back <= d && d - back < Duration::from_secs(1),
                "{d:?} → {back:?}"
            );
        }
    }

    #[test]
    fn a_written_budget_stays_out_of_the_hpack_tables() {
        assert!(format(Duration::from_millis(1500)).is_sensitive());
    }
}
