//! `--output table|json`: JSON prints the API's body as it came (pretty); tables pick the
//! columns an operator reads.

use std::io::Write;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::Value;

use crate::error::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// The API's JSON, pretty-printed (for scripts and `jq`).
    Json,
}

/// Prints `text` and a newline on stdout. Unlike `println!`, a failed write is an error, not
/// a panic: a closed pipe (`| head`) is `StdoutClosed` (exit 0), anything else exit 1.
pub fn print(text: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &Value) -> Result<(), CliError> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => print(&text),
        Err(_) => print(&value.to_string()),
    }
}

/// One value as a table cell: strings without quotes, `null` as `-`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|v| !v.is_object()) => {
            items.iter().map(cell).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// The fields `keys` of `value`, as cells.
pub fn cells(value: &Value, keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| cell(&value[*k])).collect()
}

/// A table with a header row.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    t.to_string()
}

/// A two-column table of the fields `keys` of `value` (absent ones left out).
pub fn fields(value: &Value, keys: &[&str]) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    for k in keys {
        if value.get(*k).is_some() {
            t.add_row(vec![(*k).to_owned(), cell(&value[*k])]);
        }
    }
    t.to_string()
}

/// Counts such as `{"migrated": 3, "failed": 0}` as `migrated 3, failed 0` (zeros left out,
/// unless all are zero).
pub fn counts(value: &Value) -> String {
    let Some(map) = value.as_object() else {
        return cell(value);
    };
    let shown: Vec<String> = map
        .iter()
        .filter(|(_, n)| n.as_i64() != Some(0))
        .map(|(k, n)| format!("{k} {}", cell(n)))
        .collect();
    if shown.is_empty() {
        "none".into()
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cells_and_counts_read_plainly() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!("acme")), "acme");
        assert_eq!(cell(&json!([2, 3])), "2, 3");
        assert_eq!(
            counts(&json!({"migrated": 3, "failed": 0, "pending": 1})),
            "migrated 3, pending 1"
        );
        assert_eq!(counts(&json!({"failed": 0})), "none");
        let t = table(
            &["slug", "status"],
            vec![vec!["acme".into(), "active".into()]],
        );
        assert!(t.contains("acme") && t.contains("status"), "{t}");
    }
}
