//! Labels on the command line (`--label team=payments`, repeatable) and in output
//! (`team=payments,tier=gold` in tables, an object in JSON), always sorted by key.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    #[error("expected KEY=VALUE, e.g. team=payments, got {0:?}")]
    NotKeyValue(String),
    #[error("the label key is empty in {0:?}; expected KEY=VALUE, e.g. team=payments")]
    EmptyKey(String),
}

/// Parses one `KEY=VALUE` label. The value may be empty and may itself contain `=`.
pub(super) fn parse_label(text: &str) -> Result<(String, String), LabelError> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| LabelError::NotKeyValue(text.to_owned()))?;
    if key.trim().is_empty() {
        return Err(LabelError::EmptyKey(text.to_owned()));
    }
    Ok((key.trim().to_owned(), value.to_owned()))
}

/// The labels given on the command line as the proto map; a repeated key keeps its last value.
pub(super) fn to_map(labels: &[(String, String)]) -> HashMap<String, String> {
    labels.iter().cloned().collect()
}

/// Labels as one table cell, sorted: `k=v,k2=v2`, or `-` when there are none.
pub(super) fn cell(labels: &HashMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    sorted(labels)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels as a JSON object, sorted by key.
pub(super) fn json(labels: &HashMap<String, String>) -> Value {
    Value::Object(
        sorted(labels)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect(),
    )
}

fn sorted(labels: &HashMap<String, String>) -> BTreeMap<&str, &str> {
    labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_labels_parse() {
        assert_eq!(
            parse_label("team=payments"),
            Ok(("team".into(), "payments".into()))
        );
        assert_eq!(parse_label("note="), Ok(("note".into(), String::new())));
        assert_eq!(parse_label("expr=a=b"), Ok(("expr".into(), "a=b".into())));
    }

    #[test]
    fn malformed_labels_are_refused() {
        assert_eq!(
            parse_label("team"),
            Err(LabelError::NotKeyValue("team".into()))
        );
        assert_eq!(
            parse_label("=payments"),
            Err(LabelError::EmptyKey("=payments".into()))
        );
    }

    #[test]
    fn labels_print_sorted() {
        let labels = to_map(&[
            ("tier".into(), "gold".into()),
            ("team".into(), "payments".into()),
        ]);
        assert_eq!(cell(&labels), "team=payments,tier=gold");
        assert_eq!(
            json(&labels).to_string(),
            r#"{"team":"payments","tier":"gold"}"#
        );
        assert_eq!(cell(&HashMap::new()), "-");
    }
}
