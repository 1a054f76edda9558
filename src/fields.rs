//! Declared fields: the typed parameters of a workflow (`[params]` in `workflows/*.toml`) and
//! the typed payload of a job kind (`[payload]` in `jobs/*.toml`), declared with one syntax
//!
//! ```toml
//! month = { type = "date", required = true, description = "the month to aggregate" }
//! dry_run = { type = "boolean", default = false }
//! ```
//!
//! and checked by one function, [`complete`]: unknown fields refused, missing required ones
//! refused, defaults filled in, every value of its declared type. The API, the CLI, the Rust
//! client and the workflow engine all go through it.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use toml::Spanned;

/// The roles a definition may name (a workflow's `started_by`, a job kind's `enqueued_by`).
pub const ROLES: [&str; 3] = ["master_admin", "service", "tenant_admin"];

/// The declared type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
    /// A calendar date, `YYYY-MM-DD`.
    Date,
    Object,
    Array,
}

impl FieldType {
    /// Whether `value` is of this type.
    pub fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (Self::String, Value::String(_)) => true,
            (Self::Integer, Value::Number(n)) => n.is_i64() || n.is_u64(),
            (Self::Number, Value::Number(_)) => true,
            (Self::Boolean, Value::Bool(_)) => true,
            (Self::Date, Value::String(s)) => {
                chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
            }
            (Self::Object, Value::Object(_)) => true,
            (Self::Array, Value::Array(_)) => true,
            _ => false,
        }
    }

    fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// One declared field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDef {
    pub name: String,
    pub required: bool,
    pub default: Option<Value>,
    pub description: Option<String>,
    /// Its declared type (checked every time), if declared.
    pub kind: Option<FieldType>,
}

/// A field as written in a definition file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FieldFile {
    #[serde(default)]
    required: bool,
    default: Option<toml::Value>,
    description: Option<String>,
    #[serde(rename = "type")]
    kind: Option<FieldType>,
}

/// The fields a definition file declares; a refusal names the byte offset of the bad field
/// (for the file's line) and why.
pub(crate) fn parse(
    fields: &BTreeMap<String, Spanned<FieldFile>>,
    what: &str,
    valid_name: impl Fn(&str) -> bool,
) -> Result<Vec<FieldDef>, (usize, String)> {
    let mut parsed = Vec::new();
    for (name, spec) in fields {
        let at = spec.span().start;
        if !valid_name(name) {
            return Err((at, format!("{what} name `{name}` is not valid")));
        }
        let spec = spec.get_ref();
        if spec.required && spec.default.is_some() {
            return Err((
                at,
                format!("{what} `{name}` cannot be both required and have a default"),
            ));
        }
        let default = match &spec.default {
            Some(value) => Some(
                serde_json::to_value(value).map_err(|e| (at, format!("{what} `{name}`: {e}")))?,
            ),
            None => None,
        };
        if let (Some(kind), Some(default)) = (spec.kind, &default)
            && !kind.admits(default)
        {
            return Err((
                at,
                format!("{what} `{name}`: the default is not of its type {kind:?}"),
            ));
        }
        parsed.push(FieldDef {
            name: name.clone(),
            required: spec.required,
            default,
            description: spec.description.clone(),
            kind: spec.kind,
        });
    }
    Ok(parsed)
}

/// Check `value` against the declared fields and fill their defaults: it must be an object
/// (or null, read as empty) with no undeclared field, every required field present and every
/// value of its declared type. `what` names a field in messages (`parameter`, `field`).
pub fn complete(fields: &[FieldDef], value: Value, what: &str) -> Result<Value, String> {
    let mut given: Map<String, Value> = match value {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        _ => return Err(format!("{what}s must be a JSON object")),
    };
    if let Some(unknown) = given.keys().find(|k| fields.iter().all(|f| &f.name != *k)) {
        return Err(format!("unknown {what} `{unknown}`"));
    }
    for field in fields {
        if let (Some(kind), Some(value)) = (field.kind, given.get(&field.name))
            && !kind.admits(value)
        {
            return Err(format!(
                "{what} `{}` must be of type {}",
                field.name,
                kind.name()
            ));
        }
        if !given.contains_key(&field.name) {
            match &field.default {
                Some(default) => {
                    given.insert(field.name.clone(), default.clone());
                }
                None if field.required => {
                    return Err(format!("missing required {what} `{}`", field.name));
                }
                None => {}
            }
        }
    }
    Ok(Value::Object(given))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Vec<FieldDef> {
        let text = r#"
            month = { type = "date", required = true }
            dry_run = { type = "boolean", default = false }
            note = { type = "string" }
        "#;
        let map: BTreeMap<String, Spanned<FieldFile>> = toml::from_str(text).unwrap();
        parse(&map, "field", |n| !n.is_empty()).unwrap()
    }

    #[test]
    fn values_are_checked_and_defaults_filled() {
        let fields = fields();
        assert_eq!(
            complete(&fields, json!({"month": "2026-11-01"}), "field").unwrap(),
            json!({"month": "2026-11-01", "dry_run": false})
        );
        let refused = |value: Value| complete(&fields, value, "field").unwrap_err();
        assert_eq!(refused(json!({})), "missing required field `month`");
        assert_eq!(
            refused(json!({"month": "2026-13-01"})),
            "field `month` must be of type date"
        );
        assert_eq!(
            refused(json!({"month": "2026-11-01", "x": 1})),
            "unknown field `x`"
        );
        assert_eq!(refused(json!([1])), "fields must be a JSON object");
    }

    #[test]
    fn bad_declarations_are_refused() {
        let map: BTreeMap<String, Spanned<FieldFile>> =
            toml::from_str(r#"n = { type = "integer", default = "x" }"#).unwrap();
        assert!(
            parse(&map, "field", |_| true)
                .unwrap_err()
                .1
                .contains("not of its type")
        );
        let map: BTreeMap<String, Spanned<FieldFile>> =
            toml::from_str(r#"n = { required = true, default = 1 }"#).unwrap();
        assert!(
            parse(&map, "field", |_| true)
                .unwrap_err()
                .1
                .contains("both required")
        );
    }
}
