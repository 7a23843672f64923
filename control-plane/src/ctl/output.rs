//! How `meridianctl` prints: aligned tables for people, JSON for scripts, and the small
//! cell and value formatters (lists, timestamps, ages) every command shares.
//!
//! The table printer is a few lines on purpose: column widths are counted in `char`s
//! (names, ids and addresses are ASCII; a stray wide character only costs alignment), and
//! cells are flattened to one line so a message with a newline cannot break a row.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use prost_types::Timestamp;
use serde_json::Value;

use super::CtlError;

/// Columns separate by this many spaces.
const GAP: usize = 2;

// === impl Table ===

/// Rows under a header, printed with each column as wide as its widest cell.
#[derive(Debug)]
pub(super) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have one cell per header column.
    pub(super) fn push(&mut self, row: Vec<String>) {
        debug_assert_eq!(
            row.len(),
            self.header.len(),
            "row width differs from header"
        );
        self.rows
            .push(row.into_iter().map(|cell| one_line(&cell)).collect());
    }

    /// The header and rows, aligned, one line each, without trailing spaces.
    pub(super) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header = self.header.iter().map(|h| (*h).to_owned()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|row| render_row(row, &widths))
            .collect()
    }
}

fn render_row(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, width) in row.iter().zip(widths) {
        line.push_str(cell);
        let pad = width - cell.chars().count() + GAP;
        line.extend(std::iter::repeat_n(' ', pad));
    }
    let mut line = line.trim_end().to_owned();
    line.push('\n');
    line
}

fn one_line(cell: &str) -> String {
    cell.replace(['\n', '\r', '\t'], " ")
}

// === writing ===

/// Writes text to stdout. A closed pipe (`meridianctl ... | head`) is not an error.
pub(super) fn emit(text: &str) -> Result<(), CtlError> {
    emit_while_open(text).map(drop)
}

/// Writes text to stdout and flushes it; false once the reader has closed the pipe, so a
/// stream can stop.
pub(super) fn emit_while_open(text: &str) -> Result<bool, CtlError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CtlError::Write(e)),
    }
}

/// Prints a JSON document, indented.
pub(super) fn emit_json(value: &Value) -> Result<(), CtlError> {
    let mut text = serde_json::to_string_pretty(value).expect("a JSON value always serialises");
    text.push('\n');
    emit(&text)
}

// === cells and values ===

/// A list as one cell: `a,b`, or `-` when empty.
pub(super) fn list_cell(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// Text as one cell, `-` when empty.
pub(super) fn text_cell(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// Where something runs as one cell: `region/zone`, or `-` when neither is known.
pub(super) fn place_cell(region: &str, zone: &str) -> String {
    if region.is_empty() && zone.is_empty() {
        "-".to_owned()
    } else {
        format!("{region}/{zone}")
    }
}

/// A timestamp as JSON: an RFC 3339 string, or null when absent.
pub(super) fn timestamp_json(at: Option<&Timestamp>) -> Value {
    at.map_or(Value::Null, |at| Value::String(at.to_string()))
}

/// A timestamp as a table cell: RFC 3339, or `-` when absent.
pub(super) fn timestamp_cell(at: Option<&Timestamp>) -> String {
    at.map_or_else(|| "-".to_owned(), Timestamp::to_string)
}

/// How long ago a timestamp was, e.g. `42s ago`, `5m12s ago`; `-` when absent.
/// Clock skew putting it in the future reads `just now`.
pub(super) fn age_cell(at: Option<&Timestamp>, now: SystemTime) -> String {
    let Some(at) = at else {
        return "-".to_owned();
    };
    let Ok(then) = SystemTime::try_from(*at) else {
        return at.to_string();
    };
    match now.duration_since(then) {
        Ok(elapsed) => format!("{} ago", short_duration(elapsed)),
        Err(_) => "just now".to_owned(),
    }
}

/// A duration in its two largest units: `42s`, `5m12s`, `3h4m`, `2d3h`.
fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_to_the_widest_cell() {
        let mut table = Table::new(&["ID", "ADDRESS", "STATUS"]);
        table.push(vec![
            "eu-west-a-1".into(),
            "10.0.0.1:50051".into(),
            "healthy".into(),
        ]);
        table.push(vec!["n2".into(), "h:1".into(), "draining".into()]);
        assert_eq!(
            table.render(),
            "ID           ADDRESS         STATUS\n\
             eu-west-a-1  10.0.0.1:50051  healthy\n\
             n2           h:1             draining\n"
        );
    }

    #[test]
    fn table_without_rows_prints_the_header_and_no_trailing_spaces() {
        let table = Table::new(&["NAME", "DESCRIPTION"]);
        assert_eq!(table.render(), "NAME  DESCRIPTION\n");
    }

    #[test]
    fn table_cells_are_flattened_to_one_line() {
        let mut table = Table::new(&["A", "B"]);
        table.push(vec!["x\ny".into(), "z".into()]);
        assert_eq!(table.render(), "A    B\nx y  z\n");
    }

    #[test]
    fn ages_use_their_two_largest_units() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |secs: u64| {
            let at = Timestamp::from(now - Duration::from_secs(secs));
            age_cell(Some(&at), now)
        };
        assert_eq!(ago(42), "42s ago");
        assert_eq!(ago(312), "5m12s ago");
        assert_eq!(ago(3 * 3600 + 240), "3h4m ago");
        assert_eq!(ago(2 * 86400 + 3 * 3600), "2d3h ago");
        let future = Timestamp::from(now + Duration::from_secs(5));
        assert_eq!(age_cell(Some(&future), now), "just now");
        assert_eq!(age_cell(None, now), "-");
    }

    #[test]
    fn timestamps_print_as_rfc3339() {
        let at = Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(timestamp_json(Some(&at)), "2023-11-14T22:13:20Z");
        assert_eq!(timestamp_json(None), Value::Null);
    }
}
