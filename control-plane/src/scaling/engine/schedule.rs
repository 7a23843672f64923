//! Scheduled scaling windows: a window opens at each match of its `start` cron expression
//! and closes at the first match of its `end` expression after that start; while open it
//! raises the service's minimum to the window's `min_nodes`.
//!
//! Expressions have exactly six fields, "sec min hour day-of-month month day-of-week", read
//! in UTC, with the usual cron syntax: `*`, lists, ranges, `*/n` steps, `Mon-Fri`, `Jan`;
//! day of week 0 or 7 is Sunday (not Quartz's 1); when both day fields are restricted
//! either may match, as in Vixie cron; no `@daily` nicknames. Parsing and searching is
//! `croner`'s (chosen over `cron` for standard weekday numbers and its backward search):
//! "the most recent start" is then a direct question rather than a forward scan from some
//! guessed point in the past.
//!
//! A window is open at `now` when its most recent start at or before `now` (to the second)
//! has no end after it that is at or before `now`: a window started at 08:00:00 and ending at
//! 18:00:00 is open at 08:00:00 and at 17:59:59, closed at 18:00:00.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use meridian_shared::domain::ScheduledScaling;

/// Parses one window edge: six fields with seconds, no year. The error is the parser's
/// words, for `INVALID_ARGUMENT` messages.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let fields = expression.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "{expression:?} has {fields} fields; expected 6: \"sec min hour day-of-month month day-of-week\" (UTC)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| format!("{expression:?}: {e}"))
}

/// [`parse_cron`], and the expression must match some instant: "0 0 0 30 2 *" parses but
/// never happens, and searching for it walks the calendar to the search limit (hundreds of
/// milliseconds) on every decision. For validation.
pub fn check_cron(expression: &str) -> Result<(), String> {
    let cron = parse_cron(expression)?;
    // Any pattern without a year repeats within 28 years; search from a fixed instant so
    // the answer does not depend on when the policy is written.
    let reference = DateTime::from_timestamp(946_684_800, 0).expect("2000-01-01 is valid");
    cron.find_next_occurrence(&reference, false)
        .map(|_| ())
        .map_err(|_| format!("{expression:?} never matches a date (e.g. the 30th of February)"))
}

/// A window open now, with the instant it opened and the instant it will close.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenWindow<'a> {
    pub window: &'a ScheduledScaling,
    pub opened: SystemTime,
    pub closes: Option<SystemTime>,
}

/// The windows open at `now`. A window whose expressions do not parse (the policy was
/// validated, so only a policy stored before validation existed) is never open.
pub fn open_windows(windows: &[ScheduledScaling], now: SystemTime) -> Vec<OpenWindow<'_>> {
    windows
        .iter()
        .filter_map(|window| open_since(window, now))
        .collect()
}

/// The most demanding open window (highest `min_nodes`; the first listed on a tie).
pub fn strongest_open(windows: &[ScheduledScaling], now: SystemTime) -> Option<OpenWindow<'_>> {
    open_windows(windows, now).into_iter().reduce(|best, w| {
        if w.window.min_nodes > best.window.min_nodes {
            w
        } else {
            best
        }
    })
}

fn open_since(window: &ScheduledScaling, now: SystemTime) -> Option<OpenWindow<'_>> {
    let start = parse_cron(&window.start).ok()?;
    let end = parse_cron(&window.end).ok()?;
    let now_utc = to_utc(now)?;
    let opened = start.find_previous_occurrence(&now_utc, true).ok()?;
    let closes = end.find_next_occurrence(&opened, false).ok();
    if closes.as_ref().is_some_and(|c| *c <= now_utc) {
        return None;
    }
    Some(OpenWindow {
        window,
        opened: from_utc(&opened),
        closes: closes.as_ref().map(from_utc),
    })
}

/// Whole seconds: cron has no finer resolution, and a window edge at 08:00:00 then covers
/// the whole of that second.
fn to_utc(t: SystemTime) -> Option<DateTime<Utc>> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
}

fn from_utc(t: &DateTime<Utc>) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
}

