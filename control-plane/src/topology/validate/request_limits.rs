//! The rules for a service's request limits: a message size a proxy can enforce (the
//! same range as the proxy's own `--max-message-bytes`), and deduplication bounds that
//! keep what a proxy stores per service within reach (an hour of answers, a million
//! entries, a GiB).

use meridian_shared::domain::RequestLimits;

use super::{Invalid, invalid};

/// Smallest message size limit: below it, ordinary calls could not pass.
pub const MIN_MESSAGE_BYTES: u32 = 1024;
/// Largest message size limit (256 MiB), as for the proxy's flag.
pub const MAX_MESSAGE_BYTES: u32 = 256 * 1024 * 1024;
/// Longest time answers are kept: an hour.
pub const MAX_DEDUP_TTL_MS: u32 = 3_600_000;
/// Most answers kept per service and proxy.
pub const MAX_DEDUP_ENTRIES: u32 = 1_000_000;
/// Most bytes of answers kept per service and proxy: 1 GiB.
pub const MAX_DEDUP_BYTES: u64 = 1024 * 1024 * 1024;

const FIELD: &str = "service_policy.limits";

pub fn request_limits(l: &RequestLimits) -> Result<(), Invalid> {
    if l.max_message_bytes != 0
        && !(MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&l.max_message_bytes)
    {
        return Err(invalid(
            format!("{FIELD}.max_message_bytes"),
            format!(
                "{} is outside {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES} (0: the proxy's --max-message-bytes)",
                l.max_message_bytes
            ),
        ));
    }
    at_most(
        "dedup_ttl_ms",
        l.dedup_ttl_ms.into(),
        MAX_DEDUP_TTL_MS.into(),
        " (an hour)",
    )?;
    at_most(
        "dedup_max_entries",
        l.dedup_max_entries.into(),
        MAX_DEDUP_ENTRIES.into(),
        "",
    )?;
    at_most(
        "dedup_max_bytes",
        l.dedup_max_bytes,
        MAX_DEDUP_BYTES,
        " (1 GiB)",
    )
}

fn at_most(name: &str, value: u64, max: u64, words: &str) -> Result<(), Invalid> {
    if value > max {
        return Err(invalid(
            format!("{FIELD}.{name}"),
            format!("{value} is above {max}{words}"),
        ));
    }
    Ok(())
}
