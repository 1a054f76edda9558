//! How commands print: one table style (headers, columns padded to their widest cell) for
//! people, or JSON for programs (`--output json`: a listing is one array, a record one object,
//! an action one object saying what it did).

use super::CliError;
use crate::config::OutputFormat;
use serde::Serialize;
use serde_json::Value;

fn json_text(value: &impl Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Failed(e.to_string()))
}

/// Rows under headers, each column as wide as its widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A listing: `row` gives each record's cells under `headers`.
pub(crate) fn listing<T: Serialize>(
    format: OutputFormat,
    headers: &[&str],
    records: &[T],
    row: impl Fn(&T) -> Vec<String>,
) -> Result<(), CliError> {
    match format {
        OutputFormat::Json => out!("{}", json_text(&records)?),
        OutputFormat::Table => table(headers, &records.iter().map(row).collect::<Vec<_>>()),
    }
    Ok(())
}

/// Any value as it serializes: a list of objects is a table whose columns are the objects'
/// fields, one object is `field  value` rows, nested values are shown as JSON.
pub(crate) fn record(format: OutputFormat, record: &impl Serialize) -> Result<(), CliError> {
    let value = serde_json::to_value(record).map_err(|e| CliError::Failed(e.to_string()))?;
    if format == OutputFormat::Json {
        out!("{}", json_text(&value)?);
        return Ok(());
    }
    let text = |value: &Value| match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match &value {
        Value::Object(fields) => {
            let rows: Vec<Vec<String>> = fields
                .iter()
                .map(|(name, value)| vec![name.clone(), text(value)])
                .collect();
            table(&["field", "value"], &rows);
        }
        Value::Array(items) => {
            let headers: Vec<&str> = match items.first() {
                Some(Value::Object(first)) => first.keys().map(String::as_str).collect(),
                _ => vec!["value"],
            };
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| match item {
                    Value::Object(fields) => headers
                        .iter()
                        .map(|h| fields.get(*h).map(text).unwrap_or_default())
                        .collect(),
                    other => vec![text(other)],
                })
                .collect();
            table(&headers, &rows);
        }
        other => out!("{}", text(other)),
    }
    Ok(())
}

/// What an action did: `text` for people, `json` for programs.
pub(crate) fn done(format: OutputFormat, text: impl std::fmt::Display, json: Value) {
    match format {
        OutputFormat::Table => out!("{text}"),
        OutputFormat::Json => out!("{json}"),
    }
}