/// `2026-11-30T08:00:00Z`, for reasons.
pub fn format_utc(t: SystemTime) -> String {
    match to_utc(t) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => format!("{t:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str, min_nodes: u32) -> ScheduledScaling {
        ScheduledScaling {
            name: "w".into(),
            start: start.into(),
            end: end.into(),
            min_nodes,
        }
    }

    /// 2026-11-30 (a Monday) at `h:m:s` UTC, plus `ms` milliseconds.
    fn monday(h: u64, m: u64, s: u64, ms: u64) -> SystemTime {
        // 2026-11-30T00:00:00Z
        UNIX_EPOCH + Duration::from_millis((1_795_996_800 + h * 3600 + m * 60 + s) * 1000 + ms)
    }

    #[test]
    fn the_test_clock_is_a_monday() {
        assert_eq!(format_utc(monday(8, 0, 0, 0)), "2026-11-30T08:00:00Z");
    }

    #[test]
    fn six_fields_are_required() {
        parse_cron("0 0 8 * * Mon-Fri").unwrap();
        parse_cron("*/10 * * * * *").unwrap();
        let five = parse_cron("0 8 * * *").unwrap_err();
        assert!(five.contains("5 fields"), "{five}");
        assert!(parse_cron("0 0 8 * * * 2027").is_err());
        let bad = parse_cron("0 0 25 * * *").unwrap_err();
        assert!(bad.contains("\"0 0 25 * * *\""), "{bad}");
        assert!(parse_cron("").is_err());
        assert!(parse_cron("@daily").is_err());
    }

    #[test]
    fn an_expression_that_never_matches_is_refused() {
        check_cron("0 0 0 29 2 *").unwrap();
        let never = check_cron("0 0 0 30 2 *").unwrap_err();
        assert!(never.contains("never matches"), "{never}");
        assert!(check_cron("0 8 * * *").unwrap_err().contains("expected 6"));
    }

    #[test]
    fn office_hours_are_open_from_start_until_end() {
        let w = [window("0 0 8 * * Mon-Fri", "0 0 18 * * Mon-Fri", 6)];
        assert!(open_windows(&w, monday(7, 59, 59, 999)).is_empty());
        let open = open_windows(&w, monday(8, 0, 0, 0));
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].opened, monday(8, 0, 0, 0));
        assert_eq!(open[0].closes, Some(monday(18, 0, 0, 0)));
        assert_eq!(open_windows(&w, monday(17, 59, 59, 999)).len(), 1);
        assert!(open_windows(&w, monday(18, 0, 0, 0)).is_empty());
        // Sunday 2026-11-29 at noon: before Monday's start, after Friday's end.
        let sunday_noon = monday(12, 0, 0, 0) - Duration::from_secs(86_400);
        assert!(open_windows(&w, sunday_noon).is_empty());
    }

    #[test]
    fn a_window_a_few_seconds_long_opens_and_closes_each_time() {
        // Opens at :00, :10, :20 ...; closes 3 s later.
        let w = [window("*/10 * * * * *", "3-59/10 * * * * *", 4)];
        for (s, open) in [
            (0, true),
            (1, true),
            (2, true),
            (3, false),
            (9, false),
            (10, true),
            (12, true),
            (13, false),
        ] {
            assert_eq!(
                !open_windows(&w, monday(9, 0, s, 500)).is_empty(),
                open,
                "at second {s}"
            );
        }
    }

    #[test]
    fn numeric_days_of_week_count_from_sunday() {
        let weekdays = [window("0 0 8 * * 1-5", "0 0 18 * * 1-5", 2)];
        assert_eq!(open_windows(&weekdays, monday(9, 0, 0, 0)).len(), 1);
        let sundays = [window("0 0 8 * * 7", "0 0 18 * * 7", 2)];
        assert!(open_windows(&sundays, monday(9, 0, 0, 0)).is_empty());
        let sunday_nine = monday(9, 0, 0, 0) - Duration::from_secs(86_400);
        assert_eq!(open_windows(&sundays, sunday_nine).len(), 1);
    }

    #[test]
    fn a_window_spanning_midnight_stays_open_across_it() {
        let w = [window("0 0 22 * * *", "0 0 6 * * *", 3)];
        assert_eq!(open_windows(&w, monday(23, 0, 0, 0)).len(), 1);
        assert_eq!(open_windows(&w, monday(5, 59, 59, 0)).len(), 1);
        assert!(open_windows(&w, monday(6, 0, 0, 0)).is_empty());
        assert!(open_windows(&w, monday(21, 59, 59, 0)).is_empty());
    }

    #[test]
    fn the_strongest_open_window_sets_the_minimum() {
        let w = [
            window("0 0 8 * * *", "0 0 18 * * *", 3),
            window("0 0 9 * * *", "0 0 10 * * *", 8),
        ];
        let at_nine_thirty = strongest_open(&w, monday(9, 30, 0, 0)).unwrap();
        assert_eq!(at_nine_thirty.window.min_nodes, 8);
        let at_eleven = strongest_open(&w, monday(11, 0, 0, 0)).unwrap();
        assert_eq!(at_eleven.window.min_nodes, 3);
        assert!(strongest_open(&w, monday(19, 0, 0, 0)).is_none());
    }
}
