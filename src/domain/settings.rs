//! A tenant module's settings: a JSON object whose keys are identifiers (they end up in SQL
//! and in templates), valid against the JSON Schema its version publishes. Checked before
//! anything is written, on every path (API, CLI, dashboard).

use super::DomainError;
use serde_json::Value;

/// Check `settings` for `module`: an object, identifier keys, and (when the version has a
/// schema) every constraint of the schema; every violation is listed.
pub fn validate(module: &str, schema: Option<&Value>, settings: &Value) -> Result<(), DomainError> {
    check_keys(settings)?;
    let Some(schema) = schema else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema).map_err(|e| DomainError::UnusableSchema {
        module: module.to_string(),
        reason: e.to_string(),
    })?;
    let problems: Vec<String> = validator
        .iter_errors(settings)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DomainError::InvalidSettings {
            module: module.to_string(),
            problems: problems.join("; "),
        })
    }
}

/// Settings must be a JSON object whose keys are identifiers (`[a-z][a-z0-9_]*`).
pub fn check_keys(settings: &Value) -> Result<(), DomainError> {
    let object = settings
        .as_object()
        .ok_or_else(|| DomainError::InvalidIdentifier {
            what: "settings",
            value: settings.to_string().chars().take(80).collect(),
            reason: "must be a JSON object",
        })?;
    for key in object.keys() {
        super::ident::check_setting_key(key)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_violation_is_listed_and_crafted_keys_refused() {
        let schema = json!({"type": "object", "properties": {
            "threshold": {"type": "integer", "minimum": 0},
            "mode": {"enum": ["a", "b"]}}, "additionalProperties": false});
        assert!(validate("m", Some(&schema), &json!({"threshold": 3, "mode": "a"})).is_ok());
        let err = validate("m", Some(&schema), &json!({"threshold": -1, "mode": "c"})).unwrap_err();
        assert_eq!(err.code(), "invalid_settings");
        let text = err.to_string();
        assert!(
            text.contains("/threshold") && text.contains("/mode"),
            "{text}"
        );
        let err = validate("m", None, &json!({"x; DROP TABLE t": 1})).unwrap_err();
        assert_eq!(err.code(), "invalid_identifier");
        assert!(validate("m", None, &json!([1])).is_err());
        let err = validate("m", Some(&json!({"type": 12})), &json!({})).unwrap_err();
        assert_eq!(err.code(), "invalid_schema");
    }
}
